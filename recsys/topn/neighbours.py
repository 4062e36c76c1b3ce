"""The ranking network's sparse item-item model: EASE's weights, each movie keeping its `k` strongest.

EASE (Steck 2019, see `recsys.topn.baselines.EASE`) fits item-item weights B in closed form from the 0/1 rating
matrix X: P = (X'X + lam I)^-1, B = -P / diag(P), diag(B) = 0. Here column j of B keeps only its `k` weights of
largest magnitude (either sign: the negative ones carry as much as the positive), so a user's item-item score of
movie j, their history dotted with that column, is a sum over at most `k` neighbours, and the saved model holds
M x k weights instead of M x M. With more than `max_items` movies, B covers the most-rated `max_items` and the
other movies get no item-item weight (nor do unrated movies, whose weights are 0: they stay out of the
inverse). X'X is counted from the sparse rows (`cooccurrence`), so nothing of users x movies is ever dense;
memory is that of one max_items x max_items matrix.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

from recsys.topn.baselines import EASE_MAX_ITEMS, _weights_from_gram, cooccurrence, most_rated

K = 300  # weights per movie: chosen on the ml-100k folds' validation splits (README, "Choosing the defaults")
LAMBDA = 500.0  # EASE's L2 weight, as the baseline's


def history_matrix(n_users: int, n_cols: int, user: np.ndarray, col: np.ndarray) -> sp.csr_matrix:
    """[U, M] 0/1 CSR float32: user u rated catalogue column c (repeats count once)."""
    x = sp.csr_matrix((np.ones(len(user), np.float32), (user, col)), shape=(n_users, n_cols))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def fit(history: sp.csr_matrix, k: int = K, lam: float = LAMBDA, max_items: int = EASE_MAX_ITEMS) -> sp.csr_matrix:
    """The [M, M] CSR float32 weights of the 0/1 histories [U, M]: column j keeps EASE's `k` weights into movie
    j of largest magnitude (ties: the smaller movie)."""
    n_cols = history.shape[1]
    counts = np.asarray(history.sum(axis=0)).ravel()
    rated = int(np.count_nonzero(counts))  # an unrated movie's weights are all 0: it is left out of the inverse
    keep = most_rated(counts, min(max_items, rated))
    x = history[:, keep].tocsr()
    x.sort_indices()
    w = _weights_from_gram(cooccurrence(x.indptr, x.indices.astype(np.int64), len(keep)), lam)
    rows, cols = [], []
    for s in range(0, len(keep), 1024):  # a block of columns at a time: no copy of the whole matrix
        r, c = _strongest_per_column(w[:, s : s + 1024], k)
        rows.append(r)
        cols.append(c + s)
    r, c = (np.concatenate(a) for a in (rows, cols))
    return sp.csr_matrix((w[r, c], (keep[r], keep[c])), shape=(n_cols, n_cols), dtype=np.float32)


def _strongest_per_column(w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each column's `k` nonzero entries of largest magnitude (ties: the smaller row): (rows, columns)."""
    a = np.abs(w)
    k = min(k, a.shape[0])
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    kth = -np.partition(-a, k - 1, axis=0)[k - 1]
    row, col = np.nonzero((a >= kth[None, :]) & (a > 0))
    order = np.lexsort((row, -a[row, col], col))
    row, col = row[order], col[order]
    place = np.arange(len(col)) - np.searchsorted(col, col)  # rank within its column
    return row[place < k], col[place < k]


def scores(history: sp.csr_matrix, weights, users: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The item-item score of aligned (user, column) pairs: the user's history dotted with the column's
    weights (CSR, or CSC: faster, each pair reads only its column's `k` weights). [n] float32."""
    if len(users) == 0:
        return np.zeros(0, np.float32)
    if weights.format == "csc":  # the arrays as they are: no copy of a whole catalogue's histories per call
        h = history.tocsr()
        return _pair_scores(h.indptr, h.indices, h.data, weights.indptr, weights.indices, weights.data,
                            np.asarray(users, np.int64), np.asarray(cols, np.int64), history.shape[1])  # fmt: skip
    distinct, row = np.unique(users, return_inverse=True)
    product = (history[distinct] @ weights).tocsr()  # [distinct users, M], sparse
    return np.asarray(product[row, cols], np.float32).ravel()


@numba.njit(cache=True, nogil=True)
def _pair_scores(h_ptr, h_col, h_val, w_ptr, w_row, w_val, users, cols, n_cols):
    """`scores` for CSC weights: the pairs grouped by user, each user's history spread once over a dense
    [M] scratch, then each of their pairs summing its column's weights times the history there."""
    out = np.zeros(len(users), np.float32)
    here = np.zeros(n_cols, np.float64)
    order = np.argsort(users, kind="mergesort")
    i = 0
    while i < len(order):
        u = users[order[i]]
        for p in range(h_ptr[u], h_ptr[u + 1]):
            here[h_col[p]] += h_val[p]
        while i < len(order) and users[order[i]] == u:
            c, total = cols[order[i]], 0.0
            for p in range(w_ptr[c], w_ptr[c + 1]):
                total += w_val[p] * here[w_row[p]]
            out[order[i]] = total
            i += 1
        for p in range(h_ptr[u], h_ptr[u + 1]):
            here[h_col[p]] = 0.0
    return out
