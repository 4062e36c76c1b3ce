"""Loading a dataset: locate it, parse it once (then read the .npz cache beside it), and split it.

Splits: `random` (the chapter's rule: seed, then one `random() < test_ratio` per rating line in file order),
`temporal` (each user's last `(n + 5) // 10` ratings by timestamp, ties in file order, are the test set),
`all` (every rating trains and there is no test set: a model to serve, not to measure), ml-100k's shipped
`u1`..`u5`, `ua`, `ub`, and `NAME:val`: NAME's training ratings alone, split again
(`random`, shipped splits: a seeded tenth; `temporal`: the temporal rule) for choosing settings without
looking at the test ratings.
"""

from __future__ import annotations

import functools
import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

from recsys.data import csvfiles, dat, fetch, uitem
from recsys.data.common import Ratings
from recsys.data.schema import MovieLens, Tables
from recsys.errors import RecsysError

CHAPTER = {"ml-1m": dat, "ml-100k": uitem}  # the chapter's text layouts: one module each
CSV_LAYOUTS = (*fetch.CSV_RELEASES, "csv")
DATASETS = (*CHAPTER, *CSV_LAYOUTS)
VALIDATION = ":val"  # `--split u1:val`: u1's training ratings alone, split again as the test set
ALL = "all"  # every rating trains: no test set
SPLITS = {name: ("random", "temporal", ALL) for name in DATASETS} | {
    "ml-100k": ("random", "temporal", ALL, *uitem.SHIPPED_SPLITS)
}
CACHE_VERSION = 4  # 4: movies keep their release years
_OPTIONAL = {"csv": ("movies.csv", "users.csv")}


def _stamp(dataset: str, source: Path) -> tuple:
    """Size and mtime of the zip, or of each of the folder's files (a missing optional file counts too)."""
    if source.is_file():
        st = source.stat()
        return (st.st_size, st.st_mtime_ns)
    out = []
    for member in (*fetch.archive(dataset).members, *_OPTIONAL.get(dataset, ())):
        f = source / member
        st = f.stat() if f.is_file() else None
        out += [st.st_size, st.st_mtime_ns] if st else [-1, -1]
    return tuple(out)


def _cache_files(source: Path, dataset: str, part: str) -> list[Path]:
    """Where arrays are cached: beside the data, and in the data home (used when that folder is read-only)."""
    name = f"{source.name}.{part}.recsys-v{CACHE_VERSION}.npz"
    if source.is_dir() and dataset == "csv":
        return [source / f".{part}.recsys-v{CACHE_VERSION}.npz", _home_cache(source, name)]
    return [source.parent / name, _home_cache(source, name)]


def _home_cache(source: Path, name: str) -> Path:
    digest = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]
    return fetch.data_home() / "cache" / f"{digest}-{name}"


