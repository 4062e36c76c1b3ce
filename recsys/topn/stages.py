"""The two stages over model dirs: a user's vectors, the first stage's top-k by cosine, the second stage's scores
of the first stage's candidates. Everything here speaks in rows (the model dir's user and movie indices); the
data's own ids are `recsys.Recommender`'s."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.modeldir import ModelDir
from recsys.topn import nearest
from recsys.topn.filters import top_k_outside
from recsys.topn.first_stage import FirstStage
from recsys.topn.lists import contains


def predict(md: ModelDir, user: int, movies, cold: tuple | None = None) -> np.ndarray:
    """Scores (label space) of one user (row) on several movies (rows) through the saved inference model.
    `cold` (feature ids: the chapter's gender id, age index, job) scores the unknown user 0 with them instead."""
    movies = np.asarray(movies, np.int64)
    n = len(movies)
    if cold is None:
        users = md.tables.user_features(np.full(n, user, np.int64))
    else:
        users = {k: np.repeat(v, n) for k, v in md.cold_feeds(cold).items()}
    feeds = users | md.tables.movie_features(movies)
    if md.history:
        feeds["history"] = md.history_of(users["user_id"])
    return md.predictor(feeds)[:, 0]


def movie_index(md: ModelDir, search: str = "auto"):
    """The faiss index that `search` ("auto", "exact", "faiss"; see `recsys.topn.nearest`) finds a first
    stage's top movies with, or None for exact search."""
    return md.movie_index if nearest.uses_index(search, len(md.movie_ids)) else None


def first_stage(md: ModelDir) -> FirstStage | None:
    """The retrieval model's first stage: its cosine and, when it was trained with an item-item share, the
    item-item score of the user's history (`recsys.topn.first_stage`); None for the cosine alone."""
    beta = md.first_stage_beta
    return FirstStage.of(md.item_item_by_row, beta) if beta else None


def rank(
    md: ModelDir, vector: np.ndarray, k: int, exclude=(), search: str = "auto", history: bool = False, banned=None
) -> list[tuple[int, float]]:
    """The k movies (rows) outside `exclude` (rows) and `banned` (catalogue columns, [1, M] sparse 0/1 or None:
    left out, not history) of largest dot product of their unit movie vectors with `vector`, or, when
    `exclude` is the user's `history`, of largest first-stage score: (row, value). Ties go to the smaller
    movie id."""
    seen = seen_columns(md, np.asarray(list(exclude), np.int64))
    stage = first_stage(md) if history else None
    cols, values = top_k_outside(stage, movie_index(md, search), md.catalogue_vectors, vector[None], seen, banned, k)
    return [(int(md.movie_ids[c]), float(v)) for c, v in zip(cols[0], values[0]) if c >= 0]


def vector(md: ModelDir, user: int | None, cold: tuple | None, rated=(), unit: bool = True) -> np.ndarray:
    """The user's tower output (unit length, or raw: `*_outputs`, saved for ranking models): a known user's
    (row) or a new user's saved vector, or, for a user with rated movies beyond the training split ((row,
    stars) pairs: a new user's, or a known user's stored ratings), computed with that history."""
    if rated and md.history:
        user_feeds = md.cold_feeds(cold) if user is None else md.tables.user_features(np.array([user], np.int64))
        return md.user_vector(user_feeds | {"history": md.history_of(user_feeds["user_id"], rated)}, unit)[0]
    if cold is None:
        return md.arrays[f"user_{'vectors' if unit else 'outputs'}"][user]
    return md.cold_vector(cold, unit)


def seen(md: ModelDir, user: int | None, rated=()) -> np.ndarray:
    """Movie rows the user rated in the training split, and those in `rated` ((row, stars) pairs)."""
    named = np.array([m for m, _ in rated], np.int64)
    if user is None:
        return named
    movies, _, is_test = md.ratings_of(user)
    return np.union1d(movies[~is_test], named) if len(named) else movies[~is_test]


def seen_columns(md: ModelDir, rows: np.ndarray) -> sp.csr_matrix:
    """The catalogue columns of movie rows `rows` as one sparse 0/1 row [1, M] (rows outside the catalogue
    left out): one user's seen movies in the form `recsys.topn.nearest` and the pair features take, built from
    the rows alone (a dense mask would cost the whole catalogue on every request)."""
    rows = np.unique(rows)
    cols = np.searchsorted(md.movie_ids, rows[contains(md.movie_ids, rows)])
    return sp.csr_matrix((np.ones(len(cols), bool), cols, [0, len(cols)]), shape=(1, len(md.movie_ids)))


def top_k(
    md: ModelDir,
    user: int | None,
    k: int,
    cold: tuple | None = None,
    rated=(),
    search: str = "auto",
    banned=None,
    scale: float = 1.0,
) -> list[tuple[int, float, float]]:
    """The k best-scored movies (rows) the user has not rated in the training split, or, for a new user with
    feature ids `cold`, has not named in `rated`, nor `banned` (see `rank`): (row, score, cosine) triples. The
    score is the first stage's (the cosine alone, or plus the item-item score) times `scale` (a rating model's
    5: 5 cos, label space)."""
    v = vector(md, user, cold, rated)
    values = rank(md, v, k, seen(md, user, rated), search, history=True, banned=banned)
    return [(m, scale * s, float(md.arrays["movie_vectors"][m] @ v)) for m, s in values]


def similar(md: ModelDir, movie: int, k: int, search: str = "auto") -> list[tuple[int, float]]:
    """The k movies (rows) nearest to the movie row `movie` by the cosine of their movie-tower vectors."""
    return rank(md, md.arrays["movie_vectors"][movie], k, [movie], search)
