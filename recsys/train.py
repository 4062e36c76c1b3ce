"""Train the chapter's recommender and save the inference model: `python -m recsys.train [--use-cuda]`.

The chapter's recipe by default: SGD, learning rate 0.2, batch 256, 20 passes, sparse embedding updates,
mean square error on `rating*2-5`. `--objective retrieval` trains the same two towers as the chapter's
candidate-generation network instead: a softmax over the catalogue of each liked movie (Adam, 1e-3).
Batches come straight from the reader's arrays. The model dir is written after every epoch, with a
checkpoint that `--resume` continues from. Under `python -m paddle.distributed.launch` each rank trains on
its shard of every batch (data parallel).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from recsys import checkpoint, history, lock, movielens, stacking, topn
from recsys.errors import ArgumentParser, RecsysError, cli
from recsys.movielens import FEED_NAMES, MovieLens
from recsys.optim import make_optimizer

OBJECTIVES = ("rating", "retrieval", "ranking")
HOLDOUT = 0.1  # the retrieval model's default share of training ratings kept for a ranker


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = ArgumentParser(prog="python -m recsys.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--use-cuda", action="store_true", help="train on the GPU (needs paddlepaddle-gpu)")
    ap.add_argument("--dataset", default="ml-1m", choices=sorted(movielens.SPLITS), help="default: %(default)s")
    ap.add_argument(
        "--split",
        default="random",
        help="random: the chapter's 10%% rule; ml-100k: also u1..u5, ua, ub; NAME:val: NAME's validation split "
        "(a tenth of its training ratings as the test set)",
    )
    ap.add_argument("--data-dir", help="folder with the archive (zip or extracted); default $RECSYS_DATA_HOME")
    ap.add_argument("--model-dir", default="recommender_system.inference.model", help="default: %(default)s")
    ap.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="rating",
        help="rating: the chapter's regression on stars; retrieval: the candidate-generation softmax (top-N); "
        "ranking: the ranking network over a retrieval model's candidates (needs --candidates-from)",
    )
    ap.add_argument(
        "--history",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="feed the user tower the mean embedding of the movies the user rated in training "
        "(default: on for retrieval and ranking, off for rating: the chapter's network)",
    )
    ap.add_argument(
        "--epochs",
        type=int,
        help="passes over the training split (default: the chapter's PASS_NUM 20; retrieval 30; ranking 10)",
    )
    ap.add_argument("--batch-size", type=int, default=256, help="global batch size (default: %(default)s)")
    ap.add_argument("--lr", type=float, help="learning rate (default: 0.2 for sgd, 0.001 for adam, 0.05 ranking)")
    ap.add_argument("--seed", type=int, default=0, help="parameter initialisation and shuffling")
    ap.add_argument("--max-batches", type=int, default=0, help="stop after this many batches in all (0: no limit)")
    ap.add_argument("--eval-every", type=int, default=0, help="also evaluate every N batches (0: at epoch ends only)")
    ap.add_argument(
        "--sparse",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sparse embedding gradients, the chapter's IS_SPARSE (default: on in one process; off across ranks, "
        "where Paddle all-reduces dense gradients faster -- plain SGD gives the same numbers either way)",
    )
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoint in --model-dir")
    ap.add_argument(
        "--fused",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the fused training step (recsys.fused: same numbers, fewer ops); --no-fused: the plain layers",
    )
    recipe = ap.add_argument_group("recipe options (off by default: the chapter's recipe)")
    recipe.add_argument("--optimizer", choices=("sgd", "adam"), help="default: sgd (rating), adam (retrieval)")
    recipe.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        help="cosine: decay the learning rate towards 0 over the epochs (default: constant; retrieval cosine)",
    )
    recipe.add_argument(
        "--weight-decay",
        type=float,
        default=0.0,
        help="L2 penalty on every parameter (sgd) or decoupled weight decay (adam: AdamW)",
    )
    recipe.add_argument(
        "--val-ratio",
        type=float,
        default=0.0,
        help="carve this share of the training split as a validation slice; the saved model "
        "is then the epoch best on it",
    )
    recipe.add_argument(
        "--patience",
        type=int,
        default=0,
        help="with --val-ratio: stop after this many epochs without improvement (0: never)",
    )
    recipe.add_argument(
        "--cold-start-rate",
        type=float,
        default=0.0,
        help="share of training samples whose user id is replaced by the unknown-user id 0, "
        "so that users the model never saw get a meaningful vector",
    )
    retrieval = ap.add_argument_group("retrieval options (with --objective retrieval)")
    retrieval.add_argument(
        "--temperature", type=float, default=0.25, help="logits are cos(user, movie) / T (default: %(default)s)"
    )
    retrieval.add_argument(
        "--positive", type=int, default=4, help="training ratings of this many stars or more are the positives"
    )
    retrieval.add_argument(
        "--negatives",
        choices=("full", "in-batch"),
        default="in-batch",
        help="full: softmax over the whole catalogue every step; in-batch: the batch's other positives, "
        "log-Q corrected (default: %(default)s)",
    )
    retrieval.add_argument(
        "--holdout",
        type=float,
        default=HOLDOUT,
        help="leave this share of the training ratings out of training and of the histories, as the labels a "
        "ranking network learns from (default: %(default)s)",
    )
    ranking = ap.add_argument_group("ranking options (with --objective ranking)")
    ranking.add_argument(
        "--candidates-from", metavar="RETRIEVAL_DIR", help="the retrieval model whose candidates the ranker orders"
    )
    ranking.add_argument(
        "--candidates", type=int, default=100, help="the retrieval model's top N per user (default: %(default)s)"
    )
    ranking.add_argument(
        "--negatives-per-positive", type=int, default=4, help="negatives drawn per positive (default: %(default)s)"
    )
    ranking.add_argument(
        "--hard-negatives",
        type=float,
        default=0.5,
        help="share of the negatives drawn from the user's candidates, the rest from the catalogue "
        "(default: %(default)s)",
    )
    ranking.add_argument(
        "--train-towers",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="train the towers (copied from the retrieval model) with the head; default: only the head learns",
    )
    ranking.add_argument(
        "--positive-weight",
        choices=("stars", "one"),
        default="stars",
        help="weight of a positive in the logistic loss: its stars, or 1 (negatives weigh 1; default: %(default)s)",
    )
    args = ap.parse_args(argv)
    if args.candidates_from is not None:  # recorded as an absolute path: it names the same dir from anywhere
        args.candidates_from = str(Path(args.candidates_from).resolve())
    if args.resume:  # the recorded run's settings and data, unless given
        checkpoint.resume_settings(args, ap.given(argv), log=lambda msg: print(msg, file=sys.stderr))
    objective = args.objective
    adam = objective != "rating"
    if args.optimizer is None:
        args.optimizer = "adam" if adam else "sgd"
    if args.lr is None:  # the ranking network trains its head alone, on few labels: a larger step
        args.lr = (0.05 if objective == "ranking" else 0.001) if args.optimizer == "adam" else 0.2
    if args.epochs is None:
        args.epochs = {"rating": 20, "retrieval": 30, "ranking": 10}[objective]
    if args.lr_schedule is None:
        args.lr_schedule = "cosine" if adam else "constant"
    if args.history is None:
        args.history = objective != "rating"
    if objective != "retrieval":
        args.temperature = args.negatives = args.holdout = None
    if objective != "ranking":
        args.candidates_from = args.candidates = args.negatives_per_positive = None
        args.hard_negatives = args.positive_weight = args.train_towers = None
    if objective == "rating":
        args.positive = None  # not part of the chapter's recipe
    elif not 1 <= args.positive <= 5:
        ap.error("--positive must be 1..5")
    if objective == "retrieval" and not (args.temperature > 0 and 0 <= args.holdout < 1):
        ap.error("--temperature must be positive and --holdout in [0, 1)")
    if objective == "ranking":
        if args.candidates_from is None:
            ap.error("--objective ranking needs --candidates-from RETRIEVAL_DIR")
        if args.candidates < 1 or args.negatives_per_positive < 1 or not 0 <= args.hard_negatives <= 1:
            ap.error("--candidates and --negatives-per-positive must be at least 1, --hard-negatives in [0, 1]")
    if args.sparse is None:
        args.sparse = int(os.environ.get("PADDLE_TRAINERS_NUM") or 1) == 1
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr <= 0 or args.max_batches < 0 or args.eval_every < 0:
        ap.error("--lr must be positive, --max-batches and --eval-every not negative")
    if not (0 <= args.val_ratio < 1 and 0 <= args.cold_start_rate < 1) or args.weight_decay < 0 or args.patience < 0:
        ap.error("--val-ratio and --cold-start-rate must be in [0, 1), --weight-decay and --patience not negative")
    if args.patience and not args.val_ratio:
        ap.error("--patience needs a validation slice: give --val-ratio")
    if args.optimizer == "adam" and args.weight_decay and args.sparse:
        ap.error("--optimizer adam with --weight-decay needs dense embedding gradients: add --no-sparse")
    return args


def set_device(use_cuda: bool) -> None:
    import paddle

    if use_cuda and not paddle.is_compiled_with_cuda():
        raise RecsysError("this Paddle build has no CUDA; install paddlepaddle-gpu")
    if use_cuda and paddle.device.cuda.device_count() == 0:
        raise RecsysError("this Paddle build has CUDA but no GPU is visible")
    paddle.set_device("gpu" if use_cuda else "cpu")


def use_cpu_cores(share: int = 1) -> None:
    """Let Paddle's CPU math use this process's cores (at most 4; small matmuls gain nothing beyond), split
    between `share` processes. Paddle's default is one thread; an OMP_NUM_THREADS set by the user wins."""
    import paddle

    if "OMP_NUM_THREADS" in os.environ or not hasattr(paddle.base.core, "set_num_threads"):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    paddle.base.core.set_num_threads(max(1, min(4, cores // share)))


def scores(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Chapter-scale cost (mean square error on 2*stars-5) and RMSE / MAE in stars, predictions clipped to 1..5."""
    stars_pred = np.clip((pred + 5) / 2, 1, 5)
    stars = (label + 5) / 2
    return {
        "cost": float(np.mean((pred - label) ** 2)),
        "rmse": float(np.sqrt(np.mean((stars_pred - stars) ** 2))),
        "mae": float(np.mean(np.abs(stars_pred - stars))),
    }


class Trainer:
    """The network, its optimizer and the data; one `step` per batch of rating indices.

    `objective="rating"` is the chapter's regression; `"retrieval"` scores each batch's positives with a
    softmax over candidate movies (`negatives`: the whole catalogue, or the batch's own movies with the
    log-Q correction). With `world > 1` (inside `paddle.distributed.launch`) the network is wrapped in
    `paddle.DataParallel`, so gradients are averaged over the ranks before every update."""

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
    ):
        import paddle

        from recsys.fused import FusedStep
        from recsys.model import RankingNet, RecommenderNet

        use_cpu_cores(share=world)
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
        self._catalogue_tensors = None  # the same for the fused step
        self._vectors = None  # unit tower vectors of the current parameters, until the next change
        self.with_history = with_history
        # users x movies 0/1 rows, kept only where something reads them: the histories of evaluation and of the
        # saved model (every training rating, never a test rating), and what training reads (`use_history`)
        self.full_history = self.fit_history = None
        if with_history or objective == "ranking":
            self.full_history = self.fit_history = self._rows(np.flatnonzero(~data.is_test))
        self.fit_candidates = self.candidates = None  # ranking: the retrieval model's candidates (fit, full)
        self.positive_weight, self.negatives_per_positive, self.hard_negatives = "stars", 4, 0.5

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        sizes = self.data.sizes()
        return history.history_rows(sizes["n_users"], sizes["n_movies"], self.data.user[idx], self.data.movie[idx])

    def use_history(self, idx: np.ndarray) -> None:
        """Training histories come only from the ratings `idx` (not the held-out or validation ones)."""
        self.fit_idx = idx
        if self.full_history is not None:
            self.fit_history = self._rows(idx)

    def sample_from(self, idx: np.ndarray) -> None:
        """Record how often each movie is a positive in the ratings `idx`: the in-batch sampling distribution."""
        counts = np.bincount(self.data.movie[idx], minlength=len(self.column)).astype(np.float64)
        with np.errstate(divide="ignore"):
            self.log_q = np.log(counts / max(counts.sum(), 1)).astype(np.float32)

    def features(self, idx: np.ndarray, training: bool = False, full: bool = False) -> dict[str, np.ndarray]:
        """The network's feeds (numpy) for the ratings `idx`: see `pair_features`."""
        return self.pair_features(self.data.user[idx], self.data.movie[idx], training, full)

    def pair_features(self, user: np.ndarray, movie: np.ndarray, training: bool = False, full: bool = False) -> dict:
        """The network's seven feeds (numpy) for aligned arrays of user and movie ids, and with history an eighth,
        `history`: the training histories without the example's own movie (with `full`, every training rating,
        as evaluation and the saved model read them). In training, the share `cold_start_rate` of user ids is
        replaced by the unknown user 0."""
        f = self.data.tables.features(user, movie)
        if training and self.cold_start_rate:
            f["user_id"] = np.where(self.rng.random_sample(len(user)) < self.cold_start_rate, 0, f["user_id"])
        if self.with_history:
            rows = (self.full_history if full else self.fit_history)[user]
            f["history"] = history.history_weights(rows, leave_out=movie)
        return f

    @staticmethod
    def tensors(f: dict[str, np.ndarray]) -> list:
        """The feeds `f` as the network's input tensors, in its argument order."""
        import paddle

        return [paddle.to_tensor(f[n]) for n in FEED_NAMES] + (
            [paddle.to_tensor(f["history"])] if "history" in f else []
        )

    def feeds(self, idx: np.ndarray, training: bool = False, full: bool = True) -> list:
        """The network's input tensors for the ratings `idx` (see `pair_features`; training reads the training
        histories)."""
        return self.tensors(self.features(idx, training, full and not training))

    def fused_loss(self, idx: np.ndarray, f: dict[str, np.ndarray]):
        """The step on the ratings `idx` (feeds `f`) through `recsys.fused`: returns the loss, or None where
        the fused step does not apply."""
        from recsys.fused import in_batch

        if self.objective not in ("rating", "retrieval") or set(f) != set(FEED_NAMES):
            return None
        x = self.fused.tensors(f)
        if x is None:
            return None
        if self.objective == "rating":
            return self.fused.rating(x, self.label[idx])
        if self.negatives == "in-batch":
            target, add = in_batch(self.data.movie[idx], self.log_q)
            return self.fused.softmax(x[:4], x[4:], target, self.temperature, add)
        if self._catalogue_tensors is None:
            self._catalogue_tensors = self.fused.tensors(self.data.tables.movie_features(self.catalogue))
        target = self.column[self.data.movie[idx]]
        return self.fused.softmax(x[:4], self._catalogue_tensors, target, self.temperature)

    def step(self, idx: np.ndarray):
        """One optimizer step on the ratings `idx`; returns the batch's loss as a 0-d tensor."""
        f = None if self.objective == "ranking" else self.features(idx, training=True)
        loss = self.fused_loss(idx, f) if self.fused is not None and f is not None else None  # it updates too
        if loss is None:
            loss = self.loss(idx, f)
            loss.backward()
            self.opt.step()
            self.opt.clear_grad()
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
                self._catalogue_feeds = [paddle.to_tensor(f[n]) for n in FEED_NAMES[4:]]
            user, movie = self.model(*x[:4], *self._catalogue_feeds, *x[7:], towers=True)
            return softmax_loss(user, movie, paddle.to_tensor(self.column[self.data.movie[idx]]), self.temperature)
        user, movie = self.model(*x, towers=True)
        return in_batch_softmax_loss(user, movie, self.data.movie[idx], self.log_q, self.temperature)

    def ranking_loss(self, idx: np.ndarray, cand: stacking.Candidates, rng, training: bool = False):
        """The weighted logistic loss of the positives `idx` against `negatives_per_positive` drawn negatives
        each, scored with the candidates' retrieval scores (`cand`: training or evaluation histories)."""
        import paddle

        from recsys.model import weighted_logistic_loss

        user, per = self.data.user[idx], self.negatives_per_positive
        neg = cand.negatives(user, per, self.hard_negatives, rng)
        cols = np.concatenate([self.column[self.data.movie[idx]], np.maximum(neg, 0)])
        users = np.concatenate([user, np.repeat(user, per)])
        pos_w = self.data.stars[idx].astype(np.float32) if self.positive_weight == "stars" else np.ones(len(idx))
        weight = np.concatenate([pos_w, (neg >= 0).astype(np.float32)]).astype(np.float32)[:, None]
        label = np.concatenate([np.ones(len(idx)), np.zeros(len(neg))]).astype(np.float32)[:, None]
        x = self.tensors(self.pair_features(users, self.catalogue[cols], training, full=cand is self.candidates))
        logit = self.model(*x, paddle.to_tensor(cand.features(users, cols)))
        return weighted_logistic_loss(logit, paddle.to_tensor(label), paddle.to_tensor(weight))

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
            if self.with_history:
                feeds["history"] = history.history_weights(self.full_history if full else self.fit_history)
            users = tower_outputs(self.net.user_tower, feeds, unit)
            self._vectors[key] = users, tower_outputs(self.net.movie_tower, tables.movie_features(self.catalogue), unit)
        return self._vectors[key]

    def evaluate(self, idx: np.ndarray, full: bool = True) -> dict[str, float]:
        """rating: the chapter's cost, RMSE and MAE; retrieval: the full-softmax cross-entropy of the ratings;
        ranking: the weighted logistic loss with negatives drawn by a fixed seed (the same every time)."""
        if self.objective == "rating":
            return scores(self.predict(idx), self.label[idx, 0])
        if self.objective == "ranking":
            import paddle

            rng, cand, total = np.random.RandomState(12345), self.candidates if full else self.fit_candidates, 0.0
            with paddle.no_grad():
                for s in range(0, len(idx), 4096):
                    total += float(self.ranking_loss(idx[s : s + 4096], cand, rng)) * len(idx[s : s + 4096])
            return {"cost": total / max(len(idx), 1)}
        users, movies = self.vectors(full=full)
        total = 0.0
        for s in range(0, len(idx), 4096):
            part = idx[s : s + 4096]
            logits = (users[self.data.user[part]] @ movies.T).astype(np.float64) / self.temperature
            top = logits.max(axis=1)
            lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
            total += float((lse - logits[np.arange(len(part)), self.column[self.data.movie[part]]]).sum())
        return {"cost": total / max(len(idx), 1)}

    def top_n(self, data: topn.Interactions, k: int = 10, full: bool = True) -> dict[str, float]:
        """Full-ranking top-k metrics of the current towers (see `recsys.topn`); a ranking network reorders
        the retrieval model's candidates (the two stages)."""
        if self.objective != "ranking":
            users, movies = self.vectors(full=full)
            return topn.evaluate(topn.by_score(lambda u: users[u] @ movies.T), data, k)
        users, movies = self.vectors(unit=False, full=full)
        cand, params = self.candidates if full else self.fit_candidates, self.params()

        def rank(u, _seen, k):
            pool = cand.pool[u]
            rows = np.repeat(u, pool.shape[1])
            f = cand.features(rows, np.maximum(pool, 0).ravel()).reshape(*pool.shape, -1)
            return topn.rerank_pool(pool, stacking.head_scores(params, users[u][:, None], movies[pool], f), k)

        return topn.evaluate(rank, data, k)

    def saved_arrays(self) -> dict[str, np.ndarray]:
        """What a ranking model dir keeps besides the network: its pair features' item-item weights and the
        movies' log shares of the ratings, both from every training rating (catalogue order)."""
        if self.objective != "ranking":
            return {}
        return {"item_item": self.item_item, "log_share": self.candidates.log_share}

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


def split_indices(data: MovieLens, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training, validation (carved from the training split, never the test split) and test rating indices."""
    train_idx, test_idx = np.flatnonzero(~data.is_test), np.flatnonzero(data.is_test)
    if len(train_idx) == 0 or len(test_idx) == 0:
        which = "training" if len(train_idx) == 0 else "test"
        raise RecsysError(f"{data.source}: the {data.split} split leaves no {which} ratings")
    n_val = int(round(len(train_idx) * val_ratio))
    carve = np.random.RandomState(seed + 1).permutation(train_idx)
    return np.sort(carve[n_val:]), np.sort(carve[:n_val]), test_idx


def check_environment() -> None:
    """Refuse, before any training, a setting under which the model could not be saved."""
    if os.environ.get("FLAGS_enable_pir_api", "").strip().lower() in ("0", "false", "off"):
        raise RecsysError(
            "FLAGS_enable_pir_api=0 is set: under the legacy IR Paddle cannot save the inference model "
            "(paddle.jit.save); unset FLAGS_enable_pir_api and train again"
        )


def train(args: argparse.Namespace, data: MovieLens, log=print, on_eval=None) -> tuple[Trainer, list[dict]]:
    """Run the training loop; save the model dir (with a checkpoint) after every epoch.

    `log` gets the chapter's lines; `on_eval(metrics)`, if given, runs after every evaluation (live plots).
    Only one process at a time may train into a model dir. Returns the trainer and the metrics."""
    import paddle.distributed as dist

    check_environment()
    with lock.locked(args.model_dir) if dist.get_rank() == 0 else contextlib.nullcontext():
        return _train(args, data, log, on_eval)


def _train(args: argparse.Namespace, data: MovieLens, log, on_eval) -> tuple[Trainer, list[dict]]:
    import paddle.distributed as dist
    from tqdm import tqdm

    world, rank = dist.get_world_size(), dist.get_rank()
    if args.batch_size % world:
        raise RecsysError(f"--batch-size {args.batch_size} must be a multiple of the {world} ranks")
    lead = rank == 0  # only rank 0 logs, evaluates the test split and writes the model dir
    if not lead:
        log, on_eval = (lambda _msg: None), None
    top_n = args.objective != "rating"
    t = Trainer(
        data, args.lr, args.sparse, args.seed, args.optimizer, args.weight_decay, args.cold_start_rate, world,
        args.objective, args.temperature, args.negatives, args.history, args.fused,
    )  # fmt: skip
    if args.objective == "ranking":
        train_idx, val_idx, test_idx = stacking.prepare(t, args, data)
    else:
        train_idx, val_idx, test_idx = split_indices(data, args.val_ratio, args.seed)
        held = stacking.holdout_mask(len(data.user), train_idx, args.holdout or 0.0, args.seed)
        train_idx = train_idx[~held[train_idx]]
        t.use_history(train_idx)
    ranking = val_ranking = None
    if top_n:  # the positives of each split; the top-N metrics rank against the whole training split
        ranking = topn.Interactions.build(t.catalogue, data.user, data.movie, data.stars, data.is_test)
        if len(val_idx):  # validation: ranked against the ratings the model trains on, scored on the slice
            fit = np.zeros(len(data.user), bool)
            fit[val_idx] = fit[t.fit_idx if args.objective == "ranking" else train_idx] = True
            is_val = np.zeros(len(data.user), bool)
            is_val[val_idx] = True
            val_ranking = topn.Interactions.build(
                t.catalogue, data.user[fit], data.movie[fit], data.stars[fit], is_val[fit], args.positive
            )
        train_idx, val_idx, test_idx = (i[data.stars[i] >= args.positive] for i in (train_idx, val_idx, test_idx))
        if not len(train_idx) or not len(test_idx):
            which = "training" if not len(train_idx) else "test"
            raise RecsysError(f"the {data.split} split has no {which} ratings of {args.positive} stars or more")
        t.sample_from(train_idx)
    skip = ("data_dir", "model_dir", "resume", "use_cuda", "fused")  # where and how, not what was trained
    settings = {k: v for k, v in vars(args).items() if k not in skip}
    if args.objective == "ranking":  # the retrieval model it reorders: its parameters' hash
        settings["candidates_params_sha256"] = t.retrieval_fingerprint
    pr, best_params = checkpoint.restore(args, t) if args.resume else (checkpoint.Progress(), None)
    best_params = best_params if len(val_idx) else None
    if pr.epoch >= args.epochs or (args.patience and pr.epoch - pr.best_epoch >= args.patience):
        more = "" if pr.epoch < args.epochs else f" (--resume --epochs N above {pr.epoch} trains on)"
        log(f"{args.model_dir}: training already finished at epoch {pr.epoch}{more}")
        return t, pr.metrics
    total = args.max_batches or math.inf
    start = time.perf_counter() - (pr.metrics[-1]["seconds"] if pr.metrics else 0.0)
    since = {"cost": 0.0, "n": 0, "samples": 0, "seconds": 0.0}

    def evaluate(epoch: int, batch: int) -> dict:
        record = {"epoch": epoch, "batch": batch, "step": pr.step}
        record["train_cost"] = since["cost"] / max(since["n"], 1)
        if len(val_idx):  # every rank: early stopping must decide alike everywhere
            record.update({f"val_{k}": v for k, v in t.evaluate(val_idx, full=False).items() if k != "mae"})
        if lead:
            record.update({f"test_{k}": v for k, v in t.evaluate(test_idx).items()})
            if top_n:
                top = t.top_n(ranking)
                record.update({f"test_{k}@10": top[k] for k in ("precision", "recall", "ndcg", "hr")})
                if val_ranking is not None:
                    record["val_ndcg@10"] = t.top_n(val_ranking, full=False)["ndcg"]
        if not all(math.isfinite(x) for x in record.values()):
            raise RecsysError(
                f"got NaN loss at epoch {epoch}, batch {batch}; training failed (try a smaller --lr); "
                f"{args.model_dir} keeps the last good model"
            )
        record["samples_per_s"] = since["samples"] * world / max(since["seconds"], 1e-9)
        record["seconds"] = time.perf_counter() - start
        pr.metrics.append(record)
        since.update(cost=0.0, n=0, samples=0, seconds=0.0)
        if not lead:
            return record
        log(f"EpochID {epoch}, BatchID {batch}, Test Loss {record['test_cost']:0.2}  ({_summary(record)})")
        if on_eval is not None:
            on_eval(pr.metrics)
        return record

    per_rank = args.batch_size // world
    for epoch in range(pr.epoch + 1, args.epochs + 1):
        if args.lr_schedule == "cosine":
            t.opt.set_lr(args.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / args.epochs)))
        order = t.rng.permutation(train_idx)  # the same on every rank (same seed); each takes its share
        order = order[: len(order) - len(order) % world][rank::world] if world > 1 else order
        n_batches = min(math.ceil(len(order) / per_rank), total - pr.step)
        if n_batches <= 0:
            break
        bar = tqdm(range(n_batches), desc=f"epoch {epoch}", unit="batch", leave=False, disable=None if lead else True)
        tick = time.perf_counter()
        for b in bar:
            idx = order[b * per_rank : (b + 1) * per_rank]
            since["cost"] += float(t.step(idx))
            since["n"] += 1
            since["samples"] += len(idx)
            pr.step += 1
            if lead and args.eval_every and pr.step % args.eval_every == 0 and b + 1 < n_batches:
                since["seconds"] += time.perf_counter() - tick
                evaluate(epoch, b + 1)
                tick = time.perf_counter()
        bar.close()
        since["seconds"] += time.perf_counter() - tick
        record = evaluate(epoch, n_batches)
        complete = b + 1 == math.ceil(len(order) / per_rank)  # --max-batches may end an epoch early
        if complete:
            pr.epoch = epoch
            if len(val_idx) and record["val_cost"] < pr.best_cost:
                pr.best_cost, pr.best_epoch, best_params = record["val_cost"], epoch, t.params()
        stop = pr.step >= total or (args.patience and epoch - pr.best_epoch >= args.patience)
        if lead:
            checkpoint.save(args, t, data, settings, pr, best_params, complete)
        if stop:
            if args.patience and epoch - pr.best_epoch >= args.patience:
                log(f"early stop: no better validation cost since epoch {pr.best_epoch}")
            break
    if lead:
        best = best_params is not None
        rec = [m for m in pr.metrics if m["epoch"] == pr.best_epoch][-1] if best else pr.metrics[-1]
        log(
            f"saved {Path(args.model_dir).resolve()}: epoch {rec['epoch']}, batch {rec['batch']}"
            f"{' (best on validation)' if best else ''}, test cost {rec['test_cost']:.4f}, "
            f"{_summary(rec, long=True)}; {pr.metrics[-1]['seconds']:.1f} s"
        )
    return t, pr.metrics


def _summary(record: dict, long: bool = False) -> str:
    """The evaluation's figures besides the test cost, for the log line."""
    if long:
        return (
            f"NDCG@10 {record['test_ndcg@10']:.4f}"
            if "test_ndcg@10" in record
            else f"RMSE {record['test_rmse']:.4f} stars"
        )
    val = f", validation {record['val_cost']:.3f}" if "val_cost" in record else ""
    if "test_ndcg@10" in record:
        return (
            f"train {record['train_cost']:.3f}{val}, NDCG@10 {record['test_ndcg@10']:.3f}, "
            f"Recall@10 {record['test_recall@10']:.3f}"
        )
    return f"train {record['train_cost']:.3f}{val}, RMSE {record['test_rmse']:.3f} stars, MAE {record['test_mae']:.3f}"


@cli
def main(argv: list[str] | None = None) -> int:
    import paddle.distributed as dist
    from tqdm import tqdm

    args = parse_args(argv)
    check_environment()
    set_device(args.use_cuda)
    if int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1:
        dist.init_parallel_env()
    data = movielens.load(args.dataset, args.data_dir, args.split)
    n_test = int(data.is_test.sum())
    if dist.get_rank() == 0:
        tqdm.write(
            f"{data.meta.dataset} from {data.source}: {len(data.user) - n_test} training and {n_test} test ratings"
        )
    train(args, data, tqdm.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
