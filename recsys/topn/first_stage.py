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

import numpy as np
import scipy.sparse as sp

from recsys.topn import nearest, neighbours
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
        for i in range(n):
            cols[i], exact[i] = _from_pools(stage.beta, movies, queries[i], seen[i], items[i], cos_cols[i], k)
    rows = np.flatnonzero(exact)
    if len(rows):
        scores = queries[rows] @ movies.T + stage.beta * items[rows].toarray()
        cols[rows] = top_k_lists(scores, dense[rows] > 0 if dense is not None else seen[rows].toarray() > 0, k)
    pairs = np.repeat(np.arange(n), k), np.maximum(cols, 0).ravel()
    values = np.einsum("nd,nkd->nk", queries, movies[np.maximum(cols, 0)])
    values += stage.beta * neighbours.scores(seen, stage.weights, *pairs).reshape(n, k)
    return cols, np.where(cols >= 0, values, 0.0)


def _from_pools(beta, movies, query, seen_row, item_row, cos_cols, k) -> tuple[np.ndarray, bool]:
    """One user's top k (-1 padded) from the index's best cosines `cos_cols` and the best item-item scores
    `item_row` (sparse [1, M]), and whether the row must be answered exactly instead (the module's bound)."""
    good = cos_cols[cos_cols >= 0]
    unseen = ~np.isin(item_row.indices, seen_row.indices)
    item_cols, item_values = item_row.indices[unseen].astype(np.int64), item_row.data[unseen]
    take = np.lexsort((item_cols, -item_values))
    pool = np.union1d(good, item_cols[take[: 2 * k]])
    lookup = dict(zip(item_cols.tolist(), item_values.tolist()))
    scores = movies[pool] @ query + beta * np.array([lookup.get(c, 0.0) for c in pool.tolist()], np.float32)
    order = np.lexsort((pool, -scores))[:k]
    best = np.concatenate([pool[order], np.full(k - len(order), -1, np.int64)])
    if len(good) < 2 * k or len(order) < k:
        return best, True
    left = item_values[take[2 * k :]]
    bound = float(movies[good[-1]] @ query) + beta * max(float(left.max()) if len(left) else 0.0, 0.0)
    return best, bool(scores[order[-1]] <= bound)
