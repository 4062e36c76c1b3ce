"""The candidate-generation objective (`--objective retrieval`): a softmax over movies of each liked movie."""

from __future__ import annotations

import numpy as np

from recsys import topn
from recsys.topn import first_stage, neighbours
from recsys.training.registry import register
from recsys.training.task import D, Task

EVAL_RATINGS = 200_000  # the cost is the full softmax's over at most this many ratings (a sample)
EVAL_CELLS = 1 << 31  # ... and at most this many ratings x movies (24,519 ratings at ml-32m's 87,585 movies)


@register("retrieval")
class RetrievalTask(Task):
    """The two towers score each batch's positives with a softmax over candidate movies, cos / `temperature`
    (`negatives`: the whole catalogue, or the batch's own movies with the log-Q correction). The first stage
    adds the item-item score of a user's history (`fit_first_stage`)."""

    legend = (
        "Test Loss: softmax cross-entropy of each liked test movie against the catalogue (lower is better); "
        "NDCG@10 and Recall@10: the top-10 lists against the liked test movies (higher is better)"
    )
    ranks = True
    serves_candidates = True  # a ranking network reorders its lists

    def __init__(self, data, temperature: float = D.temperature, negatives: str = D.negatives, **settings):
        super().__init__(data, **settings)
        self.temperature, self.negatives = temperature, negatives
        self.log_q = np.zeros(len(self.column), np.float32)  # log frequency of each movie among the positives
        self._catalogue_feeds = None  # the movie tower's feeds of the whole catalogue (full softmax)
        self._catalogue_arrays = None  # the same for the fused step
        self.item_share, self.stage = 0.0, None  # the first stage's item-item part (`fit_first_stage`)

    @classmethod
    def settings(cls, config) -> dict:
        return super().settings(config) | {"temperature": config.temperature, "negatives": config.negatives}

    def splits(self, config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = super().splits(config)
        self.fit_first_stage(config.item_share or 0.0, config.item_neighbours)
        return out

    def pairs_per_epoch(self, config, n_train: int) -> tuple[int, int]:
        """Each positive against the batch's movies (or the catalogue); each user against the catalogue."""
        per_user = len(self.catalogue)
        return n_train * (per_user if self.negatives == "full" else min(config.batch_size, per_user)), per_user

    def fit_first_stage(self, share: float, n_neighbours: int) -> None:
        """The first stage's item-item weights (`recsys.topn.first_stage`), fitted on the ratings the model
        trains on (`use_history`), weighing `share` of the mix."""
        self.item_share = share
        if share > 0:
            self.stage = first_stage.FirstStage.of(neighbours.fit(self.columns(self.fit_idx), n_neighbours))
            trained = self.columns(np.flatnonzero(~self.data.is_test))  # what a saved model's users rated
            self.item_spread = first_stage.item_spread(self.stage, trained)

    def first_stage(self, users: np.ndarray, movies: np.ndarray) -> first_stage.FirstStage | None:
        """The first stage of the unit vectors `users` [U, D] and `movies` [M, D]: its beta measured on them."""
        if self.stage is None:
            return None
        self.stage.beta = first_stage.beta_for(self.item_share, users, movies, self.item_spread)
        return self.stage

    def positives(self, idx: np.ndarray) -> None:
        """Record how often each movie is a positive in the ratings `idx`: the in-batch sampling distribution."""
        counts = np.bincount(self.data.movie[idx], minlength=len(self.column)).astype(np.float64)
        with np.errstate(divide="ignore"):
            self.log_q = np.log(counts / max(counts.sum(), 1)).astype(np.float32)

    def fused_step(self, idx: np.ndarray, x: list, history):
        from recsys.fused.step import in_batch

        if self.negatives == "in-batch":
            target, add = in_batch(self.data.movie[idx], self.log_q)
            return self.fused.softmax(x[: self.nu], x[self.nu :], target, self.temperature, add, history)
        if self._catalogue_arrays is None:
            self._catalogue_arrays = self.fused.arrays(self.data.tables.movie_features(self.catalogue))
        target = self.column[self.data.movie[idx]]
        return self.fused.softmax(x[: self.nu], self._catalogue_arrays, target, self.temperature, history=history)

    def loss(self, idx: np.ndarray, f: dict[str, np.ndarray]):
        import paddle

        from recsys.model import in_batch_softmax_loss, softmax_loss

        x = self.tensors(f)
        if self.negatives == "full":
            if self._catalogue_feeds is None:
                f = self.data.tables.movie_features(self.catalogue)
                self._catalogue_feeds = [paddle.to_tensor(f[n]) for n in self.feed_names[self.nu :]]
            nu, nm = self.nu, self.nm
            user, movie = self.model(*x[:nu], *self._catalogue_feeds, *x[nu + nm :], towers=True)
            return softmax_loss(user, movie, paddle.to_tensor(self.column[self.data.movie[idx]]), self.temperature)
        user, movie = self.model(*x, towers=True)
        return in_batch_softmax_loss(user, movie, self.data.movie[idx], self.log_q, self.temperature)

    def evaluate(self, idx: np.ndarray, full: bool = True) -> dict[str, float]:
        """The full-softmax cross-entropy of the ratings `idx` (a seeded sample of at most `EVAL_RATINGS`)."""
        users, movies = self.vectors(full=full)
        n = min(EVAL_RATINGS, EVAL_CELLS // len(movies))
        if len(idx) > n:  # a seeded sample, the same at every evaluation
            idx = np.sort(np.random.RandomState(len(idx)).choice(idx, n, replace=False))
        user, column = self.data.user[idx], self.column[self.data.movie[idx]]
        who, row = np.unique(user, return_inverse=True)  # a user's log-sum-exp is shared by their ratings
        lse, rows = np.empty(len(who)), max(16, min(4096, (1 << 24) // len(movies)))  # ~128 MB of logits at a time
        for s in range(0, len(who), rows):
            logits = (users[who[s : s + rows]] @ movies.T).astype(np.float64) / self.temperature
            top = logits.max(axis=1)
            lse[s : s + rows] = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        own = np.einsum("ij,ij->i", users[user], movies[column]).astype(np.float64) / self.temperature
        total = float((lse[row] - own).sum())
        return {"cost": total / max(len(idx), 1)}

    def top_n(self, data: topn.Interactions, k: int = 10, full: bool = True) -> dict[str, float]:
        """Full-ranking top-k metrics of the current towers and first stage."""
        users, movies = self.vectors(full=full)
        stage = self.first_stage(users, movies)

        def rank(u, seen, k):
            if stage is None:
                return first_stage.top_k(None, None, movies, users[u], seen, k)[0]

            def items():  # the histories' item-item scores: no parameter changes them
                return stage.items(seen)

            fixed = self._unchanging(("items", id(data), hash(u.tobytes())), items, seen.size * 8)
            return first_stage.top_k(stage, None, movies, users[u], seen, k, fixed)[0]

        return topn.evaluate(rank, data, k)

    def saved_arrays(self) -> dict[str, np.ndarray]:
        """The first stage's item-item weights and their beta."""
        if self.stage is None:
            return {}
        w, beta = self.stage.by_row, self.first_stage(*self.vectors()).beta
        return {"item_item_indptr": w.indptr, "item_item_indices": w.indices, "item_item_data": w.data,
                "first_stage_beta": np.float64(beta)}  # fmt: skip
