"""What a ranking network reads of the retrieval model it is stacked on: its candidates and the pair features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.topn.lists import contains
from recsys.topn.rerank import PairInputs, pair_features


@dataclass
class Candidates:
    """What the ranking network reads, per user: the retrieval model's top candidates and the pair features.

    `inputs` holds what the pair features read (`recsys.topn.rerank.PairInputs`: the retrieval model's unit
    vectors as computed from the users' histories, those histories, the ranker's item-item weights, the movies'
    log shares of the ratings, all of the same histories); `rated` the sorted keys `user * M + column` of every
    training rating (the held-out ones too), which no negative may be; `pool` [U, N] each user's top-N catalogue
    columns outside their history (-1: none). Nothing here is a users x movies array."""

    inputs: PairInputs
    rated: np.ndarray
    pool: np.ndarray

    def features(self, user: np.ndarray, col: np.ndarray) -> np.ndarray:
        """The pair features of aligned (user, catalogue column) pairs (`recsys.topn.rerank.pair_features`)."""
        return pair_features(self.inputs, user, col)

    @property
    def n_movies(self) -> int:
        """The catalogue's size."""
        return self.inputs.n_movies

    def is_rated(self, user: np.ndarray, col: np.ndarray) -> np.ndarray:
        """[n] bool: the user rated the column's movie in training."""
        return contains(self.rated, user.astype(np.int64) * self.n_movies + col)

    def negatives(self, user: np.ndarray, per: int, hard: float, rng: np.random.RandomState) -> np.ndarray:
        """`per` negative catalogue columns for each user in `user` ([len(user) * per], user-major): a share
        `hard` from the user's candidates, the rest uniform over the catalogue; never a movie the user rated in
        training. A draw that lands on a rated movie is drawn again (uniformly); -1 where none was found."""
        users = np.repeat(user, per)
        n_cols = self.n_movies
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
