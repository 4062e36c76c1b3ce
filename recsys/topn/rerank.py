"""The second stage's pieces that serving shares with training: a retrieval model's candidate pools, the
ranking network's pair features and its head in NumPy, and what identifies the retrieval model it reorders."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

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


FEATURES = ("cosine", "log_share", "item_item", "genre_affinity", "mean_stars", "recent_share", "activity")
FEATURE_SETS = {"basic": 3, "all": len(FEATURES)}  # `--pair-features`: how many of FEATURES the head reads


@dataclass
class PairInputs:
    """Everything the ranking network's pair features read, all of it from the training split: the users'
    retrieval unit vectors `user_vectors` [U, D] and their histories `history` [U, M] (sparse 0/1 over catalogue
    columns: their training ratings, or a served request's with the ratings it brings); by catalogue column,
    the movies' retrieval unit vectors `movie_vectors` [M, D], the ranker's sparse item-item weights
    `item_item` [M, M] (`recsys.topn.neighbours`; CSC is fastest), each movie's log share of the ratings
    `log_share` [M], its genres `genres` [M, G] (0/1, `recsys.movielens.Tables.genres`), its shrunk mean
    stars `stars` [M] (`mean_stars`) and its log share of the latest ratings `recent` [M] (`recent_share`); a
    user's genre shares and activity come from their history; `width`: how many of `FEATURES` the ranking head
    reads (`FEATURE_SETS`; `stars` and `recent` are read only beyond the first three). `first`, when given, is
    the leading first stage (`recsys.topn.stage.FirstStage`) whose `pair_score` of the users (`user_vectors`:
    its `queries`, or None) and their histories is the first feature, in place of the cosine of the vectors.
    Training, evaluation and serving build one of these and call `pair_features` on it."""

    user_vectors: np.ndarray
    history: sp.csr_matrix
    movie_vectors: np.ndarray
    item_item: sp.spmatrix
    log_share: np.ndarray
    genres: np.ndarray
    stars: np.ndarray | None
    recent: np.ndarray | None
    width: int = FEATURE_SETS["basic"]
    first: object | None = None

    def first_score(self, users: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """[N]: the first stage's score of aligned pairs (the cosine of the vectors when no `first` is given)."""
        if self.first is None:
            return np.einsum("nd,nd->n", self.user_vectors[users], self.movie_vectors[cols])
        return self.first.pair_score(self.user_vectors, users, cols, self.history)

    @property
    def n_movies(self) -> int:
        """The catalogue's size."""
        return self.history.shape[1]

    @functools.cached_property
    def user_counts(self) -> np.ndarray:
        """[U] float32: the number of movies in each user's history."""
        return np.asarray(self.history.sum(axis=1), np.float32).ravel()

    @functools.cached_property
    def user_genres(self) -> np.ndarray:
        """[U, G] float32: each user's share of their history in each genre (0 for an empty history)."""
        counts = np.maximum(self.user_counts, 1.0)[:, None]
        return np.asarray(self.history @ self.genres, np.float32) / counts


def pair_features(inputs: PairInputs, users: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The first `inputs.width` ranking features (`FEATURES`) of aligned (user, catalogue column) pairs,
    [N, width] float32: the retrieval model's cosine, the movie's log share of the ratings, the item-item score
    of the user's history (the ranker's own weights); then the user's genre affinity (their share of each of
    the movie's genres, averaged over them), the movie's shrunk mean stars, its log share of the latest ratings,
    and the user's activity (log(1 + the number of movies in their history)). `users` index the rows of
    `inputs.user_vectors` and `inputs.history`."""
    cosine = inputs.first_score(users, cols)
    item = neighbours.scores(inputs.history, inputs.item_item, users, cols)
    columns = [cosine, inputs.log_share[cols], item]
    if inputs.width > len(columns):
        genres = inputs.genres[cols]
        affinity = np.einsum("ng,ng->n", inputs.user_genres[users], genres) / np.maximum(genres.sum(axis=1), 1.0)
        columns += [affinity, inputs.stars[cols], inputs.recent[cols], np.log1p(inputs.user_counts[users])]
    return np.stack(columns[: inputs.width], axis=1).astype(np.float32)


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


def served_features(first, rerank, queries, seen, pool: np.ndarray) -> np.ndarray:
    """The pair features [n, N, F] of a batch of served users' candidate columns `pool` [n, N] (-1: none), from
    the leading first stage `first` (`recsys.topn.stage.FirstStage`), the ranking model dir `rerank`, the
    users' inputs to the first stage `queries` (`FirstStage.queries`: a tower model's unit vectors [n, D]) and
    their histories `seen` [n, M] (catalogue columns: their training ratings and those a request brings):
    `pair_features` on the same inputs as training builds them."""
    cols = np.maximum(pool, 0)
    a, width = rerank.arrays, rerank.head_params["head.linear"].shape[0]
    history = sp.csr_matrix(seen, dtype=np.float32)
    movies = (a["log_share"], rerank.catalogue_genres, a.get("movie_stars"), a.get("recent_share"))
    inputs = PairInputs(queries, history, None, rerank.item_item, *movies, width, first)
    rows = np.repeat(np.arange(len(cols)), cols.shape[1])
    return pair_features(inputs, rows, cols.ravel()).reshape(*cols.shape, -1)
