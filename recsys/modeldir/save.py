"""Writing a model dir (see `recsys.modeldir` for its files): the network as Paddle's inference program, the
tables and tower vectors a reader needs without the dataset, the metrics, the manifest written last; a save
builds a temp dir beside the model dir and swaps it in by rename."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from recsys.data.history import Histories
from recsys.errors import RecsysError
from recsys.modeldir import index
from recsys.modeldir.files import MANIFEST, sha256_hex
from recsys.modeldir.load import COLD_GRID, FORMAT, PREFIX, SCORES, cold_feeds, tower_outputs
from recsys.movielens import MovieLens, Tables, age_table


def training_history(data: MovieLens) -> Histories:
    """The saved model's history of every user: every training rating (no test one)."""
    train = ~data.is_test
    n_users, n_movies = data.sizes()["n_users"], data.sizes()["n_movies"]
    return Histories.of(n_users, n_movies, data.user[train], data.movie[train])


def tower_vectors(net, tables: Tables, feature_sizes: list[int], histories: Histories | None = None) -> dict:
    """Unit-length tower outputs: every user row and movie row (absent ids included), and the unknown user
    (row 0) with every combination of feature values -- the cold-start vectors, shape [*feature_sizes, 200]
    (for the chapter's data [2, len(age_table), n_jobs, 200]; saved when there are at most `COLD_GRID`
    combinations). A network with history reads each user's training ratings (`histories`); the unknown
    user's history is empty. A ranking network's raw outputs are saved as well (`*_outputs`): its head
    reads them, not their cosine."""
    users = tables.user_features(np.arange(len(tables.user)))
    grid = int(np.prod(feature_sizes)) <= COLD_GRID
    cold = cold_feeds(feature_sizes) if grid else None
    movies = tables.movie_features(np.arange(len(tables.category)))
    out = {}
    for raw in (False, True) if hasattr(net, "head") else (False,):
        name = "outputs" if raw else "vectors"
        out[f"user_{name}"] = tower_outputs(net.user_tower, users, not raw, histories=histories)
        out[f"movie_{name}"] = tower_outputs(net.movie_tower, movies, not raw)
        if grid:
            vectors = tower_outputs(net.user_tower, cold, not raw, histories=histories)  # row 0 rated nothing
            out[f"cold_{name}"] = vectors.reshape(*feature_sizes, -1)
    return out


_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # net -> its program, traced once


def program(net, specs: list):
    """The network as the saved inference program: called on one list of feeds (named by their `InputSpec`).
    The same object for the same network, so that `paddle.jit.save` translates it once per training run and
    every later save writes only the current parameters through it."""
    from paddle import nn

    class Program(nn.Layer):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, feeds):
            return self.net(*feeds)

    if net not in _PROGRAMS:
        import paddle

        _PROGRAMS[net] = paddle.jit.to_static(Program(), input_spec=[specs], full_graph=True)
    return _PROGRAMS[net]


def feature_sizes(sizes: dict) -> list[int]:
    """The number of values of each user feature, in the tower's order, from a dataset's `sizes()`."""
    if "user_features" in sizes:
        return list(sizes["user_features"].values())
    return [2, sizes["n_ages"], sizes["n_jobs"]]


def _ratings_csr(data: MovieLens) -> dict[str, np.ndarray]:
    order = np.argsort(data.user, kind="stable")
    counts = np.bincount(data.user, minlength=len(data.tables.user))
    return {
        "rated_indptr": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "rated_movie": data.movie[order].astype(np.int32),
        "rated_stars": data.stars[order],
        "rated_is_test": data.is_test[order],
    }


def _movie_years(data: MovieLens) -> np.ndarray:
    """Each movie row's release year from its title (0: none), which the served lists' year filters read."""
    years = np.zeros(len(data.tables.category), np.int16)
    for row, movie in data.meta.movies.items():
        years[row] = movie.year or 0
    return years


def data_arrays(data: MovieLens) -> dict[str, np.ndarray]:
    """What every model dir keeps of its data: the feature tables, the ids, every rating (by user row)."""
    return {
        "user_table": data.tables.user, "movie_category": data.tables.category, "movie_year": _movie_years(data),
        "movie_title": data.tables.title, "user_ids": data.meta.user_ids, "movie_ids": data.meta.movie_ids,
        **_ratings_csr(data),
    }  # fmt: skip


