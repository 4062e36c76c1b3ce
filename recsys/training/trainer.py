"""The trainer: the network, its optimizer and the data, one `step` per batch of rating indices.

`recsys.train` runs its loop: the CLI, the splits, evaluation, checkpoints and the model dir.
"""

from __future__ import annotations

import numpy as np

from recsys import threads as recsys_threads
from recsys import topn
from recsys.data import history
from recsys.fused.optim import make_optimizer
from recsys.movielens import MovieLens
from recsys.rating.metrics import scores
from recsys.topn import first_stage, neighbours
from recsys.training.ranking import Candidates


def use_cpu_cores(threads: int | None = None) -> int:
    """Fix the number of threads of the math under training, and return it: `threads`, else one (batch 256's
    products are too small to share; see `recsys.threads`). A BLAS matmul's rounding depends on its thread count,
    so the count never comes from the environment or the cores: a checkpoint records it and `--resume` computes
    with the same count, bit for bit."""
    return recsys_threads.use(1 if threads is None else threads)


FIXED_BYTES = 1 << 27  # the ranking evaluation keeps at most this much of its unchanging inputs
EVAL_RATINGS = 200_000  # the retrieval cost is the full softmax's over at most this many ratings (a sample)
EVAL_CELLS = 1 << 31  # ... and at most this many ratings x movies (24,519 ratings at ml-32m's 87,585 movies)
EVAL_CHUNK = 1 << 16  # the rating objective's evaluation gathers the vectors of this many ratings at a time


