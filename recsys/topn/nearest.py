"""A user's nearest movies by inner product: exact (NumPy over the whole catalogue, the reference) or through
a faiss HNSW index of the unit catalogue vectors (faiss-cpu: the maintained nearest-neighbour library).

The index is asked for k + the number of movies a user rated, the rated ones are dropped, and a row that
still has fewer than k is answered exactly, so a list is never short and never holds a rated movie. Lists
break ties by the smaller column either way. The settings were chosen by `benchmarks/faiss_index.py` (recall@200
against exact search, and the time per user)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.errors import RecsysError
from recsys.modeldir import index
from recsys.topn.lists import contains, top_k_lists

EF_SEARCH = 512  # the least breadth of a search (raised to the number of movies asked for)
SEARCHES = ("auto", "exact", "faiss")
EXACT_HELP = (  # the CLIs' --exact
    "find the first stage's top movies by exact search over the whole catalogue, not through the model dir's "
    f"faiss index (the default from {index.SAVED_FROM:,} movies on)"
)
DENSE_SEEN = 1 << 27  # a batch's seen columns are looked up in a dense [n, M] table up to this many cells


def search_for(exact: bool) -> str:
    """The search a CLI's `--exact` asks for."""
    return "exact" if exact else "auto"


def check_search(search: str) -> None:
    """One-line error unless `search` is "auto", "exact" or "faiss"."""
    if search not in SEARCHES:
        raise RecsysError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")


def uses_index(search: str, n_movies: int) -> bool:
    """Whether `search` ("auto", "exact" or "faiss") goes through the index for a catalogue of `n_movies`."""
    check_search(search)
    return search == "faiss" or (search == "auto" and n_movies >= index.SAVED_FROM)


def top_k(
    ix, vectors: np.ndarray, queries: np.ndarray, seen, k: int, ef_search: int = EF_SEARCH
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's k best columns outside its `seen` ones (bool [n, M], or sparse 0/1), best first, and
    their inner products: ([n, k] columns, -1 where the catalogue has fewer; [n, k] values). Through the
    faiss index `ix` (`recsys.modeldir.index`) when given, else exact over `vectors` [M, D]."""
    if ix is None:
        scores = queries @ vectors.T
        cols = top_k_lists(scores, seen.toarray() > 0 if sp.issparse(seen) else seen, k)
        return cols, np.where(cols >= 0, np.take_along_axis(scores, np.maximum(cols, 0), 1), 0.0)
    cols = pool(ix, vectors, queries, seen, k, ef_search)[:, :k]
    values = np.einsum("nd,nkd->nk", queries, vectors[np.maximum(cols, 0)])
    return cols, np.where(cols >= 0, values, 0.0)


def pool(ix, vectors: np.ndarray, queries: np.ndarray, seen, k: int, ef_search: int = EF_SEARCH) -> np.ndarray:
    """`top_k`'s columns through the index `ix`, each row keeping every unseen column its search returned
    beyond the k (the search asks for k plus the row's seen columns, rounded up to a power of two), in the
    same order: [n, >= k], -1 padded. A row answered exactly has its k."""
    seen = sp.csr_matrix(seen, dtype=bool)
    seen.sort_indices()
    n, m, k = len(queries), len(vectors), min(k, len(vectors))
    ask = 1 << np.ceil(np.log2(np.maximum(k + np.diff(seen.indptr), 1))).astype(np.int64)  # rows share a power of 2
    exact = ask * 4 > m  # asking for a quarter of the catalogue: cheaper over all of it
    cols = np.full((n, max(k, int(ask[~exact].max(initial=0)))), -1, np.int64)
    for size in np.unique(ask[~exact]):
        rows = np.flatnonzero((ask == size) & ~exact)
        found, short = _searched(ix, queries[rows], seen[rows], int(size), k, ef_search)
        cols[rows, : found.shape[1]] = found
        exact[rows[short]] = True
    if exact.any():
        rows = np.flatnonzero(exact)
        cols[rows] = -1
        cols[rows, :k] = top_k(None, vectors, queries[rows], seen[rows], k)[0]
    return cols


def _searched(ix, queries: np.ndarray, seen: sp.csr_matrix, ask: int, k: int, ef: int) -> tuple:
    """The index's `ask` nearest of each query, seen columns dropped, in (value, column) order: ([n, ask]
    columns, -1 padded; [n] bool rows left with fewer than k)."""
    params = index.faiss().SearchParametersHNSW(efSearch=max(ef, ask))
    values, labels = ix.search(np.ascontiguousarray(queries, np.float32), ask, params=params)
    bad = (labels < 0) | _is_seen(seen, labels)
    order = np.lexsort((labels, -np.where(bad, -np.inf, values)))  # each row: best first, then smaller
    good = np.take_along_axis(~bad, order, 1)
    return np.where(good, np.take_along_axis(labels, order, 1), -1), good.sum(axis=1) < k


def _is_seen(seen: sp.csr_matrix, labels: np.ndarray) -> np.ndarray:
    """[n, L] bool: label `labels[i, j]` (-1: none) is among row i's seen columns (sorted indices)."""
    n, m = seen.shape
    cols = np.maximum(labels, 0)
    if n * m <= DENSE_SEEN:
        return np.take_along_axis(seen.toarray(), cols, 1)
    keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(seen.indptr)) * m + seen.indices
    return contains(keys, (np.arange(n, dtype=np.int64)[:, None] * m + cols).ravel()).reshape(labels.shape)
