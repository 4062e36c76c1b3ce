"""Why a movie is on a user's list: the rated movies that contributed most to its first-stage score.

The first stage scores movie j for a user as cos(u, j) + beta * sum_i W[i, j] over the movies i of their
history (`recsys.topn.first_stage`). The item-item part is a sum over the rated movies already; the cosine part
is not (the user's vector is the tower's output), so it is shared out among the rated movies in proportion to
how near each one's movie vector is to j's (the towers' nearest rated movies):

    c_i = max(cos(u, j), 0) * n_i / sum_k n_k  +  beta * max(W[i, j], 0),   n_i = max(cos(m_i, m_j), 0)

Every contribution is non-negative, and movie i's `share` is c_i over the sum of c over all the user's rated
movies, so the shares of all of them sum to 1 and those of the (at most `TOP`) movies named sum to at most 1.
A model without item-item weights (beta 0: a rating model, a retrieval model trained without them) gives the
cosine part alone. With two stages the reasons are the retrieval model's: the second stage reorders its
candidates but does not say why they were candidates.

Each listed movie gains `because`: up to `TOP` of {"movie_id", "title", "share"}, the largest shares first.
A user with no rated movies gets `"because": []` and `"reason": NO_HISTORY`; a movie none of whose rated
movies contributes (every c_i 0) gets `"because": []` and `"reason": NOT_NEAR`.
"""

from __future__ import annotations

import math

import numpy as np

from recsys.modeldir import ModelDir

UNIT = 1 << 20  # shares are multiples of 1 / UNIT
TOP = 3  # rated movies named per listed movie
NO_HISTORY = "no rated movies yet: chosen for the user's profile, popular with users like them"
NOT_NEAR = "none of the user's rated movies is near it: chosen for the user's profile"


def contributions(md: ModelDir, user_vector: np.ndarray, history: np.ndarray, movies: np.ndarray) -> np.ndarray:
    """[len(movies), len(history)] float64, each >= 0: how much each history movie (row) contributed to each
    listed movie's (row) first-stage score (see above)."""
    vectors = md.arrays["movie_vectors"]
    near = np.maximum(vectors[movies].astype(np.float64) @ vectors[history].astype(np.float64).T, 0.0)
    cosine = np.maximum(vectors[movies].astype(np.float64) @ np.asarray(user_vector, np.float64), 0.0)
    total = near.sum(axis=1, keepdims=True)
    out = np.divide(near * cosine[:, None], total, out=np.zeros_like(near), where=total > 0)
    beta = md.first_stage_beta  # 0 for a model without item-item weights
    if beta:
        cols = np.searchsorted(md.movie_ids, history), np.searchsorted(md.movie_ids, movies)
        weights = md.item_item_by_row[cols[0]][:, cols[1]].toarray().T.astype(np.float64)  # [movies, history]
        out += beta * np.maximum(weights, 0.0)
    return out


def share(part: float, whole: float) -> float:
    """`part / whole` rounded down to a multiple of 2**-20: exact in binary, so that shares whose true sum is at
    most 1 add up to at most 1 in floating point too."""
    return math.floor(part / whole * UNIT) / UNIT


def because(md: ModelDir, user_vector: np.ndarray, history, recommendations: list[dict]) -> list[dict]:
    """`recommendations` (an answer's movies) with `because` (and, where it is empty, `reason`) added, from the
    user's `history` (movie rows) and their unit vector in `md`, the retrieval (or rating) model."""
    history = np.unique(np.asarray(history, np.int64))
    history = history[np.isin(history, md.movie_ids)]
    if not len(history):
        return [r | {"because": [], "reason": NO_HISTORY} for r in recommendations]
    rows = np.array([md.movie_row(r["movie_id"]) for r in recommendations], np.int64)
    c = contributions(md, user_vector, history, rows)
    total = c.sum(axis=1)
    out = []
    for r, parts, whole in zip(recommendations, c, total):
        order = np.lexsort((history, -parts))[:TOP]  # the largest first, ties: the smaller movie
        named = [
            {
                "movie_id": md.own_movie(int(history[i])),
                "title": md.title(int(history[i])),
                "share": share(parts[i], whole),
            }
            for i in order
            if parts[i] > 0
        ]
        out.append(r | {"because": named} | ({} if named else {"reason": NOT_NEAR}))
    return out
