"""The model dir that `train` writes and `infer` / `evaluate` read; loading it needs no pickle and no dataset.

inference.json, inference.pdiparams   paddle.jit.save of the whole network (the chapter's inference model)
meta.json                             vocabularies, movie titles and genres, sizes, training settings
arrays.npz                            feature tables, unit tower vectors (cold-start users too), all ratings;
                                      a ranking model: raw tower outputs and its pair features' tables
params.npz                            the network's parameters by name
metrics.json, loss.png                one record per evaluation, and the cost curves
checkpoint.json, checkpoint.npz       the last complete epoch's parameters, optimizer and RNG state (--resume)
manifest.json                         every other file's size and SHA-256, written last

A save writes a temp dir beside the model dir and swaps it in by rename, then removes the dir it replaced.
A reader opens every file of one dir at once (open files outlive a later swap and removal) and opens them
again when the dir was swapped while it opened them, so it never mixes two saves. Sizes are checked at
load, each file's SHA-256 when it is first read: a damaged dir is an error, never an answer.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.errors import RecsysError
from recsys.history import history_rows, history_weights
from recsys.movielens import FEED_NAMES, MovieLens, Tables, age_table, unknown_user_features

FORMAT = 1
PREFIX = "inference"
MANIFEST = "manifest.json"
SCALE = "score = 5 * cos_sim(user, movie), in label space 2*stars - 5 (range -5..5); stars = (score + 5) / 2"
RETRIEVAL_SCALE = "cosine = cos_sim(user, movie), ranks movies; trained as softmax logits cosine / temperature"
RANKING_SCALE = "logit of liking the movie, from the towers' product and the pair's features; orders candidates"
SCORES = {"rating": SCALE, "retrieval": RETRIEVAL_SCALE, "ranking": RANKING_SCALE}


def training_history(data: MovieLens) -> np.ndarray:
    """The saved model's history input of every user id: the mean over every training rating (no test one)."""
    train = ~data.is_test
    n_users, n_movies = data.sizes()["n_users"], data.sizes()["n_movies"]
    return history_weights(history_rows(n_users, n_movies, data.user[train], data.movie[train]))


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def tower_outputs(tower, feeds: dict[str, np.ndarray], unit: bool = True, batch: int = 8192) -> np.ndarray:
    """Outputs of one tower for these feeds (unit length, or raw), in batches, without gradients."""
    import paddle

    n = len(next(iter(feeds.values())))
    with paddle.no_grad():
        parts = [tower(*(paddle.to_tensor(v[s : s + batch]) for v in feeds.values())) for s in range(0, n, batch)]
        out = np.concatenate([p.numpy() for p in parts]).astype(np.float32)
    return _unit(out) if unit else out