class Trainer:
    """The network, its optimizer and the data; one `step` per batch of rating indices.

    `objective="rating"` is the chapter's regression; `"retrieval"` scores each batch's positives with a
    softmax over candidate movies (`negatives`: the whole catalogue, or the batch's own movies with the
    log-Q correction). The math runs on `threads` threads (default one: `use_cpu_cores`). With `world > 1`
    (inside `paddle.distributed.launch`) the network is wrapped in `paddle.DataParallel`, so gradients are
    averaged over the ranks before every update."""

    def __init__(
        self,
        data: MovieLens,
        lr: float = 0.2,
        sparse: bool = True,
        seed: int = 0,
        optimizer: str = "sgd",
        weight_decay: float = 0.0,
        cold_start_rate: float = 0.0,
        world: int = 1,
        objective: str = "rating",
        temperature: float = 0.05,
        negatives: str = "in-batch",
        with_history: bool = False,
        fused: bool = True,
        threads: int | None = None,
    ):
        import paddle

        from recsys.fused.step import FusedStep
        from recsys.model import RankingNet, RecommenderNet

        self.threads = use_cpu_cores(threads)
        paddle.seed(seed)
        self.data = data
        self.label = data.label
        self.net = (RankingNet if objective == "ranking" else RecommenderNet)(
            **data.sizes(), sparse=sparse, history=with_history
        )
        self.model = paddle.DataParallel(self.net) if world > 1 else self.net
        self.opt = make_optimizer(optimizer, self.net.parameters(), lr, weight_decay, sparse)
        covered = fused and world == 1 and FusedStep.covers(self.net)
        self.fused = FusedStep(self.net, self.opt) if covered else None  # None: the plain layers' step
        self.rng = np.random.RandomState(seed)
        self.cold_start_rate = cold_start_rate
        self.objective, self.temperature, self.negatives = objective, temperature, negatives
        self.catalogue = np.array(sorted(data.meta.movies), np.int64)
        self.column = np.full(data.sizes()["n_movies"], -1, np.int64)
        self.column[self.catalogue] = np.arange(len(self.catalogue))
        self.log_q = np.zeros(len(self.column), np.float32)  # log frequency of each movie among the positives
        self._catalogue_feeds = None  # the movie tower's feeds of the whole catalogue (full softmax)
        self._catalogue_arrays = None  # the same for the fused step
        self._vectors = None  # unit tower vectors of the current parameters, until the next change
        self.towers_learn = True  # False (`freeze_towers`): only a ranking network's head learns
        self._fixed: dict = {}  # ranking: evaluation inputs that no parameter changes (`_unchanging`)
        self.with_history = with_history
        self.feed_names = self.net.feed_names()
        self.nu, self.nm = self.net.user_tower.n_inputs, self.net.movie_tower.n_inputs
        # the users' histories, kept only where something reads them: those of evaluation and of the saved model
        # (every training rating, never a test rating), and what training reads (`use_history`)
        self.full_history = self.fit_history = None
        if with_history or objective == "ranking":
            self.full_history = self.fit_history = self._rows(np.flatnonzero(~data.is_test))
        self.history_cap = 0  # > 0: a training example reads at most this many movies of a longer history
        self.fit_candidates = self.candidates = None  # ranking: the retrieval model's candidates (fit, full)
        self.item_share, self.stage = 0.0, None  # retrieval: the first stage's item-item part (`fit_first_stage`)
        self.positive_weight, self.negatives_per_positive, self.hard_negatives = "stars", 4, 0.2

    def _rows(self, idx: np.ndarray) -> history.Histories:
        sizes = self.data.sizes()
        return history.Histories.of(sizes["n_users"], sizes["n_movies"], self.data.user[idx], self.data.movie[idx])

    def use_history(self, idx: np.ndarray) -> None:
        """Training histories come only from the ratings `idx` (not the held-out or validation ones)."""
        self.fit_idx = idx
        if self.full_history is not None:
            self.fit_history = self._rows(idx)

    def columns(self, idx: np.ndarray):
        """[U, M] sparse 0/1 over catalogue columns: the movies each user rated in the ratings `idx`."""
        cols = np.searchsorted(self.catalogue, self.data.movie[idx])
        return neighbours.history_matrix(self.data.sizes()["n_users"], len(self.catalogue), self.data.user[idx], cols)

    def fit_first_stage(self, share: float, n_neighbours: int) -> None:
        """Retrieval: the first stage's item-item weights (`recsys.topn.first_stage`), fitted on the ratings
        the model trains on (`use_history`), weighing `share` of the mix."""
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

    def sample_from(self, idx: np.ndarray) -> None:
        """Record how often each movie is a positive in the ratings `idx`: the in-batch sampling distribution."""
        counts = np.bincount(self.data.movie[idx], minlength=len(self.column)).astype(np.float64)
        with np.errstate(divide="ignore"):
            self.log_q = np.log(counts / max(counts.sum(), 1)).astype(np.float32)

    def features(self, idx: np.ndarray, training: bool = False, full: bool = False) -> dict[str, np.ndarray]:
        """The network's feeds (numpy) for the ratings `idx`: see `pair_features`."""
        return self.pair_features(self.data.user[idx], self.data.movie[idx], training, full)

    def pair_features(self, user: np.ndarray, movie: np.ndarray, training: bool = False, full: bool = False) -> dict:
        """The network's feeds (numpy) for aligned arrays of user and movie ids, and with history one more,
        `history` (sparse, see `recsys.data.history.Histories.sparse`): the training histories without the example's
        own movie (with `full`, every training rating, as evaluation and the saved model read them; in training,
        at most `history_cap` movies of each). In training, the share `cold_start_rate` of user ids is replaced
        by the unknown user 0."""
        f = self.data.tables.features(user, movie)
        if training and self.cold_start_rate:
            f["user_id"] = np.where(self.rng.random_sample(len(user)) < self.cold_start_rate, 0, f["user_id"])
        if self.with_history:
            cap = self.history_cap if training else 0
            f["history"] = (self.full_history if full else self.fit_history).sparse(user, movie, cap, self.rng)
        return f

    def tensors(self, f: dict) -> list:
        """The feeds `f` as the network's input tensors, in its argument order."""
        import paddle

        from recsys.model import History

        x = [paddle.to_tensor(f[n]) for n in self.feed_names]
        return x + ([History.tensors(f["history"])] if "history" in f else [])

    def feeds(self, idx: np.ndarray, training: bool = False, full: bool = True) -> list:
        """The network's input tensors for the ratings `idx` (see `pair_features`; training reads the training
        histories)."""
        return self.tensors(self.features(idx, training, full and not training))

    def fused_loss(self, idx: np.ndarray, f: dict[str, np.ndarray]):
        """The step on the ratings `idx` (feeds `f`) through `recsys.fused.step`: returns the loss, or None where
        the fused step does not apply."""
        from recsys.fused.step import in_batch
        from recsys.model import RankingNet

        if self.objective == "ranking":
            if not isinstance(self.net, RankingNet):
                return None
            pairs = self.ranking_pairs(idx, self.fit_candidates, self.rng, training=True)
            return self.fused.ranking(*pairs, towers=self.towers_learn)
        expected = set(self.feed_names) | ({"history"} if self.net.user_tower.history is not None else set())
        if self.objective not in ("rating", "retrieval") or set(f) != expected:
            return None
        x = self.fused.arrays(f)
        history = self.fused.history(f)
        if self.objective == "rating":
            return self.fused.rating(x, self.label[idx], history)
        if self.negatives == "in-batch":
            target, add = in_batch(self.data.movie[idx], self.log_q)
            return self.fused.softmax(x[: self.nu], x[self.nu :], target, self.temperature, add, history)
        if self._catalogue_arrays is None:
            self._catalogue_arrays = self.fused.arrays(self.data.tables.movie_features(self.catalogue))
        target = self.column[self.data.movie[idx]]
        return self.fused.softmax(x[: self.nu], self._catalogue_arrays, target, self.temperature, history=history)

    def freeze_towers(self) -> None:
        """From now on only the ranking network's head learns: the towers (and their vectors) stay as they are."""
        for name, p in self.net.named_parameters():
            p.stop_gradient = not name.startswith("head.")
        self.towers_learn = False
        self.vectors(unit=False)  # what every evaluation's pairs read, computed once, before the first epoch

    def step(self, idx: np.ndarray):
        """One optimizer step on the ratings `idx`; returns the batch's loss (a 0-d tensor, or a NumPy float from
        the fused step)."""
        f = None if self.objective == "ranking" else self.features(idx, training=True)
        loss = self.fused_loss(idx, f) if self.fused is not None else None  # it updates too
        if loss is None:
            loss = self.loss(idx, f)
            loss.backward()
            self.opt.step()
            self.opt.clear_grad()
        if self.towers_learn:  # else the tower vectors stay
            self._vectors = None
        return loss

    def loss(self, idx: np.ndarray, f: dict[str, np.ndarray]):
        """The loss of the ratings `idx` (feeds `f`) through the plain layers, recorded by autograd."""
        import paddle

        from recsys.model import in_batch_softmax_loss, rating_loss, softmax_loss

        if self.objective == "ranking":
            return self.ranking_loss(idx, self.fit_candidates, self.rng, training=True)
        x = self.tensors(f)
        if self.objective == "rating":
            return rating_loss(self.model(*x), paddle.to_tensor(self.label[idx]))
        if self.negatives == "full":
            if self._catalogue_feeds is None:
                f = self.data.tables.movie_features(self.catalogue)
                self._catalogue_feeds = [paddle.to_tensor(f[n]) for n in self.feed_names[self.nu :]]
            nu, nm = self.nu, self.nm
            user, movie = self.model(*x[:nu], *self._catalogue_feeds, *x[nu + nm :], towers=True)
            return softmax_loss(user, movie, paddle.to_tensor(self.column[self.data.movie[idx]]), self.temperature)
        user, movie = self.model(*x, towers=True)
        return in_batch_softmax_loss(user, movie, self.data.movie[idx], self.log_q, self.temperature)

    def ranking_loss(self, idx: np.ndarray, cand: Candidates, rng, training: bool = False):
        """The weighted logistic loss of the positives `idx` against `negatives_per_positive` drawn negatives
        each, scored with the candidates' retrieval scores (`cand`: training or evaluation histories)."""
        import paddle

        from recsys.model import weighted_logistic_loss

        f, features, label, weight = self.ranking_pairs(idx, cand, rng, training)
        logit = self.model(*self.tensors(f), paddle.to_tensor(features))
        return weighted_logistic_loss(logit, paddle.to_tensor(label[:, None]), paddle.to_tensor(weight[:, None]))

    def ranking_pairs(self, idx: np.ndarray, cand: Candidates, rng, training: bool = False):
        """The pairs `ranking_loss` scores: each positive of `idx`, then `negatives_per_positive` negatives drawn
        for each; returns their feeds, pair features [N, 3], 0/1 labels and weights [N]."""
        users, cols, features, label, weight = self.ranking_draws(idx, cand, rng)
        f = self.pair_features(users, self.catalogue[cols], training, full=cand is self.candidates)
        return f, features, label, weight

    def ranking_draws(self, idx: np.ndarray, cand: Candidates, rng):
        """`ranking_pairs`' users, catalogue columns, pair features, labels and weights (no feeds)."""
        user, per = self.data.user[idx], self.negatives_per_positive
        neg = cand.negatives(user, per, self.hard_negatives, rng)
        cols = np.concatenate([self.column[self.data.movie[idx]], np.maximum(neg, 0)])
        users = np.concatenate([user, np.repeat(user, per)])
        pos_w = self.data.stars[idx].astype(np.float32) if self.positive_weight == "stars" else np.ones(len(idx))
        weight = np.concatenate([pos_w, (neg >= 0).astype(np.float32)]).astype(np.float32)
        label = np.concatenate([np.ones(len(idx)), np.zeros(len(neg))]).astype(np.float32)
        return users, cols, cand.features(users, cols), label, weight

    def _pairs_loss(self, draw: tuple, full: bool) -> float:
        """The ranking loss of drawn pairs (see `ranking_draws`): with frozen towers, the head over the tower
        vectors of every user and movie (a pair's history is the user's whole one: neither a held-out or test
        positive nor a negative is in it); else through the fused towers, pair by pair."""
        from recsys.fused import layers  # with the network: Paddle

        users, cols, features, label, weight = draw
        if self.towers_learn:
            f = self.pair_features(users, self.catalogue[cols], full=full)
            return float(self.fused.ranking_loss(f, features, label, weight)[0])
        user_out, movie_out = self.vectors(unit=False, full=full)
        head = layers.plan(self.net.head)
        return float(layers.ranking_xent(head, user_out[users], movie_out, cols, features, label, weight)[0])

    def _unchanging(self, key: tuple, compute, n_bytes: int):
        """`compute()`, kept for later evaluations while all that is kept stays within `FIXED_BYTES`: the
        ranking evaluation's draws and pair features depend on the candidates and seeds, never on parameters."""
        if key not in self._fixed:
            out = compute()
            if n_bytes + sum(b for _out, b in self._fixed.values()) > FIXED_BYTES:
                return out
            self._fixed[key] = out, n_bytes
        return self._fixed[key][0]

    def predict(self, idx: np.ndarray, batch: int = 8192) -> np.ndarray:
        """Scores (label space) of the ratings `idx`, in large batches without gradients."""
        import paddle

        with paddle.no_grad():
            parts = [self.net(*self.feeds(idx[s : s + batch])).numpy() for s in range(0, len(idx), batch)]
        return np.concatenate(parts)[:, 0] if parts else np.zeros(0, np.float32)

    def vectors(self, unit: bool = True, full: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Tower vectors (unit length, or the raw outputs) of every user id, with the histories of every
        training rating (`full`) or of the training ones, and of the catalogue's movies (catalogue order),
        computed once per parameter state (an evaluation's cost and top-N metrics share them)."""
        from recsys.modeldir import tower_outputs

        key = (unit, full)
        if self._vectors is None:
            self._vectors = {}
        if key not in self._vectors:
            tables = self.data.tables
            feeds = tables.user_features(np.arange(len(tables.user)))
            histories = (self.full_history if full else self.fit_history) if self.with_history else None
            users = tower_outputs(self.net.user_tower, feeds, unit, histories=histories)
            self._vectors[key] = users, tower_outputs(self.net.movie_tower, tables.movie_features(self.catalogue), unit)
        return self._vectors[key]

    def evaluate(self, idx: np.ndarray, full: bool = True) -> dict[str, float]:
        """rating: the chapter's cost, RMSE and MAE; retrieval: the full-softmax cross-entropy of the ratings;
        ranking: the weighted logistic loss with negatives drawn by a fixed seed (the same every time)."""
        if self.objective == "rating":
            if self.with_history:
                return scores(self.predict(idx), self.label[idx, 0], self.data.lowest_rating())
            users, movies = self.vectors()  # 5 cos(user, movie) from each tower's outputs: one pass per user and movie
            user, col = self.data.user[idx], self.column[self.data.movie[idx]]
            cos = [  # row by row, a chunk of ratings at a time: never a [ratings, 200] copy of the vectors
                np.einsum("ij,ij->i", users[user[s : s + EVAL_CHUNK]], movies[col[s : s + EVAL_CHUNK]])
                for s in range(0, len(idx), EVAL_CHUNK)
            ]
            pred = 5.0 * (np.concatenate(cos) if cos else np.zeros(0, np.float32))
            return scores(pred, self.label[idx, 0], self.data.lowest_rating())
        if self.objective == "ranking":
            import paddle

            rng, cand = np.random.RandomState(12345), self.candidates if full else self.fit_candidates
            parts = [idx[s : s + 4096] for s in range(0, len(idx), 4096)]
            if self.fused is None and self.towers_learn:
                with paddle.no_grad():
                    losses = [float(self.ranking_loss(part, cand, rng)) for part in parts]
            else:  # the same loss in NumPy (far faster on the histories), on draws kept
                size = len(idx) * (1 + self.negatives_per_positive) * 36  # bytes of the users, columns, features...
                key = ("pairs", id(cand), hash(idx.tobytes()))
                draws = self._unchanging(key, lambda: [self.ranking_draws(p, cand, rng) for p in parts], size)
                losses = [self._pairs_loss(draw, full=cand is self.candidates) for draw in draws]
            total = sum(loss * len(part) for loss, part in zip(losses, parts))
            return {"cost": total / max(len(idx), 1)}
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
        """Full-ranking top-k metrics of the current towers (see `recsys.topn`); a ranking network reorders
        the retrieval model's candidates (the two stages)."""
        if self.objective != "ranking":
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
        users, movies = self.vectors(unit=False, full=full)
        cand = self.candidates if full else self.fit_candidates
        params = {f"head.{k}": v.numpy() for k, v in self.net.head.state_dict().items()}  # all `head_scores` reads

        def rank(u, _seen, k):
            pool = cand.pool[u]

            def features():
                return cand.features(np.repeat(u, pool.shape[1]), np.maximum(pool, 0).ravel()).reshape(*pool.shape, -1)

            f = self._unchanging(("pool", id(cand), hash(u.tobytes())), features, pool.size * 12)
            return topn.rerank_pool(pool, topn.head_scores(params, users[u][:, None], movies[pool], f), k)

        return topn.evaluate(rank, data, k)

    def saved_arrays(self) -> dict[str, np.ndarray]:
        """What a model dir keeps besides the network: a retrieval model's first-stage item-item weights and
        their beta; a ranking model's pair features' item-item weights and the movies' log shares of the
        ratings, both from every training rating (catalogue order)."""
        if self.objective == "retrieval" and self.stage is not None:
            w, beta = self.stage.by_row, self.first_stage(*self.vectors()).beta
            return {"item_item_indptr": w.indptr, "item_item_indices": w.indices, "item_item_data": w.data,
                    "first_stage_beta": np.float64(beta)}  # fmt: skip
        if self.objective != "ranking":
            return {}
        w = self.item_item
        return {
            "item_item_indptr": w.indptr, "item_item_indices": w.indices, "item_item_data": w.data,
            "log_share": self.candidates.log_share,
        }  # fmt: skip

    def params(self) -> dict[str, np.ndarray]:
        return {k: v.numpy().copy() for k, v in self.net.state_dict().items()}

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        import paddle

        self.net.set_state_dict({k: paddle.to_tensor(v) for k, v in params.items()})
        self._vectors = None

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimizer's state keyed by structured parameter names (stable across processes)."""
        by_name = {p.name: k for k, p in self.net.state_dict().items()}
        out = {}
        for key, value in self.opt.state_dict().items():
            if hasattr(value, "numpy"):
                owner = max((n for n in by_name if key.startswith(n + "_")), key=len, default=None)
                out[key if owner is None else by_name[owner] + "::" + key[len(owner) + 1 :]] = value.numpy()
        return out

    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        import paddle

        params = self.net.state_dict()
        restored = {}
        for key, value in state.items():
            owner, _, rest = key.partition("::")
            restored[f"{params[owner].name}_{rest}" if rest else key] = paddle.to_tensor(value)
        if restored:
            self.opt.set_state_dict(restored)
