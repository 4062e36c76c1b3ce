"""The first stage's score of a movie for a user: the retrieval model's cosine plus a weighted item-item score.

    score(u, j) = cos(u, j) + beta * item(u, j),   item(u, j) = h_u . W[:, j]

h_u is the user's history (0/1 over the catalogue) and W the sparse item-item weights of
`recsys.topn.neighbours`, fitted on the ratings the retrieval model trained on (never its held-out ones, which a
ranker learns from). `share` in [0, 1) is the item-item score's part of the mix once both scores are in units
of their own spread over the catalogue: beta = share / (1 - share) * sd(cos) / sd(item), the two spreads
measured over a seeded sample of users when the model is saved. share 0 is the network alone. The default
share was chosen on the ml-100k folds' validation splits (README, "Choosing the defaults").

Through a faiss index, a user's top k are found among the index's top `2k` by cosine and the `2k` best
item-item scores. Any other movie scores at most the last of those cosines plus beta times the best item-item
score left out; a row whose k-th score is below that bound is answered exactly, so the lists equal exact
search's wherever the index's own top 2k does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse as sp

from recsys.topn import nearest
from recsys.topn.lists import top_k_lists

SHARE = 0.3  # the item-item score's share of the mix (see above)
SAMPLE = 256  # users whose scores measure the two spreads


@dataclass
class FirstStage:
    """A retrieval model's first stage: its item-item weights [M, M], by column and by row, and `beta`."""

    weights: sp.csc_matrix
    by_row: sp.csr_matrix
    beta: float = 0.0

    @classmethod
    def of(cls, weights, beta: float = 0.0) -> FirstStage:
        """From the weights [M, M] in any sparse form."""
        return cls(sp.csc_matrix(weights, dtype=np.float32), sp.csr_matrix(weights, dtype=np.float32), beta)

    def items(self, seen) -> sp.csr_matrix:
        """The item-item scores [n, M] (sparse) of the histories `seen` [n, M] (bool or sparse 0/1)."""
        return (sp.csr_matrix(seen, dtype=np.float32) @ self.by_row).tocsr()


def sample(n_users: int, seed: int = 0) -> np.ndarray:
    """The users whose scores measure the two spreads: all, or a seeded `SAMPLE` of them, ascending."""
    rows = np.arange(n_users)
    return rows if n_users <= SAMPLE else np.sort(np.random.RandomState(seed).choice(rows, SAMPLE, replace=False))


def item_spread(stage: FirstStage, history) -> float:
    """The spread of the item-item scores of the sampled users (`sample`) with histories `history` [U, M]."""
    return float(np.std(stage.items(history[sample(history.shape[0])]).toarray(), dtype=np.float64))


def beta_for(share: float, users: np.ndarray, movies: np.ndarray, spread_of_items: float) -> float:
    """beta for `share` (see above): share / (1 - share) times the spread of the cosines of the sampled users'
    unit vectors `users` [U, D] with the catalogue's `movies` [M, D] over `spread_of_items` (`item_spread`)."""
    if share <= 0 or spread_of_items <= 0:
        return 0.0
    spread = float(np.std(users[sample(len(users))] @ movies.T, dtype=np.float64))
    return share / (1.0 - share) * spread / spread_of_items


def top_k(stage: FirstStage | None, ix, movies: np.ndarray, queries: np.ndarray, seen, k: int, items=None) -> tuple:
    """Each query's k best catalogue columns by the first stage's score outside its `seen` ones (the user's
    history: bool [n, M], or sparse 0/1), best first, ties to the smaller column, and their scores:
    ([n, k] columns, -1 where the catalogue has fewer; [n, k] scores). `movies` [M, D] are the unit catalogue
    vectors, `ix` their faiss index or None for exact search (`recsys.topn.nearest`); `items`: the histories'
    item-item scores (`FirstStage.items`), when already at hand."""
    if stage is None or stage.beta == 0:
        return nearest.top_k(ix, movies, queries, seen, k)
    dense = seen if isinstance(seen, np.ndarray) else None
    seen = sp.csr_matrix(seen, dtype=np.float32)
    seen.sort_indices()
    items = stage.items(seen) if items is None else items
    n, k = len(queries), min(k, len(movies))
    cols = np.full((n, k), -1, np.int64)
    exact = np.ones(n, bool)
    if ix is not None:
        cos_cols = nearest.top_k(ix, movies, queries, seen, 2 * k)[0]
        items.sort_indices()
        cols[:], exact[:] = _from_pools(
            stage.beta, movies, np.asarray(queries, np.float32), seen.indptr, seen.indices, items.indptr,
            items.indices, items.data, cos_cols, k,
        )  # fmt: skip
    rows = np.flatnonzero(exact)
    if len(rows):
        scores = queries[rows] @ movies.T + stage.beta * items[rows].toarray()
        cols[rows] = top_k_lists(scores, dense[rows] > 0 if dense is not None else seen[rows].toarray() > 0, k)
    return _in_order(stage.beta, movies, queries, items, cols)


