"""The second stage's pieces that serving shares with training: a retrieval model's candidate pools, the
ranking network's pair features and its head in NumPy, and what identifies the retrieval model it reorders."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsys.data.loader import newest_first_rank
from recsys.topn import neighbours
from recsys.topn.lists import chunk_rows


def candidate_pool(first, queries, seen, n: int, search: str = "auto", chunk: int | None = None) -> np.ndarray:
    """Each user's top-n catalogue columns by the leading first stage `first` (`recsys.topn.stage.FirstStage`:
    its `pool`, from the users' `queries` or None and their histories `seen` [U, M] (bool, or sparse 0/1),
    which are excluded), a chunk of users at a time (only a chunk's rows are ever dense: `lists.chunk_rows` by
    default)."""
    chunk = chunk or chunk_rows(seen.shape[1])
    parts = [
        first.pool(None if queries is None else queries[s : s + chunk], seen[s : s + chunk], None, n, search)
        for s in range(0, seen.shape[0], chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, n), np.int64)


def log_share(history) -> np.ndarray:
    """Each column's log share of the ratings in 0/1 histories [U, M] (dense or sparse; add-one smoothed):
    [M] float32."""
    counts = np.asarray(history.sum(axis=0), np.float64).ravel() + 1.0
    return np.log(counts / counts.sum()).astype(np.float32)


SHRINK = 10.0  # ratings' worth of the global mean in a movie's shrunk mean stars
RECENT = 0.1  # the latest share of the training ratings whose movies make the recent-popularity feature


def mean_stars(cols: np.ndarray, stars: np.ndarray, n_cols: int, shrink: float = SHRINK) -> np.ndarray:
    """Each catalogue column's mean stars over the ratings (`cols`, `stars`), shrunk toward their global mean
    by `shrink` ratings' worth of it, less that mean: [n_cols] float32 (0 for a movie nobody rated)."""
    if len(stars) == 0:
        return np.zeros(n_cols, np.float32)
    centred = stars.astype(np.float64) - stars.mean(dtype=np.float64)
    sums = np.bincount(cols, centred, minlength=n_cols)
    return (sums / (np.bincount(cols, minlength=n_cols) + shrink)).astype(np.float32)


def recent_share(cols: np.ndarray, timestamp: np.ndarray | None, n_cols: int, share: float = RECENT) -> np.ndarray:
    """Each catalogue column's log share (add-one smoothed) of the latest `share` of the ratings (`cols`, their
    `timestamp`s: every rating at or after the quantile), [n_cols] float32; of all of them without timestamps."""
    if timestamp is not None and len(timestamp):
        cols = cols[timestamp >= np.quantile(timestamp, 1.0 - share, method="lower")]
    counts = np.bincount(cols, minlength=n_cols).astype(np.float64) + 1.0
    return np.log(counts / counts.sum()).astype(np.float32)


LATEST = 20  # a user's latest training movies, whose item-item score is the `latest_item_item` feature

FEATURES = ("cosine", "log_share", "item_item", "genre_affinity", "mean_stars", "recent_share", "activity",
            "latest_item_item")  # fmt: skip
# `--pair-features`: the features the head reads, in order (a head saved before the last feature existed reads
# the first seven of "all")
FEATURE_SETS = {"basic": FEATURES[:3], "latest": (*FEATURES[:3], "latest_item_item"), "all": FEATURES}


def latest_columns(users: np.ndarray, cols: np.ndarray, stamps: np.ndarray | None, n_users: int,
                   n: int = LATEST) -> np.ndarray:  # fmt: skip
    """Each user's latest `n` catalogue columns among the ratings (`users`, `cols`) by their timestamps
    `stamps` (ties, and ratings without timestamps, in the order given), oldest first: [n_users, n] int32,
    -1 padded in front."""
    when = np.zeros(len(users), np.int64) if stamps is None else stamps
    order, from_end = newest_first_rank(users, when, n_users)
    keep = from_end < n
    out = np.full((n_users, n), -1, np.int32)
    out[users[order[keep]], n - 1 - from_end[keep]] = cols[order[keep]]
    return out


