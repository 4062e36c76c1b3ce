"""Top-N lists over a fixed catalogue: each row's best unseen columns, and candidates reordered by a second
score. Ties go to the smaller column (the smaller movie id, in catalogue order), so every list is deterministic."""

from __future__ import annotations

import numpy as np

from recsys import threads
from recsys.errors import RecsysError
from recsys.threads import usable_cores  # noqa: F401 (where the lists' callers find it)

CELLS = 1 << 24  # a chunk of users' dense [users, catalogue] rows holds at most this many cells (64 MB of float32)


def chunk_rows(n_cols: int) -> int:
    """How many users' dense rows over `n_cols` catalogue columns one chunk takes: `CELLS` cells, at least 16
    rows, so that memory stays flat at any catalogue size."""
    return max(16, CELLS // max(n_cols, 1))


def top_k_lists(scores: np.ndarray, seen: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k best unseen columns, best first; ties go to the smaller column.

    scores: [U, M] floats; seen: [U, M] bool (excluded). Rows with fewer than k candidates are padded
    with -1. A non-finite score is an error, never a ranking."""
    if not np.isfinite(scores).all():
        raise RecsysError("the model produced non-finite scores; it cannot rank them (train it again)")
    s = np.where(seen, -np.inf, scores)
    n_rows, k = s.shape[0], min(k, s.shape[1])
    if k == 0:
        return np.zeros((n_rows, 0), np.int64)
    kth = -np.partition(-s, k - 1, axis=1)[:, k - 1 : k]  # each row's k-th best score
    row, col = np.nonzero(s >= kth)  # the k best and everything tied with the k-th, row-major, columns ascending
    value = s[row, col]
    order = np.lexsort((col, -value, row))
    row, col, value = row[order], col[order], value[order]
    place = np.arange(len(row)) - np.searchsorted(row, row)  # position within its row
    keep = (place < k) & (value > -np.inf)
    out = np.full((n_rows, k), -1, np.int64)
    out[row[keep], place[keep]] = col[keep]
    return out


def top_k_by_group(groups, k: int) -> np.ndarray:
    """Each row's k best columns, group by group: every listed column of a group before any of the next, and
    within a group by score (`top_k_lists`). `groups`: (scores [n, m], seen [n, m], the group's columns [m])
    triples. Returns [n, k] columns, -1 padded."""
    found = []
    for scores, seen, columns in groups:
        best = top_k_lists(scores, seen, k)
        found.append(np.where(best >= 0, columns[np.maximum(best, 0)], -1))
    both = np.concatenate(found, 1)
    return np.take_along_axis(both, np.argsort(both < 0, axis=1, kind="stable")[:, :k], 1)


def rerank_pool(candidates: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's candidate columns (-1: none) reordered by their own scores [U, N] (aligned with
    `candidates`), best first, then cut to k. Equal scores keep the candidates' order."""
    s = np.array(scores, np.float64)
    s[candidates < 0] = 0.0
    if not np.isfinite(s).all():
        raise RecsysError("the ranking model produced non-finite scores; it cannot rank them (train it again)")
    s[candidates < 0] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(candidates, order, 1)


def by_score(score_fn):
    """A ranker from a scorer: `score_fn(user ids) -> [n, M]` becomes `(user ids, seen, k) -> top-k columns`,
    scoring inside `recsys.threads.phase` (a chunk of users by the catalogue: large products)."""

    def rank(users, seen, k):
        with threads.phase():
            return top_k_lists(score_fn(users), seen, k)

    return rank


def rating_keys(user: np.ndarray, col: np.ndarray, n_cols: int) -> np.ndarray:
    """The sorted, distinct keys `user * n_cols + col` of these ratings (what `contains` looks up)."""
    return np.unique(user.astype(np.int64) * n_cols + col)


def contains(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """[n] bool: each query key is among the sorted `keys`."""
    at = np.minimum(np.searchsorted(keys, query), max(len(keys) - 1, 0))
    return keys[at] == query if len(keys) else np.zeros(len(query), bool)
