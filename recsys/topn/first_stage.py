"""The first stage's score of a movie for a user: the retrieval model's cosine plus a weighted item-item score.

    score(u, j) = cos(u, j) + beta * item(u, j),   item(u, j) = h_u . W[:, j]

h_u is the user's history (0/1 over the catalogue) and W the sparse item-item weights of
`recsys.topn.neighbours`, fitted on the ratings the retrieval model trained on (never its held-out ones, which a
ranker learns from). `share` in [0, 1) is the item-item score's part of the mix once both scores are in units
of their own spread over the catalogue: beta = share / (1 - share) * sd(cos) / sd(item), the two spreads
measured over a seeded sample of users when the model is saved. share 0 is the network alone. The default
share was chosen on the ml-100k folds' validation splits (README, "Choosing the defaults").

Through a faiss index, a user's top k are found among the index's top w by cosine and the w best item-item
scores, w being at least `WIDE * k`: all the unseen movies the index's search returned (it asks for a power of
two, k plus the user's seen movies rounded up, so w is often several times that, at no extra cost). Any other
movie scores at most the last of those cosines plus beta times the best item-item score left out; a row whose
k-th score is below that bound is answered exactly, so the lists equal exact search's wherever the index's own
top w does.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse as sp

from recsys import threads
from recsys.topn import nearest
from recsys.topn.lists import top_k_lists

SHARE = 0.3  # the item-item score's share of the mix (see above)
SAMPLE = 256  # users whose scores measure the two spreads
# Through faiss, a list of k is found among at least WIDE * k movies by cosine and as many by item-item score.
# Measured on one-user candidate pools of 200 at 87,585 movies (long histories), 400 users: keeping exactly 2k
# left 43 % of them to exact search (3.1 ms a user), keeping all the search returned 4 % (2.1 ms).
WIDE = 2
ROWS_PER_THREAD = 64  # a faiss search of fewer rows per thread runs its pools on one thread


@dataclass
class FirstStage:
    """A retrieval model's first stage: its item-item weights [M, M] by row, and `beta`."""

    by_row: sp.csr_matrix
    beta: float = 0.0

    @classmethod
    def of(cls, weights, beta: float = 0.0) -> FirstStage:
        """From the weights [M, M] in any sparse form."""
        return cls(sp.csr_matrix(weights, dtype=np.float32), beta)

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
    item-item scores (`FirstStage.items`), when already at hand. Both paths score a list's movies alike (float64
    sums of the same float32 terms, in the same order), so they agree on near ties."""
    if stage is None or stage.beta == 0:
        return nearest.top_k(ix, movies, queries, seen, k)
    dense = seen if isinstance(seen, np.ndarray) else None
    seen = sp.csr_matrix(seen, dtype=np.float32)
    seen.sort_indices()
    queries, movies = np.asarray(queries, np.float32), np.asarray(movies, np.float32)
    n, k = len(queries), min(k, len(movies))
    cols, values, exact = np.full((n, k), -1, np.int64), np.zeros((n, k)), np.ones(n, bool)
    if ix is not None:
        cols[:], values[:], exact[:] = _pools(
            stage, movies, queries, seen, nearest.pool(ix, movies, queries, seen, WIDE * k), k
        )
    rows = np.flatnonzero(exact)
    if len(rows):
        item = (stage.items(seen[rows]) if items is None else sp.csr_matrix(items)[rows]).toarray()
        found = top_k_lists(
            queries[rows] @ movies.T + stage.beta * item,
            dense[rows] > 0 if dense is not None else seen[rows].toarray() > 0,
            k,
        )
        at = np.maximum(found, 0)
        cols[rows] = found
        values[rows] = _pair_dots(queries[rows], movies, at) + stage.beta * np.take_along_axis(item, at, 1).astype(
            np.float64
        )
    values = np.where(cols >= 0, values, -np.inf)
    order = np.lexsort((np.where(cols >= 0, cols, np.iinfo(np.int64).max), -values), axis=-1)
    cols, values = np.take_along_axis(cols, order, 1), np.take_along_axis(values, order, 1)
    return cols, np.where(cols >= 0, values, 0.0)


def _pools(stage: FirstStage, movies: np.ndarray, queries: np.ndarray, seen: sp.csr_matrix, cos_cols, k: int):
    """`_from_pools` of every query, the rows split between at most the process's chosen number of threads
    (`recsys.threads`; the kernel releases the GIL; each row's answer depends on that row alone)."""
    w, n = stage.by_row, len(queries)
    parts = max(1, min(threads.chosen(), n // ROWS_PER_THREAD))

    def rows(a: int, b: int):
        with _scratch(len(movies)) as (marks, *space):
            return _from_pools(stage.beta, movies, queries[a:b], seen.indptr[a : b + 1], seen.indices, w.indptr,
                               w.indices, w.data, cos_cols[a:b], k, WIDE * k, marks, *space)  # fmt: skip

    if parts == 1:
        return rows(0, n)
    edges = np.linspace(0, n, parts + 1).astype(int)
    with ThreadPoolExecutor(parts) as workers:
        done = list(workers.map(rows, edges[:-1], edges[1:]))
    return tuple(np.concatenate(a) for a in zip(*done))


@contextmanager
def _scratch(m: int):
    """`_from_pools`' scratch over `m` columns, one per thread at a time, kept between calls (a served request
    would otherwise allocate and fill it, O(m), for a few thousand columns): (the first row mark still unused,
    [1] int64, then the arrays)."""
    free = _SCRATCH.setdefault(m, [])
    try:
        space = free.pop()
    except IndexError:  # none free (list.pop is atomic): a new one
        space = (np.zeros(1, np.int64), np.zeros(m, np.float32), np.full(m, -1, np.int64), np.full(m, -1, np.int64),
                 np.empty(m, np.int64), np.empty(m, np.int64), np.empty(m, np.float64))  # fmt: skip
    try:
        yield space
    finally:
        free.append(space)


_SCRATCH: dict[int, list] = {}


@numba.njit(cache=True, nogil=True)
def _from_pools(beta, movies, queries, s_ptr, s_col, w_ptr, w_col, w_val, cos_cols, k, need, marks, item,
                touched_by, taken_by, touched, cols, vals):  # fmt: skip
    """Each user's top k (-1 padded) and their scores from the index's best cosines `cos_cols` [n, >= need]
    (-1 padded: a row's w columns; fewer than `need` send it to exact search) and their best w item-item scores
    outside their seen columns (CSR `s_*`), the item-item scores summed in float32 from the weights' rows (CSR
    `w_*`) in the order of the seen columns, as scipy's product does; and whether the row must be answered
    exactly instead (the module's bound): ([n, k], [n, k] float64, [n] bool). The pool is ranked with float32
    cosines; the list's scores are the exact path's float64 ones. Scratch [M] (`_scratch`), kept between calls:
    `item`, the row's item-item score of each column it touched; `touched_by`, the mark of the last row whose
    score `item` holds; `taken_by`, the mark of the last row that saw the column or put it in its pool (a row's
    mark: `marks[0]` + its index, never used before; `marks[0]` moves past this call's); `touched`, `cols`,
    `vals`, work space."""
    n = len(queries)
    best, value, exact = np.full((n, k), -1, np.int64), np.zeros((n, k)), np.zeros(n, np.bool_)
    first = marks[0]
    marks[0] += n
    for i in range(n):
        mark = first + i
        wide = 0  # the row's columns by cosine (all first, then -1)
        while wide < cos_cols.shape[1] and cos_cols[i, wide] >= 0:
            wide += 1
        seen = s_col[s_ptr[i] : s_ptr[i + 1]]
        t = 0
        for s in seen:
            for p in range(w_ptr[s], w_ptr[s + 1]):
                j = w_col[p]
                if touched_by[j] != mark:
                    touched_by[j], item[j], touched[t], t = mark, 0.0, j, t + 1
                item[j] += w_val[p]
        for s in seen:
            taken_by[s] = mark
        u = 0
        for j in touched[:t]:
            if taken_by[j] != mark:
                cols[u], vals[u], u = j, item[j], u + 1
        keep = vals[:u] >= np.partition(vals[:u], u - wide - 1)[u - wide - 1] if u > wide + 1 else vals[:u] > -np.inf
        by_col = np.sort(cols[:u][keep])  # only the best wide + 1 (and their ties) are ordered
        order = np.argsort(-item[by_col].astype(np.float64), kind="mergesort")  # ties: the smaller column
        vals_of = item[by_col].astype(np.float64)
        left = max(vals_of[order[wide]], 0.0) if len(order) > wide else 0.0
        pool = np.empty(2 * wide, np.int64)
        size = 0
        for c in cos_cols[i, :wide]:  # unseen and distinct: all of them
            taken_by[c], pool[size], size = mark, c, size + 1
        for j in order[:wide]:
            if taken_by[by_col[j]] != mark:
                taken_by[by_col[j]], pool[size], size = mark, by_col[j], size + 1
        pool = np.sort(pool[:size])
        scores = np.empty(size, np.float64)
        for j in range(size):
            c = pool[j]
            scores[j] = _dot32(movies[c], queries[i]) + beta * (np.float64(item[c]) if touched_by[c] == mark else 0.0)
        ranked = np.argsort(-scores, kind="mergesort")[:k]  # ties: the smaller column (pool ascending)
        for j in range(len(ranked)):  # the list's scores as the exact path computes them
            c = pool[ranked[j]]
            best[i, j] = c
            value[i, j] = _dot64(movies[c], queries[i]) + beta * (np.float64(item[c]) if touched_by[c] == mark else 0.0)
        if wide < need or len(ranked) < k:
            exact[i] = True
        else:
            exact[i] = scores[ranked[-1]] <= _dot32(movies[cos_cols[i][wide - 1]], queries[i]) + beta * left
    return best, value, exact


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def _dot32(a, b):
    """The dot product of two float32 vectors, summed in float32 in SIMD lanes (a pool's ranking)."""
    acc = np.float32(0.0)
    for d in range(len(a)):
        acc += a[d] * b[d]
    return acc


@numba.njit(cache=True, nogil=True, inline="always")
def _dot64(a, b):
    """The dot product of two float32 vectors, summed in float64 in index order."""
    acc = 0.0
    for d in range(len(a)):
        acc += np.float64(a[d]) * np.float64(b[d])
    return acc


@numba.njit(cache=True, nogil=True)
def _pair_dots(queries, movies, cols):
    """[n, k] float64: each query's `_dot64` with the movies of its row of `cols` [n, k] (no [n, k, D] copy)."""
    n, k = cols.shape
    out = np.empty((n, k), np.float64)
    for i in range(n):
        for j in range(k):
            out[i, j] = _dot64(queries[i], movies[cols[i, j]])
    return out