def latest_matrix(latest: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """The columns `latest` [U, n] (-1: none) as sparse 0/1 rows [U, n_cols]."""
    rows, slots = np.nonzero(latest >= 0)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, latest[rows, slots])), shape=(len(latest), n_cols))


def with_rated(latest: np.ndarray, rated: np.ndarray) -> np.ndarray:
    """One user's latest columns `latest` [n] (oldest first, -1 padded in front) with the columns `rated`
    (a request's or the service's ratings, oldest first) as the newest: [n], each column once, at its newest."""
    newest_first = np.concatenate([latest[latest >= 0], np.asarray(rated, np.int32)])[::-1]
    _, first_place = np.unique(newest_first, return_index=True)
    kept = newest_first[np.sort(first_place)][: len(latest)][::-1]
    return np.concatenate([np.full(len(latest) - len(kept), -1, np.int32), kept.astype(np.int32)])


@dataclass
class PairInputs:
    """Everything the ranking network's pair features read, all of it from the training split: the users'
    retrieval unit vectors `user_vectors` [U, D] and their histories `history` [U, M] (sparse 0/1 over catalogue
    columns: their training ratings, or a served request's with the ratings it brings); by catalogue column,
    the movies' retrieval unit vectors `movie_vectors` [M, D], the ranker's sparse item-item weights
    `item_item` [M, M] (`recsys.topn.neighbours`; CSC is fastest), each movie's log share of the ratings
    `log_share` [M], its genres `genres` [M, G] (0/1, `recsys.movielens.Tables.genres`), its shrunk mean
    stars `stars` [M] (`mean_stars`) and its log share of the latest ratings `recent` [M] (`recent_share`); a
    user's genre shares and activity come from their history; `latest` [U, LATEST]: each user's latest movies
    of that history (catalogue columns, oldest first, -1: none; `latest_columns`); `names`: the features the
    ranking head reads (`FEATURE_SETS`; what it does not read may be None). `first`, when given, is the leading
    first stage (`recsys.topn.stage.FirstStage`) whose `pair_score` of the users (`user_vectors`: its
    `queries`, or None) and their histories is the first feature, in place of the cosine of the vectors.
    Training, evaluation and serving build one of these and call `pair_features` on it."""

    user_vectors: np.ndarray
    history: sp.csr_matrix
    movie_vectors: np.ndarray
    item_item: sp.spmatrix
    log_share: np.ndarray
    genres: np.ndarray
    stars: np.ndarray | None
    recent: np.ndarray | None
    names: tuple[str, ...] = FEATURE_SETS["basic"]
    first: object | None = None
    latest: np.ndarray | None = None

    def first_score(self, users: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """[N]: the first stage's score of aligned pairs (the cosine of the vectors when no `first` is given)."""
        if self.first is None:
            return np.einsum("nd,nd->n", self.user_vectors[users], self.movie_vectors[cols])
        return self.first.pair_score(self.user_vectors, users, cols, self.history)

    @property
    def width(self) -> int:
        """How many features the ranking head reads."""
        return len(self.names)

    @property
    def n_movies(self) -> int:
        """The catalogue's size."""
        return self.history.shape[1]

    @functools.cached_property
    def user_counts(self) -> np.ndarray:
        """[U] float32: the number of movies in each user's history."""
        return np.asarray(self.history.sum(axis=1), np.float32).ravel()

    @functools.cached_property
    def latest_history(self) -> sp.csr_matrix:
        """[U, M] sparse 0/1: each user's latest movies (`latest`)."""
        return latest_matrix(self.latest, self.n_movies)

    @functools.cached_property
    def user_genres(self) -> np.ndarray:
        """[U, G] float32: each user's share of their history in each genre (0 for an empty history)."""
        counts = np.maximum(self.user_counts, 1.0)[:, None]
        return np.asarray(self.history @ self.genres, np.float32) / counts


def pair_features(inputs: PairInputs, users: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The ranking features `inputs.names` of aligned (user, catalogue column) pairs, [N, width] float32 (the
    names of `FEATURES`): the retrieval model's cosine, the movie's log share of the ratings, the item-item
    score of the user's history (the ranker's own weights); the user's genre affinity (their share of each of
    the movie's genres, averaged over them), the movie's shrunk mean stars, its log share of the latest ratings,
    the user's activity (log(1 + the number of movies in their history)); the item-item score of the user's
    latest movies. `users` index the rows of `inputs.user_vectors`, `inputs.history` and `inputs.latest`."""

    def affinity() -> np.ndarray:
        genres = inputs.genres[cols]
        return np.einsum("ng,ng->n", inputs.user_genres[users], genres) / np.maximum(genres.sum(axis=1), 1.0)

    computed = {
        "cosine": lambda: inputs.first_score(users, cols),
        "log_share": lambda: inputs.log_share[cols],
        "item_item": lambda: neighbours.scores(inputs.history, inputs.item_item, users, cols),
        "genre_affinity": affinity,
        "mean_stars": lambda: inputs.stars[cols],
        "recent_share": lambda: inputs.recent[cols],
        "activity": lambda: np.log1p(inputs.user_counts[users]),
        "latest_item_item": lambda: neighbours.scores(inputs.latest_history, inputs.item_item, users, cols),
    }
    return np.stack([computed[name]() for name in inputs.names], axis=1).astype(np.float32)


def head_scores(params: dict[str, np.ndarray], user: np.ndarray, movie: np.ndarray, features: np.ndarray):
    """The ranking head (`model.RankingHead`) in numpy: logits for tower outputs `user` [..., D] and `movie`
    [..., D] and pair features [..., F]. Saves running the network over precomputed tower outputs."""
    x = np.concatenate([np.broadcast_to(user, movie.shape) * movie, features], axis=-1)
    flat = x.reshape(-1, x.shape[-1])  # one 2-D product: NumPy's stacked [..., N, D] @ [D, H] is ten times slower
    h = np.maximum(flat @ params["head.fc.weight"] + params["head.fc.bias"], 0.0)
    linear = features.reshape(-1, features.shape[-1]) @ params["head.linear"]
    return (linear + h @ params["head.out.weight"] + params["head.out.bias"]).reshape(x.shape[:-1])


def fingerprint(md) -> str | None:
    """What identifies a first stage's fitted values: the SHA-256 of its params.npz (from its manifest), or of
    its arrays.npz for a model dir with no network."""
    files = md.files.expected or {}
    return (files.get("params.npz") or files.get("arrays.npz") or {}).get("sha256")


def feature_names(rerank) -> tuple[str, ...]:
    """The pair features a ranking model dir's head reads (its `--pair-features`, as many as the head is wide)."""
    names = FEATURE_SETS[rerank.meta["settings"].get("pair_features") or "basic"]
    return names[: rerank.head_params["head.linear"].shape[0]]


def served_features(first, rerank, queries, seen, pool: np.ndarray, latest: np.ndarray | None = None) -> np.ndarray:
    """The pair features [n, N, F] of a batch of served users' candidate columns `pool` [n, N] (-1: none), from
    the leading first stage `first` (`recsys.topn.stage.FirstStage`), the ranking model dir `rerank`, the
    users' inputs to the first stage `queries` (`FirstStage.queries`: a tower model's unit vectors [n, D]),
    their histories `seen` [n, M] (catalogue columns: their training ratings and those a request brings) and
    their latest movies `latest` [n, LATEST] (catalogue columns, -1: none; `with_rated`): `pair_features` on the
    same inputs as training builds them."""
    cols = np.maximum(pool, 0)
    a, names = rerank.arrays, feature_names(rerank)
    history = sp.csr_matrix(seen, dtype=np.float32)
    movies = (a["log_share"], rerank.catalogue_genres, a.get("movie_stars"), a.get("recent_share"))
    inputs = PairInputs(queries, history, None, rerank.item_item, *movies, names, first, latest)
    rows = np.repeat(np.arange(len(cols)), cols.shape[1])
    return pair_features(inputs, rows, cols.ravel()).reshape(*cols.shape, -1)