def _writable(folder: Path) -> bool:
    """Writable and not marked read-only (a folder without write bits stays untouched, even for root)."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o200)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Write atomically; False (and nothing left behind) when the folder is not writable."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False


def _cached(dataset: str, source: Path, part: str, need: tuple[str, ...], parse, fits=None) -> dict[str, np.ndarray]:
    """The arrays of `part` from its cache when its key matches, else from `parse()` (which returns every
    part's arrays; all are cached). A damaged cache (bad zip, missing arrays) is rebuilt."""
    key = np.array([*_stamp(dataset, source), CACHE_VERSION], np.int64)
    for cache in _cache_files(source, dataset, part):
        try:
            with np.load(cache, allow_pickle=False) as z:
                if np.array_equal(z["key"], key) and all(n in z.files for n in need):
                    arrays = {n: z[n] for n in z.files if n != "key"}
                    if fits is None or fits(arrays):
                        return arrays
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            pass
    parts = parse()
    for name, arrays in parts.items():
        caches = _cache_files(source, dataset, name)
        for cache in caches if _writable(caches[0].parent) else caches[1:]:
            if _save_npz(cache, {"key": key, **arrays}):
                break
    return parts[part]


@functools.lru_cache(maxsize=8)
def _meta_cached(dataset: str, source: str, stamp: tuple):
    path = Path(source)
    if dataset in CHAPTER:
        return CHAPTER[dataset].read_meta(path)
    arrays = _cached(dataset, path, "meta", ("user_ids", "movie_ids", "user_table", "json"), _csv_parser(dataset, path))
    return csvfiles.meta_from(dataset, arrays)


def _csv_parser(dataset: str, source: Path):
    return lambda: csvfiles.parse(source, dataset)


def source_meta(dataset: str, data_dir, download: bool = True):
    """The data's path (zip or folder) and its metadata (parsed once per process and data version)."""
    source = fetch.locate(dataset, data_dir, download)
    return source, _meta_cached(dataset, str(source), _stamp(dataset, source))


def read_meta(dataset: str = "ml-1m", data_dir: str | os.PathLike | None = None, download: bool = True):
    """Users, movies and vocabularies of the dataset (parsed once per process)."""
    return source_meta(dataset, data_dir, download)[1]


def _ratings(dataset: str, source: Path, split: str, meta) -> Ratings:
    """The rating columns (cached as .npz: rows int32, half-stars int8, timestamps int64)."""
    if dataset not in CHAPTER:
        return csvfiles.ratings_from(
            _cached(dataset, source, "ratings", ("user", "movie", "half"), _csv_parser(dataset, source))
        )
    module = CHAPTER[dataset]
    part = split if split in uitem.SHIPPED_SPLITS else "random"

    def parse():  # the chapter's layouts keep one [n, 3] int32 block (user row, movie row, half-stars)
        r = module.read_ratings(source, part, meta)
        arrays = {"rows": np.stack([r.user, r.movie, r.half.astype(np.int32)], 1), "timestamp": r.timestamp}
        return {part: arrays | ({} if r.is_test is None else {"is_test": r.is_test})}

    def fits(a):
        rows, is_test = a["rows"], a.get("is_test")
        return rows.ndim == 2 and rows.shape[1] == 3 and (is_test is None or is_test.shape == rows[:, 0].shape)

    a = _cached(dataset, source, part, ("rows", "timestamp"), parse, fits)
    rows, is_test = a["rows"], a.get("is_test")
    return Ratings(rows[:, 0], rows[:, 1], rows[:, 2].astype(np.int8), a["timestamp"], is_test)


def split_mask(n: int, rand_seed: int = 0, test_ratio: float = 0.1) -> np.ndarray:
    """The chapter's split: one `np.random.random() < test_ratio` per rating line, in file order, after seeding."""
    return np.random.RandomState(rand_seed).random_sample(n) < test_ratio


def temporal_mask(user: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Each user's last `(n + 5) // 10` ratings (round-half-up of 10%) by timestamp, ties in file order."""
    counts = np.bincount(user, minlength=int(user.max(initial=0)) + 1)
    return latest_mask(user, timestamp, (counts + 5) // 10)


def user_time_order(user: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """The ratings' indices by user, then timestamp, then file order (one stable sort of a combined key where
    it fits in 63 bits: ten times faster than `np.lexsort` at 32 million ratings)."""
    if len(user) == 0:
        return np.zeros(0, np.int64)
    low, span = int(timestamp.min()), int(timestamp.max()) - int(timestamp.min()) + 1
    if (int(user.max()) + 1) * span < 2**63:
        return np.argsort(user.astype(np.int64) * span + (timestamp.astype(np.int64) - low), kind="stable")
    return np.lexsort((np.arange(len(user)), timestamp, user))


def newest_first_rank(user: np.ndarray, timestamp: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """The ratings in `user_time_order`, and each one's place among its user's ratings counted from the
    newest (0: the user's latest; ties in file order)."""
    order = user_time_order(user, timestamp)
    ends = np.cumsum(np.bincount(user, minlength=n_users))
    return order, ends[user[order]] - 1 - np.arange(len(order))


def latest_mask(user: np.ndarray, timestamp: np.ndarray, take: np.ndarray) -> np.ndarray:
    """[n] bool: each user's last `take[user]` ratings by timestamp (ties in file order); `take` is indexed by
    user id."""
    order, from_end = newest_first_rank(user, timestamp, len(take))
    mask = np.zeros(len(user), bool)
    mask[order] = from_end < take[user[order]]
    return mask


def check_split(dataset: str, split: str) -> None:
    """One error line for an unknown dataset or a split it does not have."""
    fetch.archive(dataset)
    if split.removesuffix(VALIDATION) not in SPLITS[dataset]:
        choices = ", ".join(SPLITS[dataset])
        raise RecsysError(
            f"{dataset} has no split {split!r}; choose one of {choices} (or NAME{VALIDATION}: validation)"
        )


def load(
    dataset: str = "ml-1m",
    data_dir: str | os.PathLike | None = None,
    split: str = "random",
    rand_seed: int = 0,
    test_ratio: float = 0.1,
    download: bool = True,
) -> MovieLens:
    """The dataset as arrays (parsed once, then read from the cache beside it). A split named `NAME:val` is
    the validation split of NAME: its training ratings alone, split again (temporal: by the temporal rule;
    otherwise a seeded tenth) as the test set."""
    check_split(dataset, split)
    base = split.removesuffix(VALIDATION)
    source, meta = source_meta(dataset, data_dir, download)
    r = _ratings(dataset, source, base, meta)
    user, movie, half, ts = r.user.astype(np.int64), r.movie.astype(np.int64), r.half, r.timestamp
    if base == "temporal" and ts is None:
        raise RecsysError(f"{source}: the temporal split needs timestamps, and the ratings have none")
    if base == ALL:
        is_test = np.zeros(len(user), bool)
    elif base == "temporal":
        is_test = temporal_mask(user, ts)
    else:
        is_test = r.is_test if r.is_test is not None else split_mask(len(user), rand_seed, test_ratio)
    if split.endswith(VALIDATION):  # the test ratings are dropped; part of the training ones stand in for them
        keep = ~is_test
        user, movie, half = user[keep], movie[keep], half[keep]
        ts = None if ts is None else ts[keep]
        if base == "temporal":
            is_test = temporal_mask(user, ts)
        else:
            is_test = np.random.RandomState(rand_seed + 12345).random_sample(len(user)) < 0.1
    stars = half.astype(np.float32) / 2
    return MovieLens(meta, Tables.from_meta(meta), source, split, user, movie, stars, is_test, ts)
