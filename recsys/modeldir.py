"""The model dir that `train` writes and `infer` / `evaluate` read; loading it needs no pickle and no dataset.

inference.json, inference.pdiparams   paddle.jit.save of the whole network (the chapter's inference model)
meta.json                             vocabularies, movie titles and genres, sizes, training settings
arrays.npz                            feature tables, unit tower vectors (cold-start users too), all ratings
params.npz                            the network's parameters by name
metrics.json, loss.png                one record per evaluation, and the cost curves
checkpoint.json, checkpoint.npz       the last complete epoch's parameters, optimizer and RNG state (--resume)
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.errors import RecsysError
from recsys.movielens import FEED_NAMES, MovieLens, Tables, age_table, unknown_user_features

FORMAT = 1
PREFIX = "inference"
SCALE = "score = 5 * cos_sim(user, movie), in label space 2*stars - 5 (range -5..5); stars = (score + 5) / 2"


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def tower_vectors(net, tables: Tables, n_jobs: int, batch: int = 8192) -> dict[str, np.ndarray]:
    """Unit-length tower outputs: every user id and movie id (absent ids included), and the unknown user
    (id 0) for every (gender, age index, job) -- the cold-start vectors, shape [2, len(age_table), n_jobs, 200]."""
    import paddle

    def run(tower, feeds: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(feeds.values())))
        parts = [tower(*(paddle.to_tensor(v[s : s + batch]) for v in feeds.values())) for s in range(0, n, batch)]
        return _unit(np.concatenate([p.numpy() for p in parts]))

    g, a, j = (x.ravel() for x in np.meshgrid(range(2), range(len(age_table)), range(n_jobs), indexing="ij"))
    with paddle.no_grad():
        return {
            "user_vectors": run(net.user_tower, tables.user_features(np.arange(len(tables.user)))),
            "movie_vectors": run(net.movie_tower, tables.movie_features(np.arange(len(tables.category)))),
            "cold_vectors": run(net.user_tower, unknown_user_features(g, a, j)).reshape(2, len(age_table), n_jobs, -1),
        }


def _ratings_csr(data: MovieLens) -> dict[str, np.ndarray]:
    order = np.argsort(data.user, kind="stable")
    counts = np.bincount(data.user, minlength=len(data.tables.user))
    return {
        "rated_indptr": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "rated_movie": data.movie[order].astype(np.int32),
        "rated_stars": data.stars[order],
        "rated_is_test": data.is_test[order],
    }


def save(
    path: str | os.PathLike,
    net,
    data: MovieLens,
    settings: dict,
    metrics: list[dict],
    checkpoint: tuple[dict, dict[str, np.ndarray]] | None = None,
    keep_checkpoint: bool = False,
) -> Path:
    """Write the whole model dir into a temp dir beside `path`, then swap it in by rename.

    `checkpoint` is (JSON-able training state, arrays) for `--resume`; it lands atomically with the model.
    Without one, `keep_checkpoint` carries the checkpoint already in `path` over into the new dir."""
    import paddle
    from paddle.static import InputSpec

    path = Path(path)
    _remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True)
    try:
        specs = [InputSpec([None], "int64", n) for n in FEED_NAMES[:5]]
        specs += [InputSpec([None, None], "int64", n) for n in FEED_NAMES[5:]]
        net.eval()
        paddle.jit.save(net, str(tmp / PREFIX), input_spec=specs)
        net.train()
        params = {k: v.numpy() for k, v in net.state_dict().items()}
        np.savez(tmp / "params.npz", **params)
        np.savez(
            tmp / "arrays.npz",
            user_table=data.tables.user,
            movie_category=data.tables.category,
            movie_title=data.tables.title,
            **tower_vectors(net, data.tables, data.sizes()["n_jobs"]),
            **_ratings_csr(data),
        )
        meta = data.meta
        doc = {
            "format": FORMAT,
            "dataset": meta.dataset,
            "split": data.split,
            "source": str(data.source),
            "sizes": data.sizes(),
            "feed_names": list(FEED_NAMES),
            "score": SCALE,
            "age_table": age_table,
            "jobs": meta.jobs,
            "categories": meta.categories,
            "title_words": meta.title_words,
            "movies": {str(m): [meta.display_title(m), info.categories] for m, info in meta.movies.items()},
            "users": sorted(meta.users),
            "settings": settings,
            "paddle": paddle.__version__,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (tmp / "meta.json").write_text(json.dumps(doc, ensure_ascii=False))
        write_metrics(tmp, metrics)
        if checkpoint is not None:
            (tmp / "checkpoint.json").write_text(json.dumps(checkpoint[0]))
            np.savez(tmp / "checkpoint.npz", **checkpoint[1])
        elif keep_checkpoint:
            for name in ("checkpoint.json", "checkpoint.npz"):
                shutil.copy2(path / name, tmp / name)
        _swap(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


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
    """Replace `path` by `new`; at every instant one complete model dir exists (the old one until the last rename)."""
    old = path.with_name(f".{path.name}.previous")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def write_metrics(folder: Path, metrics: list[dict]) -> None:
    """metrics.json and loss.png (train and test cost against training batches)."""
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if not metrics:
        return
    from matplotlib.figure import Figure  # no pyplot: drawing a file must not touch the caller's backend

    steps = [m["step"] for m in metrics]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(steps, [m["train_cost"] for m in metrics], "o-", label="Train cost")
    ax.plot(steps, [m["test_cost"] for m in metrics], "s-", label="Test cost")
    ax.set_xlabel("training batches")
    ax.set_ylabel("mean square error (label = 2*stars-5)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "loss.png", dpi=100)


@dataclass
class ModelDir:
    """A loaded model dir: metadata, arrays, and the inference predictor on demand."""

    path: Path
    meta: dict
    arrays: dict[str, np.ndarray]

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelDir:
        path = Path(path)
        if not path.is_dir() and path.with_name(f".{path.name}.previous").is_dir():
            path = path.with_name(f".{path.name}.previous")  # a save was cut off between its two renames
        if not (path / "meta.json").is_file():
            raise RecsysError(f"no trained model in {path}; train first: python -m recsys.train")
        try:
            meta = json.loads((path / "meta.json").read_text())
            with np.load(path / "arrays.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError) as e:
            raise RecsysError(f"model dir {path} is damaged ({e}); train again: python -m recsys.train") from None
        if meta.get("format") != FORMAT:
            raise RecsysError(
                f"model dir {path} has format {meta.get('format')}, this recsys reads {FORMAT}; train again"
            )
        return cls(path, meta, arrays)

    @functools.cached_property
    def tables(self) -> Tables:
        sizes = self.meta["sizes"]
        return Tables(
            self.arrays["user_table"],
            self.arrays["movie_category"],
            self.arrays["movie_title"],
            sizes["n_categories"],
            sizes["n_title_words"],
        )

    @functools.cached_property
    def user_ids(self) -> frozenset[int]:
        return frozenset(self.meta["users"])

    @functools.cached_property
    def movie_ids(self) -> np.ndarray:
        """Ids of the dataset's movies, ascending."""
        return np.array(sorted(int(m) for m in self.meta["movies"]), np.int64)

    def has_user(self, user_id: int) -> bool:
        return user_id in self.user_ids

    def has_movie(self, movie_id: int) -> bool:
        return str(movie_id) in self.meta["movies"]

    def title(self, movie_id: int) -> str:
        return self.meta["movies"][str(movie_id)][0]

    def genres(self, movie_id: int) -> list[str]:
        return self.meta["movies"][str(movie_id)][1]

    def params(self) -> dict[str, np.ndarray]:
        """The saved network parameters by structured name."""
        with np.load(self.path / "params.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def checkpoint(self) -> tuple[dict, dict[str, np.ndarray]] | None:
        """(training state with its metrics, arrays) of the last finished epoch, or None."""
        if not (self.path / "checkpoint.json").is_file():
            return None
        try:
            state = json.loads((self.path / "checkpoint.json").read_text())
            state["metrics"] = json.loads((self.path / "metrics.json").read_text())
            with np.load(self.path / "checkpoint.npz", allow_pickle=False) as z:
                return state, {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError) as e:
            raise RecsysError(f"the checkpoint in {self.path} is damaged ({e}); train again without --resume") from None

    def ratings_of(self, user_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(movie ids, stars, is_test) of every rating the user gave in the training data's archive."""
        a = self.arrays
        s, e = a["rated_indptr"][user_id], a["rated_indptr"][user_id + 1]
        return a["rated_movie"][s:e], a["rated_stars"][s:e], a["rated_is_test"][s:e]

    @functools.cached_property
    def predictor(self) -> Predictor:
        """The saved inference model through `paddle.inference`, created on first use."""
        return Predictor(self.path / PREFIX)


class Predictor:
    """The saved inference model run through `paddle.inference`, fed by the chapter's feed names."""

    def __init__(self, prefix: Path, threads: int = 1):
        from paddle import inference

        model = prefix.with_suffix(".json")
        if not model.exists():
            model = prefix.with_suffix(".pdmodel")
        config = inference.Config(str(model), str(prefix.with_suffix(".pdiparams")))
        config.disable_gpu()
        config.disable_mkldnn()  # Paddle 3.3's oneDNN kernels miscompute the text-CNN window (tests compare to dygraph)
        config.disable_glog_info()
        config.set_cpu_math_library_num_threads(threads)
        self._predictor = inference.create_predictor(config)
        self._inputs = {n: self._predictor.get_input_handle(n) for n in self._predictor.get_input_names()}
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        for name, handle in self._inputs.items():
            handle.copy_from_cpu(np.ascontiguousarray(feeds[name]))
        self._predictor.run()
        return self._output.copy_to_cpu()
