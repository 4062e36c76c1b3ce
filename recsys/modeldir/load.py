"""The model dir that `train` writes (`recsys.modeldir.save`) and `infer` / `evaluate` read; loading it needs no pickle
and no dataset.

inference.json, inference.pdiparams   paddle.jit.save of the whole network (the chapter's inference model)
meta.json                             vocabularies, movie titles and genres, sizes, training settings
arrays.npz                            feature tables, unit tower vectors (cold-start users too), all ratings;
                                      a retrieval model: its first stage's item-item weights and beta;
                                      a ranking model: raw tower outputs and its pair features' tables
params.npz                            the network's parameters by name
metrics.json, loss.png                one record per evaluation, and the cost curves
checkpoint.json, checkpoint.npz       the last complete epoch's parameters, optimizer and RNG state (--resume)
manifest.json                         every other file's size and SHA-256, written last

A stage fitted in closed form (`python -m recsys.train --objective ease`, `popularity`, `item-knn`) has no
network: meta.json records `"network": false`, arrays.npz holds the data's tables and ratings and the stage's
own arrays (no tower vectors), and there is no inference model, params.npz or checkpoint.

A save writes a temp dir beside the model dir and swaps it in by rename, then removes the dir it replaced.
A reader opens every file of one dir at once (open files outlive a later swap and removal) and opens them
again when the dir was swapped while it opened them, so it never mixes two saves. Sizes are checked at
load, each file's SHA-256 when it is first read: a damaged dir is an error, never an answer. Only regular
files are opened (an entry the manifest does not name, such as `.ipynb_checkpoints/`, is ignored), and every
array is checked against the sizes meta.json records before anything reads it (`recsys.modeldir.checks`).
"""

from __future__ import annotations

import functools
import itertools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.data.history import Histories, history_weights
from recsys.errors import RecsysError
from recsys.modeldir import checks, index
from recsys.modeldir.files import Files, damaged, still_at
from recsys.modeldir.predictor import Predictor, dynamic_mode
from recsys.movielens import Tables

FORMAT = 1
PREFIX = "inference"
SCALE = "score = 5 * cos_sim(user, movie), in label space 2*stars - 5 (range -5..5); stars = (score + 5) / 2"
RETRIEVAL_SCALE = "cosine = cos_sim(user, movie), ranks movies; trained as softmax logits cosine / temperature"
RANKING_SCALE = "logit of liking the movie, from the towers' product and the pair's features; orders candidates"
SCORES = {"rating": SCALE, "retrieval": RETRIEVAL_SCALE, "ranking": RANKING_SCALE}


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def tower_outputs(
    tower, feeds: dict[str, np.ndarray], unit: bool = True, batch: int = 8192, histories: Histories | None = None
) -> np.ndarray:
    """Outputs of one tower for these feeds (unit length, or raw), in batches, without gradients. With
    `histories`, the user tower reads each `user_id` row's history (sparse; all of it)."""
    import paddle

    from recsys.model import History

    def inputs(s: int) -> list:
        x = [paddle.to_tensor(v[s : s + batch]) for v in feeds.values()]
        if histories is not None:
            x.append(History.tensors(histories.sparse(feeds["user_id"][s : s + batch])))
        return x

    n = len(next(iter(feeds.values())))
    with paddle.no_grad():
        out = np.concatenate([tower(*inputs(s)).numpy() for s in range(0, n, batch)]).astype(np.float32)
    return _unit(out) if unit else out


COLD_GRID = 65_536  # new users' vectors are saved for every combination of feature values up to this many


def cold_feeds(sizes: list[int]) -> dict[str, np.ndarray]:
    """The unknown user's (row 0) feeds for every combination of feature values, in C order over `sizes`; the
    feeds are named by position (`f0_id`, ...) in feature order."""
    combos = [x.ravel() for x in np.meshgrid(*(np.arange(n) for n in sizes), indexing="ij")]
    n = len(combos[0]) if combos else 1
    return {"user_id": np.zeros(n, np.int64)} | {f"f{i}_id": c.astype(np.int64) for i, c in enumerate(combos)}