def save_fitted(
    path: str | os.PathLike,
    data: MovieLens,
    settings: dict,
    arrays: dict[str, np.ndarray],
    metrics: list[dict],
    history: bool,
    score: str,
) -> Path:
    """A model dir without a network (a stage fitted in closed form): meta.json (`network` false, `history`:
    whether a user's rated movies change their list, `score`: what its scores are), the data's arrays and
    `arrays`, metrics.json and the manifest, swapped in as `save` does."""
    path = Path(path)
    with _new_dir(path) as tmp:
        np.savez(tmp / "arrays.npz", **data_arrays(data), **arrays)
        doc = _meta(data, settings, [], history) | {"network": False, "score": score, "index": None}
        (tmp / "meta.json").write_text(json.dumps(doc, ensure_ascii=False))
        write_metrics(tmp, metrics, plot=False)
    return path


@contextlib.contextmanager
def _new_dir(path: Path):
    """A temp dir beside `path` that the block writes a model dir into, then, with its manifest, swapped in by
    rename (`_swap`). Ctrl-C or SIGTERM takes effect once the block and the swap are done; an OSError is one
    line, and `path` keeps the last good model."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with _signals_deferred():  # a signal inside Paddle's export would surface as its own C++ error
            _remove_stale_temps(path)
            tmp.mkdir(parents=True)
            yield tmp
            write_manifest(tmp)
            _swap(tmp, path)
    except OSError as e:
        raise RecsysError(
            f"could not save the model dir {path}: {e.strerror or e} ({e.filename or path.parent}); "
            f"{path} keeps the last good model"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save(
    path: str | os.PathLike,
    net,
    data: MovieLens,
    settings: dict,
    metrics: list[dict],
    checkpoint: tuple[dict, dict[str, np.ndarray]] | None = None,
    keep_checkpoint: bool = False,
    extra: dict[str, np.ndarray] | None = None,
    plot: bool = True,
) -> Path:
    """Write the whole model dir into a temp dir beside `path`, then swap it in by rename. Ctrl-C or SIGTERM
    during the save takes effect once the new dir is in place.

    `checkpoint` is (JSON-able training state, arrays) for `--resume`; it lands atomically with the model.
    Without one, `keep_checkpoint` carries the checkpoint already in `path` over into the new dir. `extra`
    arrays are saved in arrays.npz too (a ranking network's feature tables). `plot`: draw loss.png (a training
    run draws it in its last save only: drawing takes longer than the rest of a small model's save)."""
    import paddle
    from paddle.static import InputSpec

    path = Path(path)
    with _new_dir(path) as tmp:
        lists = ("category_id", "movie_title")  # padded [N, L] id lists; every other feed is one id per row
        specs = [InputSpec([None, None] if n in lists else [None], "int64", n) for n in net.feed_names()]
        history = settings.get("history", False)
        if history:
            specs.append(InputSpec([None, data.sizes()["n_movies"]], "float32", "history"))
        if hasattr(net, "head"):
            specs.append(InputSpec([None, net.head.linear.shape[0]], "float32", "ranking_features"))
        net.eval()
        paddle.jit.save(program(net, specs), str(tmp / PREFIX), input_spec=[specs])
        net.train()
        params = {k: v.numpy() for k, v in net.state_dict().items()}
        np.savez(tmp / "params.npz", **params)
        vectors = tower_vectors(
            net, data.tables, feature_sizes(data.sizes()), training_history(data) if history else None
        )
        catalogue = np.array(sorted(data.meta.movies), np.int64)  # as `ModelDir.movie_ids`
        indexed = None if hasattr(net, "head") else _write_index(tmp, vectors["movie_vectors"][catalogue])
        np.savez(tmp / "arrays.npz", **data_arrays(data), **vectors, **(extra or {}))
        doc = _meta(data, settings, [spec.name for spec in specs], history) | {"index": indexed}
        (tmp / "meta.json").write_text(json.dumps(doc, ensure_ascii=False))
        write_metrics(tmp, metrics, plot)
        if checkpoint is not None:
            (tmp / "checkpoint.json").write_text(json.dumps(checkpoint[0]))
            np.savez(tmp / "checkpoint.npz", **checkpoint[1])
        elif keep_checkpoint:
            for name in ("checkpoint.json", "checkpoint.npz"):
                shutil.copy2(path / name, tmp / name)
    return path


def _write_index(folder: Path, catalogue_vectors: np.ndarray) -> dict | None:
    """The first stage's faiss index of the catalogue vectors, saved from `index.SAVED_FROM` movies on (a
    ranking network, which is no first stage, saves none): what meta.json says of it, None when none was saved."""
    if len(catalogue_vectors) < index.SAVED_FROM:
        return None
    t = time.perf_counter()
    (folder / index.FILE).write_bytes(index.to_bytes(index.build(catalogue_vectors)))
    return {"file": index.FILE, "kind": index.KIND, "ef_construction": index.EF_CONSTRUCTION,
            "movies": len(catalogue_vectors), "build_seconds": round(time.perf_counter() - t, 2)}  # fmt: skip


def _meta(data: MovieLens, settings: dict, feed_names: list[str], history: bool) -> dict:
    """meta.json: what the model was trained on and with, and everything the answers name."""
    import paddle

    meta = data.meta
    return {
        "format": FORMAT,
        "dataset": meta.dataset,
        "split": data.split,
        "source": str(data.source),
        "sizes": data.sizes(),
        "feed_names": feed_names,
        "objective": settings.get("objective", "rating"),
        "history": history,
        "score": SCORES.get(settings.get("objective", "rating")),
        "age_table": age_table,
        "jobs": meta.jobs,
        "features": meta.features,
        "rating_scale": [data.lowest_rating(), 5],
        "categories": meta.categories,
        "title_words": meta.title_words,
        "movies": {str(m): [meta.display_title(m), info.categories] for m, info in meta.movies.items()},
        "users": meta.user_ids[meta.known_users()].tolist(),
        "settings": settings,
        "paddle": paddle.__version__,
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "manifest": MANIFEST,
    }


def write_manifest(folder: Path) -> None:
    """manifest.json: the size and SHA-256 of every other file in `folder`, synced to disk."""
    files = {}
    for f in sorted(folder.iterdir()):
        if f.name != MANIFEST and f.is_file():
            data = f.read_bytes()
            files[f.name] = {"size": len(data), "sha256": sha256_hex(data)}
            _fsync(f)
    (folder / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=1))
    _fsync(folder / MANIFEST)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(path: Path) -> None:
    """Remove temp dirs of saves that were killed half-way (their process is gone)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid() or not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _swap(new: Path, path: Path) -> None:
    """Replace `path` by `new`; at every instant one complete model dir exists (the old one until the last
    rename). The replaced dir is renamed `.NAME.previous`, then removed: a reader that was opening it just
    then sees that it moved and opens the new one (`ModelDir.load`). Only a save cut off between its two
    renames leaves `.NAME.previous`, which readers then use and the next save replaces: Ctrl-C or SIGTERM
    during the swap takes effect once it is done."""
    old = path.with_name(f".{path.name}.previous")
    with _signals_deferred():
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)  # left by a save cut off after its last rename: nobody reads it
            os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)  # only once `path` is whole again


@contextlib.contextmanager
def _signals_deferred():
    """Ctrl-C (SIGINT) or SIGTERM that comes while the block runs is delivered once it has run, to the handler
    before (Python runs signal handlers in the main thread only: elsewhere the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    before = {s: signal.signal(s, lambda signum, _frame: got.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if got:
            signal.raise_signal(got[0])


def write_metrics(folder: Path, metrics: list[dict], plot: bool = True) -> None:
    """metrics.json and, with `plot`, loss.png (train and test cost against training batches)."""
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if not metrics or not plot:
        return
    from matplotlib.figure import Figure  # no pyplot: drawing a file must not touch the caller's backend

    steps = [m["step"] for m in metrics]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(steps, [m["train_cost"] for m in metrics], "o-", label="Train cost")
    if "test_cost" in metrics[0]:  # the all split has no test set
        ax.plot(steps, [m["test_cost"] for m in metrics], "s-", label="Test cost")
    ax.set_xlabel("training batches")
    ax.set_ylabel("mean square error (label = 2*stars-5)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "loss.png", dpi=100)