def _in_order(beta: float, movies: np.ndarray, queries: np.ndarray, items: sp.csr_matrix, cols: np.ndarray) -> tuple:
    """The lists `cols` [n, k] (-1 padded) with their scores, in float64 whichever path found them, each row
    ordered best first with ties to the smaller column, so that exact and faiss search agree on near ties."""
    n, k = cols.shape
    at = np.maximum(cols, 0)
    values = np.einsum("nd,nkd->nk", np.asarray(queries, np.float64), movies[at].astype(np.float64))
    values += beta * np.asarray(items[np.repeat(np.arange(n), k), at.ravel()], np.float64).reshape(n, k)
    values = np.where(cols >= 0, values, -np.inf)
    order = np.lexsort((np.where(cols >= 0, cols, np.iinfo(np.int64).max), -values), axis=-1)
    cols, values = np.take_along_axis(cols, order, 1), np.take_along_axis(values, order, 1)
    return cols, np.where(cols >= 0, values, 0.0)


@numba.njit(cache=True, nogil=True)
def _from_pools(beta, movies, queries, s_ptr, s_col, i_ptr, i_col, i_val, cos_cols, k):
    """Each user's top k (-1 padded) from the index's best cosines `cos_cols` [n, 2k] and their best 2k
    item-item scores (CSR rows `i_*`, columns ascending) outside their seen columns (CSR `s_*`, ascending),
    and whether the row must be answered exactly instead (the module's bound): ([n, k], [n] bool)."""
    n = len(queries)
    best = np.full((n, k), -1, np.int64)
    exact = np.zeros(n, np.bool_)
    for i in range(n):
        seen = s_col[s_ptr[i] : s_ptr[i + 1]]
        cols, vals = i_col[i_ptr[i] : i_ptr[i + 1]], i_val[i_ptr[i] : i_ptr[i + 1]]
        keep = np.ones(len(cols), np.bool_)
        for j in range(len(cols)):
            at = np.searchsorted(seen, cols[j])
            keep[j] = not (at < len(seen) and seen[at] == cols[j])
        cols, vals = cols[keep].astype(np.int64), vals[keep]  # columns still ascending
        order = np.argsort(-vals, kind="mergesort")  # ties: the smaller column
        found = cos_cols[i][cos_cols[i] >= 0]
        pool = np.unique(np.concatenate((found, cols[order[: 2 * k]])))
        scores = np.empty(len(pool), np.float64)
        for j in range(len(pool)):
            scores[j] = np.dot(movies[pool[j]], queries[i]) + beta * _value_at(cols, vals, pool[j])
        ranked = pool[np.argsort(-scores, kind="mergesort")][:k]  # ties: the smaller column (pool ascending)
        best[i, : len(ranked)] = ranked
        if len(found) < 2 * k or len(ranked) < k:
            exact[i] = True
        else:
            left = max(vals[order[2 * k]], 0.0) if len(order) > 2 * k else 0.0
            kth = np.dot(movies[ranked[-1]], queries[i]) + beta * _value_at(cols, vals, ranked[-1])
            exact[i] = kth <= np.dot(movies[found[-1]], queries[i]) + beta * left
    return best, exact


@numba.njit(cache=True, nogil=True)
def _value_at(cols, vals, col):
    """The value at column `col` of a sparse row (`cols` ascending, `vals`), 0 where it has none."""
    at = np.searchsorted(cols, col)
    return vals[at] if at < len(cols) and cols[at] == col else 0.0