class NoModel(RecsysError):
    """A model dir that holds no trained model (or is not there at all)."""


def _open(path: Path) -> tuple[Path, Files]:
    """The dir's files, all of one save (a save may swap the dir while they are opened: then again)."""
    previous = path.with_name(f".{path.name}.previous") if path.name else path  # `.` has no name, no previous
    for attempt in itertools.count():
        where = previous if not path.is_dir() and previous.is_dir() else path  # a save cut off between renames
        try:
            files = Files(where)
        except FileNotFoundError:
            if attempt < 4 and (path.exists() or previous.exists()):
                continue
            raise NoModel(f"no trained model in {path}; train first: python -m recsys.train") from None
        except NotADirectoryError:
            raise RecsysError(f"{path} is not a model dir; train first: python -m recsys.train") from None
        except OSError as e:
            raise RecsysError(f"cannot open the model dir {path}: {e.strerror or e}") from None
        if attempt < 4 and not still_at(path, where, files):  # swapped out as we opened it: again
            files.close()
            continue
        return where, files


def _no_model(path: Path) -> RecsysError:
    """The error for a folder without a model: it may hold model dirs (`--model-dir .` above them)."""
    try:
        inner = sorted(p.name for p in path.iterdir() if (p / "manifest.json").is_file() or (p / "meta.json").is_file())
    except OSError:
        inner = []
    if inner:
        shown = ", ".join(inner[:3]) + (", ..." if len(inner) > 3 else "")
        return RecsysError(f"{path} is not a model dir but holds model dirs ({shown}); give one of them as --model-dir")
    return NoModel(f"no trained model in {path}; train first: python -m recsys.train")


def _meta(where: Path, files: Files) -> dict:
    """meta.json, once the manifest (if any) has checked every file's presence and size."""
    files.read_manifest()
    if "meta.json" not in files.open and files.expected is None:
        raise files.missing("meta.json") if "meta.json" in files.other else _no_model(where)
    meta = files.json("meta.json")
    if not isinstance(meta, dict):
        raise damaged(where, "meta.json", "unreadable")
    files.check(meta)
    if meta.get("format") != FORMAT:
        raise RecsysError(f"model dir {where} has format {meta.get('format')}, this recsys reads {FORMAT}; train again")
    return meta


def read_meta(path: str | os.PathLike) -> dict:
    """A model dir's meta.json alone (its settings, sizes, data), checked as `ModelDir.load` checks it."""
    where, files = _open(Path(path))
    try:
        return _meta(where, files)
    finally:
        files.close()


def _arrays(where: Path, files: Files, meta: dict) -> dict[str, np.ndarray]:
    """arrays.npz, every array checked against meta.json (`recsys.modeldir.checks`)."""
    arrays = files.npz("arrays.npz")
    required = {"user_table", "movie_category", "movie_title", "rated_indptr", "rated_movie", "rated_stars"}
    required |= {"rated_is_test"} | ({"user_vectors", "movie_vectors"} if meta.get("network", True) else set())
    if required - set(arrays):
        raise damaged(where, "arrays.npz", f"no {', '.join(sorted(required - set(arrays)))}")
    try:
        checks.model_arrays(meta, arrays)
    except checks.Bad as e:
        raise damaged(where, "arrays.npz", str(e)) from None
    return arrays


