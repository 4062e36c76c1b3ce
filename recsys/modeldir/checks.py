"""What a model dir's arrays must be before anything reads them: each one's kind and shape against the sizes
meta.json records, and every id in range. A dir edited by hand (its manifest rewritten to match) is then one
error line, never an `IndexError` deep inside an answer."""

from __future__ import annotations

import io
import math
import zipfile

import numpy as np
from numpy.lib import format as npy

KINDS = {"int": np.integer, "float": np.floating, "bool": np.bool_}
PAIR_ARRAYS = ("log_share", "movie_stars", "recent_share")  # a ranking model's saved movie features, [M] each


class Bad(ValueError):
    """What is wrong with one array, in words (the caller names the file)."""


def npz_members(data: bytes) -> None:
    """Refuse an npz whose members could unpack to more than the file holds, before any is read: recsys saves
    them uncompressed, so each member's array (as its .npy header declares it) must fill exactly the bytes the
    member stores. Raises `Bad`."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise Bad(f"not an npz file ({e})") from None
    with z:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                raise Bad(f"member {info.filename} is compressed (recsys saves npz files uncompressed)")
            if info.header_offset + info.compress_size > len(data):
                raise Bad(f"member {info.filename} claims {info.file_size} bytes, past the end of the file")
            try:
                with z.open(info) as f:
                    version = npy.read_magic(f)
                    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                    shape, _fortran, dtype = read_header(f)
                    header = f.tell()
            except (ValueError, OSError, zipfile.BadZipFile) as e:
                raise Bad(f"member {info.filename} is no array ({' '.join(str(e).split())[:120]})") from None
            size = math.prod(shape) * dtype.itemsize
            if header + size != info.file_size:
                raise Bad(f"member {info.filename} declares {size} bytes of {shape} {dtype}, holds {info.file_size}")


def _sizes(meta: dict) -> tuple[dict[str, int], list[int]]:
    """meta.json's sizes (each a count of at least 1) and the user features' numbers of values."""
    sizes = meta.get("sizes")
    names = ("n_users", "n_movies", "n_categories", "n_title_words")
    if not isinstance(sizes, dict) or not all(_count(sizes.get(n)) for n in names):
        raise Bad("meta.json has no valid sizes")
    features = sizes.get("user_features")
    counts = list(features.values()) if isinstance(features, dict) else [2, sizes.get("n_ages"), sizes.get("n_jobs")]
    if not all(_count(c) for c in counts):
        raise Bad("meta.json has no valid user feature sizes")
    return sizes, counts


def _count(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1


def array(arrays: dict[str, np.ndarray], name: str, kind: str, shape: tuple, below: int | None = None) -> None:
    """`arrays[name]` is of this kind and shape (None: any length on that axis), and, with `below`, every
    value is in [0, below). Raises `Bad`."""
    a = arrays[name]
    if not np.issubdtype(a.dtype, KINDS[kind]) or a.ndim != len(shape):
        raise Bad(f"{name} is {a.dtype} {list(a.shape)}, expected {kind} of {len(shape)} axes")
    if any(want is not None and got != want for got, want in zip(a.shape, shape)):
        expected = " x ".join("N" if n is None else str(n) for n in shape)
        raise Bad(f"{name} has shape {list(a.shape)}, expected {expected}")
    if kind == "float" and not np.isfinite(a).all():
        raise Bad(f"non-finite {name}")
    if below is not None and a.size and (a.min() < 0 or a.max() >= below):
        raise Bad(f"{name} holds ids outside 0..{below - 1}")


def _csr(arrays: dict[str, np.ndarray], prefix: str, rows: int, cols: int) -> None:
    """A sparse matrix saved as `PREFIX_indptr`, `PREFIX_indices` and `PREFIX_data` (or `PREFIX` dense)."""
    if prefix in arrays:
        array(arrays, prefix, "float", (rows, cols))
        return
    names = [f"{prefix}_{part}" for part in ("indptr", "indices", "data")]
    if not any(n in arrays for n in names):
        return
    if not all(n in arrays for n in names):
        raise Bad(f"{prefix} is incomplete")
    indptr, indices, data = (arrays[n] for n in names)
    array(arrays, names[0], "int", (rows + 1,))
    array(arrays, names[1], "int", (None,), below=cols)
    array(arrays, names[2], "float", (len(indices),))
    if indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any():
        raise Bad(f"{names[0]} does not index {names[1]}")


def model_arrays(meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Every array a reader uses, against meta.json's sizes and catalogue. Raises `Bad`."""
    sizes, features = _sizes(meta)
    users, movies = sizes["n_users"], sizes["n_movies"]
    catalogue = meta.get("movies")
    if not isinstance(catalogue, dict) or not all(str(k).isdigit() and int(k) < movies for k in catalogue):
        raise Bad(f"meta.json's movies are not rows 0..{movies - 1}")
    if not isinstance(meta.get("users"), list) or not all(isinstance(u, int) for u in meta["users"]):
        raise Bad("meta.json's users are not a list of ids")
    array(arrays, "user_table", "int", (users, len(features)))
    table = arrays["user_table"]
    for j, n in enumerate(features):
        if table.size and (table[:, j].min() < 0 or table[:, j].max() >= n):
            raise Bad(f"user_table holds values of feature {j} outside 0..{n - 1}")
    array(arrays, "movie_category", "int", (movies, None), below=sizes["n_categories"] + 1)  # + the padding id
    array(arrays, "movie_title", "int", (movies, None), below=sizes["n_title_words"] + 1)
    for name, rows in (("user_ids", users), ("movie_ids", movies)):
        if name in arrays:
            array(arrays, name, "int", (rows,))
    for kind in ("vectors", "outputs"):
        if f"user_{kind}" not in arrays:  # (a model dir without a network has no vectors: `_arrays` checks)
            continue
        array(arrays, f"user_{kind}", "float", (users, None))
        width = arrays[f"user_{kind}"].shape[1]
        array(arrays, f"movie_{kind}", "float", (movies, width))
        if f"cold_{kind}" in arrays:
            array(arrays, f"cold_{kind}", "float", (*features, width))
    array(arrays, "rated_indptr", "int", (users + 1,))
    indptr = arrays["rated_indptr"]
    n = int(indptr[-1])
    if indptr[0] != 0 or (np.diff(indptr) < 0).any():
        raise Bad("rated_indptr is not a row index")
    array(arrays, "rated_movie", "int", (n,), below=movies)
    array(arrays, "rated_stars", "float", (n,))
    array(arrays, "rated_is_test", "bool", (n,))
    _csr(arrays, "item_item", len(catalogue), len(catalogue))
    _csr(arrays, "knn", len(catalogue), len(catalogue))
    if "rating_counts" in arrays:
        array(arrays, "rating_counts", "float", (len(catalogue),))
    if "ease_keep" in arrays:
        array(arrays, "ease_keep", "int", (None,), below=len(catalogue))
        if "ease_weights" not in arrays:
            raise Bad("ease_keep without ease_weights")
        array(arrays, "ease_weights", "float", (len(arrays["ease_keep"]),) * 2)
    if "log_share" in arrays:  # a ranking model's pair features (`recsys.topn.rerank.PairInputs`)
        for name in PAIR_ARRAYS:  # those of `--pair-features all` (earlier ranking models have log_share alone)
            if name in arrays:
                array(arrays, name, "float", (len(catalogue),))
    if "latest_movies" in arrays:  # each user's latest movies (catalogue columns, -1: none)
        array(arrays, "latest_movies", "int", (users, None))
        latest = arrays["latest_movies"]
        if latest.size and (latest.min() < -1 or latest.max() >= len(catalogue)):
            raise Bad(f"latest_movies holds columns outside -1..{len(catalogue) - 1}")
    if "first_stage_beta" in arrays:
        array(arrays, "first_stage_beta", "float", ())


def parameters(shapes: dict[str, tuple], params: dict[str, np.ndarray]) -> None:
    """The saved parameters are the network's: the same names, each a float array of its shape. Raises `Bad`."""
    for name in sorted(shapes.keys() | params.keys()):
        if name not in params:
            raise Bad(f"no {name}")
        if name not in shapes:
            raise Bad(f"{name} is no parameter of the network")
        if not np.issubdtype(params[name].dtype, np.floating) or params[name].shape != shapes[name]:
            raise Bad(f"{name} is {params[name].dtype} {list(params[name].shape)}, expected {list(shapes[name])}")
