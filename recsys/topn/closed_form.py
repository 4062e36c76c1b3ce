"""First stages fitted in closed form, with no network: a model dir of arrays that score the whole catalogue
from a user's history (`recsys.topn.stage`). `python -m recsys.train --objective popularity` and `--objective
ease` fit them (`fit`, on the training split less the share `--holdout` keeps for a ranker) and save them; with
`--holdout 0` their lists are evaluation's popularity and EASE rows (`recsys.topn.baselines`). Each leads two
stages: a ranking network reorders its top N, its score of a pair the first feature (`pair_score`)."""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp

from recsys.topn import stages
from recsys.topn.baselines import EASE, EASE_MAX_ITEMS
from recsys.topn.lists import top_k_by_group, top_k_lists
from recsys.topn.metrics import Interactions
from recsys.topn.stage import FirstStage


class ScoredStage(FirstStage):
    """A first stage that scores every catalogue column from the users' histories ([n, M] sparse 0/1) in
    NumPy (`scores`); the columns of `after` (None: none) rank after all the others."""

    after: np.ndarray | None = None
    leads = True  # a ranking network may reorder its top N; its score of a pair is the first pair feature
    pair_value = "first_score"
    uses_history = True  # a user's rated movies change their list (saved as the model dir's `history`)
    score = ""  # what its scores are (meta.json's `score`)

    @classmethod
    def fit(cls, data: Interactions, **settings) -> dict[str, np.ndarray]:
        """The arrays its model dir keeps, fitted on the training ratings of `data`."""
        raise NotImplementedError

    def scores(self, history: sp.csr_matrix) -> np.ndarray:
        """[n, M] float64 scores of every catalogue column."""
        raise NotImplementedError

    def lists(self, history, banned, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each user's k best columns outside their history and `banned` ([n, M] sparse 0/1 or None), best
        first, ties to the smaller column: ([n, k] columns, -1 padded; [n, k] scores)."""
        history = sp.csr_matrix(history, dtype=np.float64)
        scores = self.scores(history)
        out = history.toarray() > 0
        if banned is not None:
            out |= sp.csr_matrix(banned).toarray() > 0
        if self.after is None:
            cols = top_k_lists(scores, out, k)
        else:  # the columns before the others by score, then the others by score
            first = np.setdiff1d(np.arange(scores.shape[1]), self.after)
            cols = top_k_by_group([(scores[:, c], out[:, c], c) for c in (first, self.after)], k)
        values = np.take_along_axis(scores, np.maximum(cols, 0), 1)
        return cols, np.where(cols >= 0, values, 0.0)

    def top_k(self, user, k, cold=None, rated=(), search="auto", banned=None) -> list:
        md = self.md
        history = stages.seen_columns(md, stages.seen(md, user, rated))
        cols, values = self.lists(history, banned, k)
        return [(int(md.movie_ids[c]), {"score": float(v)}) for c, v in zip(cols[0], values[0]) if c >= 0]

    def ranker(self, search: str = "auto"):
        return lambda users, seen, k, banned=None: self.lists(seen, banned, k)[0]

    def pool(self, queries, seen, banned, n, search="auto") -> np.ndarray:
        return self.lists(seen, banned, n)[0]

    def pair_score(self, queries, users, cols, history) -> np.ndarray:
        """Its score of each pair from the user's history (the row of `history`)."""
        rows, back = np.unique(np.asarray(users), return_inverse=True)
        return self.scores(sp.csr_matrix(history, dtype=np.float64)[rows])[back, np.asarray(cols)]


class PopularityStage(ScoredStage):
    """Every user's list: the catalogue by its number of training ratings (the score), their own left out."""

    label = "popularity"
    describe = "popularity, score = number of training ratings"
    uses_history = False
    score = "number of training ratings of the movie; the same for every user"

    @classmethod
    def fit(cls, data: Interactions, **settings) -> dict[str, np.ndarray]:
        return {"rating_counts": np.bincount(data.train_col, minlength=len(data.catalogue)).astype(np.float32)}

    def scores(self, history: sp.csr_matrix) -> np.ndarray:
        counts = self.md.arrays["rating_counts"].astype(np.float64)
        return np.broadcast_to(counts, (history.shape[0], len(counts)))


class EaseStage(ScoredStage):
    """EASE (`recsys.topn.baselines.EASE`): a user's score of a movie is the sum of its item-item weights from
    the movies of their history. Past the `ease_items` most-rated movies, the rest rank after those by their
    number of ratings (which is then their score)."""

    label = "EASE"
    describe = "EASE, score = item-item weights from the history"
    score = (
        "sum of the EASE item-item weights into the movie from the user's rated movies; past the most-rated "
        "movies EASE covers, the movie's number of training ratings (those rank after the others)"
    )

    @classmethod
    def fit(
        cls, data: Interactions, ease_lambda: float = 500.0, ease_items: int = EASE_MAX_ITEMS, **settings
    ) -> dict[str, np.ndarray]:
        model = EASE(ease_lambda, ease_items).fit(data)
        return PopularityStage.fit(data) | {"ease_weights": model.b, "ease_keep": model.keep.astype(np.int64)}

    @functools.cached_property
    def weights(self) -> np.ndarray:
        """The item-item weights [K, K] of the kept movies, float64."""
        return self.md.arrays["ease_weights"].astype(np.float64)

    @functools.cached_property
    def after(self) -> np.ndarray | None:
        keep = self.md.arrays["ease_keep"]
        rest = np.setdiff1d(np.arange(len(self.md.movie_ids)), keep)
        return rest if len(rest) else None

    def scores(self, history: sp.csr_matrix) -> np.ndarray:
        keep = self.md.arrays["ease_keep"]
        out = np.broadcast_to(self.md.arrays["rating_counts"].astype(np.float64), history.shape).copy()
        out[:, keep] = history[:, keep] @ self.weights
        return out