@dataclass
class ModelDir:
    """A loaded model dir: metadata, arrays, and the inference predictor on demand."""

    path: Path
    meta: dict
    arrays: dict[str, np.ndarray]
    files: Files

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelDir:
        path = Path(path)
        where, files = _open(path)
        try:
            meta = _meta(where, files)
            return cls(where, meta, _arrays(where, files, meta), files)
        except BaseException:
            files.close()
            raise

    @functools.cached_property
    def tables(self) -> Tables:
        sizes = self.meta["sizes"]
        return Tables(
            self.arrays["user_table"],
            self.arrays["movie_category"],
            self.arrays["movie_title"],
            sizes["n_categories"],
            sizes["n_title_words"],
            tuple(self.features),
        )

    @functools.cached_property
    def user_ids(self) -> frozenset[int]:
        """The dataset's own ids of its users."""
        return frozenset(self.meta["users"])

    @functools.cached_property
    def own_user_ids(self) -> np.ndarray:
        """Row -> the dataset's own user id (the same numbers for ml-1m and ml-100k)."""
        return self.arrays.get("user_ids", np.arange(len(self.arrays["user_table"])))

    @functools.cached_property
    def own_movie_ids(self) -> np.ndarray:
        """Row -> the dataset's own movie id."""
        return self.arrays.get("movie_ids", np.arange(len(self.arrays["movie_category"])))

    @functools.cached_property
    def _rows(self) -> tuple[dict[int, int], dict[int, int]]:
        users = {int(u): r for r, u in enumerate(self.own_user_ids.tolist()) if r}  # row 0: the unknown user
        movies = {int(m): r for r, m in enumerate(self.own_movie_ids.tolist()) if str(r) in self.meta["movies"]}
        return users, movies

    def user_row(self, user_id: int) -> int:
        """The row of a user known by the dataset's own id (an error when unknown)."""
        if not self.has_user(user_id):
            raise RecsysError(f"unknown user id {user_id}; {self.meta['dataset']} has no such user")
        return self._rows[0][int(user_id)]

    def movie_row(self, movie_id: int) -> int:
        """The row of a movie known by the dataset's own id (an error when unknown)."""
        if not self.has_movie(movie_id):
            raise RecsysError(f"unknown movie id {movie_id}; {self.meta['dataset']} has no such movie")
        return self._rows[1][int(movie_id)]

    def own_movie(self, row: int) -> int:
        return int(self.own_movie_ids[row])

    def own_user(self, row: int) -> int:
        return int(self.own_user_ids[row])

    @property
    def features(self) -> dict[str, list[str]]:
        """User feature -> the labels of its values (index = feature id): the chapter's gender, age, job."""
        from recsys.movielens import AGE_GROUPS

        default = {"gender": ["M", "F"], "age": AGE_GROUPS, "job": self.meta.get("jobs", [])}
        return self.meta.get("features", default)

    @property
    def rating_scale(self) -> tuple[float, float]:
        """The lowest and highest rating of the data (half stars from 0.5, or the chapter's 1..5)."""
        low, high = self.meta.get("rating_scale", (1, 5))
        return low, high

    @property
    def chapter_features(self) -> bool:
        """Whether the users have the chapter's features (gender, age, job)."""
        return list(self.features) == ["gender", "age", "job"]

    def cold_feeds(self, values: tuple) -> dict[str, np.ndarray]:
        """The unknown user's feeds with these feature ids (one per feature, in order), by feed name."""
        ids = {f"{f}_id": np.array([v], np.int64) for f, v in zip(self.features, values)}
        return {"user_id": np.zeros(1, np.int64)} | ids

    def cold_vector(self, values: tuple, unit: bool = True) -> np.ndarray:
        """A new user's tower output from feature ids (saved for every combination, or computed)."""
        kind = "vectors" if unit else "outputs"
        if f"cold_{kind}" in self.arrays:
            return self.arrays[f"cold_{kind}"][tuple(values)]
        feeds = self.cold_feeds(values) | ({"history": self.history_of([0])} if self.history else {})
        return self.user_vector(feeds, unit)[0]

    @functools.cached_property
    def movie_ids(self) -> np.ndarray:
        """Rows of the dataset's movies, ascending (the catalogue; for ml-1m and ml-100k, their ids)."""
        return np.array(sorted(int(m) for m in self.meta["movies"]), np.int64)

    @functools.cached_property
    def catalogue_vectors(self) -> np.ndarray:
        """Unit movie-tower vectors of the dataset's movies, in `movie_ids` (catalogue) order."""
        return self.arrays["movie_vectors"][self.movie_ids]

    @functools.cached_property
    def movie_index(self):
        """The faiss index of `catalogue_vectors` (`recsys.modeldir.index`): the saved one, else built now."""
        if not self.meta.get("index"):
            return index.build(self.catalogue_vectors)
        try:
            ix = index.from_bytes(self.files.read(index.FILE))
        except ValueError as e:
            raise damaged(self.path, index.FILE, f"unreadable: {e}") from None
        if (ix.ntotal, ix.d) != self.catalogue_vectors.shape:
            raise damaged(self.path, index.FILE, f"{ix.ntotal} x {ix.d} vectors, not the catalogue's")
        return ix

    @property
    def objective(self) -> str:
        """The objective it was trained with: "rating" (the chapter's regression), "retrieval" (the
        candidate-generation softmax), "ranking", or a stage fitted in closed form ("ease", "popularity",
        "item-knn"); `recsys.topn.registry` maps it to the model dir's stage."""
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
        """A ranking model's head parameters (see `recsys.topn.rerank.head_scores`)."""
        return {k: v for k, v in self.params().items() if k.startswith("head.")}

    @property
    def first_stage_beta(self) -> float:
        """A retrieval model's weight of the item-item score beside the cosine in its first stage
        (`recsys.topn.first_stage`); 0: the cosine alone."""
        return float(self.arrays.get("first_stage_beta", 0.0))

    @functools.cached_property
    def item_item_by_row(self):
        """The sparse item-item weights [M, M] of a ranking model's pair feature or of a retrieval model's first
        stage, by row, as saved (`recsys.topn.neighbours`; a ranking model saved with the dense EASE weights of
        earlier versions gives those)."""
        import scipy.sparse as sp

        a, n = self.arrays, len(self.movie_ids)
        if "item_item" in a:
            return sp.csr_matrix(a["item_item"])
        return sp.csr_matrix((a["item_item_data"], a["item_item_indices"], a["item_item_indptr"]), shape=(n, n))

    @functools.cached_property
    def catalogue_genres(self):
        """The catalogue's genres [M, G] (0/1, catalogue order), as a ranking model's pair features read them."""
        return self.tables.genres(self.movie_ids)

    @functools.cached_property
    def item_item(self):
        """`item_item_by_row` by column."""
        return self.item_item_by_row.tocsc()

    @functools.cached_property
    def network(self):
        """The dygraph network rebuilt from the saved parameters (for inputs no saved vector covers)."""
        import paddle

        from recsys.model import RankingNet, RecommenderNet

        params = self.params()
        kind = RankingNet if any(k.startswith("head.") for k in params) else RecommenderNet  # a head: a ranker's
        width = {"n_features": params["head.linear"].shape[0]} if kind is RankingNet else {}
        net = kind(**self.meta["sizes"], history=self.history, **width)
        try:  # Paddle would skip a parameter of another shape with a warning, and answer from random weights
            checks.parameters({k: tuple(v.shape) for k, v in net.state_dict().items()}, params)
        except checks.Bad as e:
            raise damaged(self.path, "params.npz", str(e)) from None
        net.set_state_dict({k: paddle.to_tensor(v) for k, v in params.items()})
        net.eval()
        return net

    def user_vector(self, feeds: dict[str, np.ndarray], unit: bool = True, histories=None) -> np.ndarray:
        """The user tower's output for these feeds (history included, or read from `histories`), rebuilt."""
        dynamic_mode()
        return tower_outputs(self.network.user_tower, feeds, unit, histories=histories)

    def has_user(self, user_id: int) -> bool:
        """Whether the dataset has a user with this own id."""
        return user_id in self.user_ids

    def has_movie(self, movie_id: int) -> bool:
        """Whether the dataset has a movie with this own id."""
        return int(movie_id) in self._rows[1]

    def title(self, row: int) -> str:
        """The title of the movie in this row."""
        return self.meta["movies"][str(row)][0]

    def genres(self, row: int) -> list[str]:
        return self.meta["movies"][str(row)][1]

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
