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
from recsys.topn.lists import contains, rerank_pool
from recsys.topn.rerank import head_scores, served_features

CANDIDATES = 100  # the retrieval model's top N that a rating model reorders (a ranking model records its own N)


def candidates_for(rerank: ModelDir | None, given: int | None = None) -> int:
    """How many retrieval candidates the second stage reorders: `given`, else the number a ranking model was
    trained to reorder (its `--candidates`), else `CANDIDATES`."""
    if given is not None:
        return given
    if rerank is not None and rerank.objective == "ranking":
        return int(rerank.meta["settings"].get("candidates") or CANDIDATES)
    return CANDIDATES


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


def scale(md: ModelDir) -> float:
    """Cosine to score: the rating head's 5 * cos (label space); a retrieval model's score is the cosine."""
    return 5.0 if md.objective == "rating" else 1.0


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
    md: ModelDir, user: int | None, k: int, cold: tuple | None = None, rated=(), search: str = "auto", banned=None
) -> list[tuple[int, float, float]]:
    """The k best-scored movies (rows) the user has not rated in the training split, or, for a new user with
    feature ids `cold`, has not named in `rated`, nor `banned` (see `rank`): (row, score, cosine) triples. A
    rating model's score is 5 cos (label space); a retrieval model's is its first stage's (the cosine alone,
    or plus the item-item score)."""
    v = vector(md, user, cold, rated)
    values = rank(md, v, k, seen(md, user, rated), search, history=True, banned=banned)
    return [(m, scale(md) * s, float(md.arrays["movie_vectors"][m] @ v)) for m, s in values]


def second_stage_scores(
    md: ModelDir, rerank: ModelDir, first: np.ndarray, second: np.ndarray, pool: np.ndarray, seen: np.ndarray
) -> np.ndarray:
    """The second stage's scores [n, N] of each user's candidate columns `pool` [n, N] (-1: none), from the
    users' vectors in the retrieval model (`first` [n, D], unit) and in the second model (`second` [n, D]: a
    rating model's unit vectors, scored 5 cos in label space; a ranking model's raw outputs, scored by its
    head from the towers and the pair features, which read each user's history: `seen` [n, M], their
    catalogue columns)."""
    cols = np.maximum(pool, 0)
    if rerank.objective == "rating":
        return 5.0 * np.einsum("nd,npd->np", second, rerank.catalogue_vectors[cols])
    features = served_features(md, rerank, first, seen, pool)
    movies = rerank.arrays["movie_outputs"][rerank.movie_ids[cols]]
    return head_scores(rerank.head_params, second[:, None, :], movies, features)


def two_stage_lists(
    md: ModelDir,
    rerank: ModelDir,
    first,
    second,
    seen: np.ndarray,
    k: int,
    candidates: int,
    search: str = "auto",
    banned=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two stages for a batch of users given by their vectors in each model (see `second_stage_scores`) and
    their seen catalogue columns [n, M] (their histories): the retrieval model's top `candidates` columns
    outside `banned` ([n, M] sparse 0/1 or None: left out, not history), and those reordered by the second
    model's scores, cut to k. Returns (candidates, their scores, top k)."""
    ix = movie_index(md, search)
    pool = top_k_outside(first_stage(md), ix, md.catalogue_vectors, first, seen, banned, candidates)[0]
    scores = second_stage_scores(md, rerank, first, second, pool, seen)
    return pool, scores, rerank_pool(pool, scores, k)


def user_vectors(md: ModelDir, rerank: ModelDir, user: int | None, cold=None, rated=()) -> tuple:
    """One user's vectors in each of the two models, [1, D] each (see `second_stage_scores`)."""
    first = vector(md, user, cold, rated)
    second = vector(rerank, user, cold, rated, unit=rerank.objective != "ranking")
    return first[None], second[None]


def two_stage(
    md: ModelDir,
    rerank: ModelDir,
    k: int,
    candidates: int,
    user: int | None = None,
    cold=None,
    rated=(),
    search: str = "auto",
    banned=None,
) -> list[tuple[int, float, float, int]]:
    """The first stage's top `candidates` unrated movies outside `banned` (see `rank`), reordered by the second
    model's score:
    (movie row, second-stage score, retrieval cosine, retrieval rank) for the best k. The score is a rating
    model's label-space score, or a ranking model's logit."""
    first, second = user_vectors(md, rerank, user, cold, rated)
    mask = seen_columns(md, seen(md, user, rated))
    lists = two_stage_lists(md, rerank, first, second, mask, k, candidates, search, banned)
    pool, scores, best = (a[0] for a in lists)
    place = {c: i for i, c in enumerate(pool.tolist())}
    return [
        (int(md.movie_ids[c]), float(scores[place[c]]), float(md.catalogue_vectors[c] @ first[0]), place[c] + 1)
        for c in best.tolist() if c >= 0
    ]  # fmt: skip


def similar(md: ModelDir, movie: int, k: int, search: str = "auto") -> list[tuple[int, float]]:
    """The k movies (rows) nearest to the movie row `movie` by the cosine of their movie-tower vectors."""
    return rank(md, md.arrays["movie_vectors"][movie], k, [movie], search)
