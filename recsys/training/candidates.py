"""What a ranking network reads of the retrieval model it is stacked on: its candidates and the pair features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsys.topn import neighbours
from recsys.topn.lists import contains


@dataclass
class Candidates:
    """What the ranking network reads, per user: the retrieval model's top candidates and the pair features.

    `user_vectors` [U, D] and `movie_vectors` [M, D] (catalogue order) are the retrieval model's unit vectors
    as computed from the users' histories; `history` [U, M] (sparse 0/1) those histories, whose item-item score
    of a movie is their product with its column of the sparse neighbour weights `item_item` [M, M]
    (`recsys.topn.neighbours`); `log_share` [M] each movie's log share of the ratings (from the same histories);
    `rated` the sorted keys `user * M + column` of every training rating (the held-out ones too), which no
    negative may be; `pool` [U, N] each user's top-N catalogue columns outside their history (-1: none). Nothing
    here is a users x movies array."""

    user_vectors: np.ndarray
    movie_vectors: np.ndarray
    history: sp.csr_matrix
    item_item: sp.csc_matrix
    log_share: np.ndarray
    rated: np.ndarray
    pool: np.ndarray

    def features(self, user: np.ndarray, col: np.ndarray) -> np.ndarray:
        """The ranking features of aligned (user, catalogue column) pairs, [N, 3] float32: the retrieval
        model's cosine, the movie's log share of the ratings, the item-item score of the user's history (the
        ranker's own weights)."""
        cosine = np.einsum("nd,nd->n", self.user_vectors[user], self.movie_vectors[col])
        item = neighbours.scores(self.history, self.item_item, user, col)
        return np.stack([cosine, self.log_share[col], item], axis=1).astype(np.float32)

    def is_rated(self, user: np.ndarray, col: np.ndarray) -> np.ndarray:
        """[n] bool: the user rated the column's movie in training."""
        return contains(self.rated, user.astype(np.int64) * len(self.movie_vectors) + col)

    def negatives(self, user: np.ndarray, per: int, hard: float, rng: np.random.RandomState) -> np.ndarray:
        """`per` negative catalogue columns for each user in `user` ([len(user) * per], user-major): a share
        `hard` from the user's candidates, the rest uniform over the catalogue; never a movie the user rated in
        training. A draw that lands on a rated movie is drawn again (uniformly); -1 where none was found."""
        users = np.repeat(user, per)
        n_cols = len(self.movie_vectors)
        cols = rng.randint(n_cols, size=len(users))
        from_pool = rng.random_sample(len(users)) < hard
        if from_pool.any():
            pick = self.pool[users[from_pool], rng.randint(self.pool.shape[1], size=int(from_pool.sum()))]
            cols[from_pool] = np.where(pick >= 0, pick, cols[from_pool])
        for _ in range(8):
            bad = self.is_rated(users, cols)
            if not bad.any():
                break
            cols[bad] = rng.randint(n_cols, size=int(bad.sum()))
        cols[self.is_rated(users, cols)] = -1
        return cols