def tower_vectors(net, tables: Tables, n_jobs: int, history: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Unit-length tower outputs: every user id and movie id (absent ids included), and the unknown user
    (id 0) for every (gender, age index, job) -- the cold-start vectors, shape [2, len(age_table), n_jobs, 200].
    A network with history reads each user's `history` row (weights, see `recsys.history`); the unknown
    user's history is empty. A ranking network's raw outputs are saved as well (`*_outputs`): its head
    reads them, not their cosine."""
    g, a, j = (x.ravel() for x in np.meshgrid(range(2), range(len(age_table)), range(n_jobs), indexing="ij"))
    users, cold = tables.user_features(np.arange(len(tables.user))), unknown_user_features(g, a, j)
    if history is not None:
        users["history"] = history
        cold["history"] = np.zeros((len(g), history.shape[1]), np.float32)
    movies = tables.movie_features(np.arange(len(tables.category)))
    out = {}
    for raw in (False, True) if hasattr(net, "head") else (False,):
        name = "outputs" if raw else "vectors"
        out[f"user_{name}"] = tower_outputs(net.user_tower, users, not raw)
        out[f"movie_{name}"] = tower_outputs(net.movie_tower, movies, not raw)
        out[f"cold_{name}"] = tower_outputs(net.user_tower, cold, not raw).reshape(2, len(age_table), n_jobs, -1)
    return out


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
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write the whole model dir into a temp dir beside `path`, then swap it in by rename.

    `checkpoint` is (JSON-able training state, arrays) for `--resume`; it lands atomically with the model.
    Without one, `keep_checkpoint` carries the checkpoint already in `path` over into the new dir. `extra`
    arrays are saved in arrays.npz too (a ranking network's feature tables)."""
    import paddle
    from paddle.static import InputSpec

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _remove_stale_temps(path)
        tmp.mkdir(parents=True)
        specs = [InputSpec([None], "int64", n) for n in FEED_NAMES[:5]]
        specs += [InputSpec([None, None], "int64", n) for n in FEED_NAMES[5:]]
        history = settings.get("history", False)
        if history:
            specs.append(InputSpec([None, data.sizes()["n_movies"]], "float32", "history"))
        if hasattr(net, "head"):
            specs.append(InputSpec([None, 3], "float32", "ranking_features"))
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
            **tower_vectors(net, data.tables, data.sizes()["n_jobs"], training_history(data) if history else None),
            **_ratings_csr(data),
            **(extra or {}),
        )
        meta = data.meta
        doc = {
            "format": FORMAT,
            "dataset": meta.dataset,
            "split": data.split,
            "source": str(data.source),
            "sizes": data.sizes(),
            "feed_names": [spec.name for spec in specs],
            "objective": settings.get("objective", "rating"),
            "history": history,
            "score": SCORES[settings.get("objective", "rating")],
            "age_table": age_table,
            "jobs": meta.jobs,
            "categories": meta.categories,
            "title_words": meta.title_words,
            "movies": {str(m): [meta.display_title(m), info.categories] for m, info in meta.movies.items()},
            "users": sorted(meta.users),
            "settings": settings,
            "paddle": paddle.__version__,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "manifest": MANIFEST,
        }
        (tmp / "meta.json").write_text(json.dumps(doc, ensure_ascii=False))
        write_metrics(tmp, metrics)
        if checkpoint is not None:
            (tmp / "checkpoint.json").write_text(json.dumps(checkpoint[0]))
            np.savez(tmp / "checkpoint.npz", **checkpoint[1])
        elif keep_checkpoint:
            for name in ("checkpoint.json", "checkpoint.npz"):
                shutil.copy2(path / name, tmp / name)
        write_manifest(tmp)
        _swap(tmp, path)
    except OSError as e:
        raise RecsysError(
            f"could not save the model dir {path}: {e.strerror or e} ({e.filename or path.parent}); "
            f"{path} keeps the last good model"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_manifest(folder: Path) -> None:
    """manifest.json: the size and SHA-256 of every other file in `folder`, synced to disk."""
    files = {}
    for f in sorted(folder.iterdir()):
        if f.name != MANIFEST and f.is_file():
            data = f.read_bytes()
            files[f.name] = {"size": len(data), "sha256": _sha256(data)}
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
    renames leaves `.NAME.previous`, which readers then use and the next save replaces."""
    old = path.with_name(f".{path.name}.previous")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)  # left by a save cut off after its last rename: nobody reads it
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)  # only once `path` is whole again


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


def damaged(path: Path, name: str, why: str) -> RecsysError:
    return RecsysError(f"model dir {path} is damaged: {name} ({why}); train again: python -m recsys.train")


class _Files:
    """Every file of one model dir, opened at once: later reads see this save even if the dir is swapped."""

    def __init__(self, path: Path):
        self.path = path
        self.open: dict[str, io.BufferedReader] = {}
        self.expected: dict[str, dict] | None = None  # from the manifest; None for a dir saved before it
        self.verified: set[str] = set()
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.inode = os.fstat(dir_fd).st_dev, os.fstat(dir_fd).st_ino
            for name in os.listdir(dir_fd):
                try:
                    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
                except IsADirectoryError:
                    continue
                f = open(fd, "rb")
                if os.fstat(fd).st_mode & 0o170000 == 0o100000:  # a regular file
                    self.open[name] = f
                else:
                    f.close()
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        for f in self.open.values():
            f.close()

    def check(self, meta: dict) -> None:
        """Against the manifest: every file present with its size (hashes wait for each file's first read)."""
        if MANIFEST not in self.open:
            if meta.get("manifest"):
                raise damaged(self.path, MANIFEST, "missing")
            notice = f"notice: model dir {self.path} has no manifest (saved by an older recsys); files not checked"
            print(notice, file=sys.stderr)
            return
        for name, want in self.expected.items():
            if name not in self.open:
                raise damaged(self.path, name, "missing")
            size = os.fstat(self.open[name].fileno()).st_size
            if size != want["size"]:
                raise damaged(self.path, name, f"size {size}, expected {want['size']}")

    def read_manifest(self) -> None:
        if MANIFEST not in self.open:
            return
        try:
            doc = json.loads(self.open[MANIFEST].read())
            self.expected = {
                str(k): {"size": int(v["size"]), "sha256": str(v["sha256"])} for k, v in doc["files"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            raise damaged(self.path, MANIFEST, "unreadable") from None

    def read(self, name: str) -> bytes:
        """The whole file, checked against its manifest entry."""
        if name not in self.open:
            raise damaged(self.path, name, "missing")
        f = self.open[name]
        f.seek(0)
        data = f.read()
        if self.expected is not None and name not in self.verified:
            want = self.expected.get(name)
            if want is None:
                raise damaged(self.path, name, "not in the manifest")
            if len(data) != want["size"]:
                raise damaged(self.path, name, f"size {len(data)}, expected {want['size']}")
            if _sha256(data) != want["sha256"]:
                raise damaged(self.path, name, "checksum mismatch")
            self.verified.add(name)
        return data

    def json(self, name: str):
        try:
            return json.loads(self.read(name))
        except (ValueError, UnicodeDecodeError):
            raise damaged(self.path, name, "unreadable") from None

    def npz(self, name: str) -> dict[str, np.ndarray]:
        try:
            with np.load(io.BytesIO(self.read(name)), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            raise damaged(self.path, name, "unreadable") from None


def _still_at(path: Path, where: Path, files: _Files) -> bool:
    """Whether the files just opened from `where` are one whole save: the dir is still there, and, when it
    was `.NAME.previous`, `path` is still missing (a save removes `.NAME.previous` only after that)."""
    try:
        st = os.stat(where)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == files.inode and (where == path or not path.exists())


@dataclass
class ModelDir:
    """A loaded model dir: metadata, arrays, and the inference predictor on demand."""

    path: Path
    meta: dict
    arrays: dict[str, np.ndarray]
    files: _Files

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelDir:
        path = Path(path)
        for attempt in range(5):  # a save may swap the dir while it is being opened: open it again
            if not path.is_dir() and path.with_name(f".{path.name}.previous").is_dir():
                where = path.with_name(f".{path.name}.previous")  # a save was cut off between its two renames
            else:
                where = path
            try:
                files = _Files(where)
                if attempt < 4 and not _still_at(path, where, files):  # swapped out as we opened it: again
                    files.close()
                    continue
            except FileNotFoundError:
                if attempt < 4 and (path.exists() or path.with_name(f".{path.name}.previous").exists()):
                    continue
                raise RecsysError(f"no trained model in {path}; train first: python -m recsys.train") from None
            except NotADirectoryError:
                raise RecsysError(f"{path} is not a model dir; train first: python -m recsys.train") from None
            break
        files.read_manifest()
        if "meta.json" not in files.open and files.expected is None:
            raise RecsysError(f"no trained model in {where}; train first: python -m recsys.train")
        meta = files.json("meta.json")
        if not isinstance(meta, dict):
            raise damaged(where, "meta.json", "unreadable")
        files.check(meta)
        if meta.get("format") != FORMAT:
            raise RecsysError(
                f"model dir {where} has format {meta.get('format')}, this recsys reads {FORMAT}; train again"
            )
        arrays = files.npz("arrays.npz")
        required = {"user_table", "movie_category", "movie_title", "user_vectors", "movie_vectors", "rated_indptr"}
        if required - set(arrays):
            raise damaged(where, "arrays.npz", f"no {', '.join(sorted(required - set(arrays)))}")
        for key in ("user_vectors", "movie_vectors", "cold_vectors"):
            if key in arrays and not np.isfinite(arrays[key]).all():
                raise damaged(where, "arrays.npz", f"non-finite {key}")
        return cls(where, meta, arrays, files)

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

    @functools.cached_property
    def catalogue_vectors(self) -> np.ndarray:
        """Unit movie-tower vectors of the dataset's movies, in `movie_ids` order."""
        return self.arrays["movie_vectors"][self.movie_ids]

    @property
    def objective(self) -> str:
        """ "rating" (the chapter's regression), "retrieval" (the candidate-generation softmax) or "ranking"."""
        return self.meta.get("objective", "rating")

    @property
    def history(self) -> bool:
        """Whether the user tower reads the user's history."""
        return bool(self.meta.get("history", False))

    def history_of(self, user_ids, rated=()) -> np.ndarray:
        """The history inputs [len(user_ids), n_movies] of known users (their training ratings; user id 0,
        the unknown user, has none) plus, for every row, the movies `rated` ((movie id, stars) pairs)."""
        a = self.arrays
        user_ids = np.asarray(user_ids, np.int64)
        rows = np.zeros((len(user_ids), self.meta["sizes"]["n_movies"]), np.float32)
        for i, u in enumerate(user_ids.tolist()):
            s, e = a["rated_indptr"][u], a["rated_indptr"][u + 1]
            rows[i, a["rated_movie"][s:e][~a["rated_is_test"][s:e]]] = 1.0
        rows[:, [m for m, _ in rated]] = 1.0
        return history_weights(rows)

    @functools.cached_property
    def head_params(self) -> dict[str, np.ndarray]:
        """A ranking model's head parameters (see `recsys.stacking.head_scores`)."""
        return {k: v for k, v in self.params().items() if k.startswith("head.")}

    @functools.cached_property
    def network(self):
        """The dygraph network rebuilt from the saved parameters (for inputs no saved vector covers)."""
        import paddle

        from recsys.model import RankingNet, RecommenderNet

        kind = RankingNet if self.objective == "ranking" else RecommenderNet
        net = kind(**self.meta["sizes"], history=self.history)
        net.set_state_dict({k: paddle.to_tensor(v) for k, v in self.params().items()})
        net.eval()
        return net

    def user_vector(self, feeds: dict[str, np.ndarray], unit: bool = True) -> np.ndarray:
        """The user tower's output for these feeds (history included), through the rebuilt network."""
        return tower_outputs(self.network.user_tower, feeds, unit)

    def has_user(self, user_id: int) -> bool:
        return user_id in self.user_ids

    def has_movie(self, movie_id: int) -> bool:
        return str(movie_id) in self.meta["movies"]

    def title(self, movie_id: int) -> str:
        return self.meta["movies"][str(movie_id)][0]

    def genres(self, movie_id: int) -> list[str]:
        return self.meta["movies"][str(movie_id)][1]

    def source(self) -> Path:
        """The archive (zip or folder) the model was trained on; one clear error when it is no longer there."""
        src = Path(self.meta["source"])
        if not src.exists():
            raise RecsysError(
                f"{self.path} was trained on {src}, which is no longer there (moved or deleted); "
                f"give the folder that holds {self.meta['dataset']} now with --data-dir"
            )
        return src

    def params(self) -> dict[str, np.ndarray]:
        """The saved network parameters by structured name."""
        return self.files.npz("params.npz")

    def checkpoint(self) -> tuple[dict, dict[str, np.ndarray]] | None:
        """(training state with its metrics, arrays) of the last finished epoch, or None."""
        names = ("checkpoint.json", "checkpoint.npz")
        expected = self.files.expected
        if not any(n in (self.files.open if expected is None else expected) for n in names):
            return None
        state, metrics = self.files.json("checkpoint.json"), self.files.json("metrics.json")
        arrays = self.files.npz("checkpoint.npz")
        if not isinstance(state, dict) or not isinstance(metrics, list) or "rng_keys" not in arrays:
            raise damaged(self.path, "checkpoint.json", "unreadable")
        return state | {"metrics": metrics}, arrays

    def ratings_of(self, user_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(movie ids, stars, is_test) of every rating the user gave in the training data's archive."""
        a = self.arrays
        s, e = a["rated_indptr"][user_id], a["rated_indptr"][user_id + 1]
        return a["rated_movie"][s:e], a["rated_stars"][s:e], a["rated_is_test"][s:e]

    @functools.cached_property
    def predictor(self) -> Predictor:
        """The saved inference model through `paddle.inference`, created on first use from the checked bytes
        of this save's files (copied to a private temp dir: Paddle reads models from paths)."""
        model = f"{PREFIX}.json" if f"{PREFIX}.json" in self.files.open else f"{PREFIX}.pdmodel"
        with tempfile.TemporaryDirectory(prefix="recsys-model-") as tmp:
            for name in (model, f"{PREFIX}.pdiparams"):
                (Path(tmp) / name).write_bytes(self.files.read(name))
            try:
                return Predictor(Path(tmp) / model, Path(tmp) / f"{PREFIX}.pdiparams", name=str(self.path))
            except (RuntimeError, ValueError, OSError) as e:
                raise damaged(
                    self.path, model, f"Paddle cannot load it: {str(e).strip().splitlines()[0][:120]}"
                ) from None


class Predictor:
    """The saved inference model run through `paddle.inference`, fed by the chapter's feed names."""

    def __init__(self, model: Path, params: Path, threads: int = 1, name: str = "the model dir"):
        from paddle import inference

        self.name = name
        config = inference.Config(str(model), str(params))
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
        out = self._output.copy_to_cpu()
        if not np.isfinite(out).all():  # a wrong answer that looks like an answer: refuse it
            raise RecsysError(f"the model in {self.name} produced a non-finite score; train it again")
        return out
