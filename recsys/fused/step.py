"""The fused training step: loss, gradients and update of one batch through `recsys.fused.layers`, the chapter's
network written out by hand in NumPy on the parameters' own memory.

`FusedStep` builds a batch's arrays from the reader's (the movie tower runs once per distinct movie), and
updates through `recsys.fused.updates` (plain SGD and Adam in place, as Paddle's kernels; other optimizers from the
gradients set on the parameters). It runs on the CPU; elsewhere the trainer takes the plain layers.
"""

from __future__ import annotations

import numpy as np

from recsys.fused import loops as kernels
from recsys.fused.layers import (
    cos_mse,
    cos_mse_grad,
    movie_tower,
    movie_tower_grad,
    plan,
    ranking_xent,
    ranking_xent_grad,
    softmax_xent,
    softmax_xent_grad,
    title_windows,
    user_tower,
    user_tower_grad,
)
from recsys.fused.updates import Updater
from recsys.model import History, MovieTower, RankingHead, RankingNet, RecommenderNet, TextCNN, UserTower


def _parameters(net) -> frozenset[str]:
    """Every parameter the pieces compute with, by its state_dict name: the towers' (the user tower's with its
    features, and its history part when it has one)."""
    user = ["user", *net.user_tower.features]
    names = [f"user_tower.{f}_emb.weight" for f in user]
    names += [f"user_tower.{f}.{w}" for f in [*(f"{f}_fc" for f in user), "fc"] for w in ("weight", "bias")]
    names += [f"movie_tower.{f}.weight" for f in ("movie_emb", "category_emb", "title_cnn.embedding")]
    names += [f"movie_tower.{f}.{w}" for f in ("movie_fc", "title_cnn", "fc") for w in ("weight", "bias")]
    if net.user_tower.history is not None:
        names += ["user_tower.history.emb", "user_tower.history.fc.weight", "user_tower.history.fc.bias"]
    if isinstance(net, RankingNet):
        names += ["head.linear"] + [f"head.{f}.{w}" for f in ("fc", "out") for w in ("weight", "bias")]
    return frozenset(names)


class FusedStep:
    """Loss, gradients and update of one batch through the fused pieces, for a `RecommenderNet` as the chapter
    builds it (any user features, with or without the user's history; a movie tower with categories and
    titles) on the CPU; `covers` says whether a network is one; anything else trains through the plain layers."""

    def __init__(self, net: RecommenderNet, opt):
        self.net, self.opt = net, opt
        self.title_pad = net.movie_tower.title_cnn.pad
        self.user_keys = ["user_id"] + [f"{f}_id" for f in net.user_tower.features]
        self.nu = len(self.user_keys)  # the user tower's id inputs come first in `arrays`
        self.updater = Updater(opt)

    @staticmethod
    def covers(net) -> bool:
        """Whether `net` is the chapter's network (or its ranking network) on the CPU: these classes, and exactly
        the parameters the pieces use (the chapter's, or those and the history part's, and the ranking head's)."""
        if not (
            (type(net) is RecommenderNet or (type(net) is RankingNet and type(net.head) is RankingHead))
            and type(net.user_tower) is UserTower
            and type(net.movie_tower) is MovieTower
            and type(net.movie_tower.title_cnn) is TextCNN
            and net.movie_tower.category_emb is not None
            and type(net.user_tower.history) in (History, type(None))
        ):
            return False
        params = dict(net.named_parameters())
        return set(params) == _parameters(net) and all(p.place.is_cpu_place() for p in params.values())

    def arrays(self, f: dict[str, np.ndarray]) -> list:
        """The inputs of the feeds `f` (any of the user and movie parts): user_id and the user features' ids /
        the distinct movies, their category ids, title windows and each window's row, then each rating's row
        among the distinct movies (the movie tower runs once per distinct movie). The history is apart: see
        `history`."""
        out = [np.asarray(f[k], np.int64) for k in self.user_keys if k in f]
        if "movie_id" in f:
            movies, first, inverse = kernels.distinct(np.ascontiguousarray(f["movie_id"], np.int64))
            windows, rows = title_windows(f["movie_title"][first], self.title_pad)
            out += [movies, f["category_id"][first], windows, rows, inverse]
        return out

    @staticmethod
    def history(f: dict):
        """The feeds' history weights: dense [N, n_movies] float32, or the sparse (movie ids, batch rows,
        weights) arrays; None without them."""
        h = f.get("history")
        return h if h is None or isinstance(h, tuple) else h.astype(np.float32, copy=False)

    def forward(self, users: list, movies: list, history=None):
        """Both towers on the arrays of `arrays` (and the user tower's `history` weights); returns (user, movie,
        saved), the movie tower's rows being the distinct movies (`movies[4]` holds each rating's row)."""
        u, su = user_tower(plan(self.net.user_tower), *users, *([] if history is None else [history]))
        m, sm = movie_tower(plan(self.net.movie_tower), *movies[:4])
        return u, m, (su, sm)

    def backward(self, saved, d_user: np.ndarray, d_movie: np.ndarray) -> list:
        """Both towers' (parameter, gradient) pairs, from the gradients of their outputs."""
        grads: list = []
        user_tower_grad(saved[0], d_user, grads)
        movie_tower_grad(saved[1], d_movie, grads)
        return grads

    def update(self, grads: list) -> None:
        """The optimizer's step on `grads` (see `recsys.fused.updates`)."""
        self.updater.step(grads)

    def rating(self, x: list, label: np.ndarray, history=None) -> np.float32:
        """The chapter's step on the arrays `x` (from `arrays`), the labels [N, 1] and the `history` weights (None
        without); returns the loss."""
        loss, saved = self.rating_loss(x, label, history)
        self.update(self.rating_grads(saved))
        return loss

    def rating_loss(self, x: list, label: np.ndarray, history=None):
        """The chapter's loss and what `rating_grads` needs."""
        u, m, saved = self.forward(x[: self.nu], x[self.nu :], history)
        loss, head = cos_mse(u, m, x[self.nu + 4], label)  # x[nu + 4]: the movie tower's row of every rating
        return loss, (saved, head)

    def rating_grads(self, saved) -> list:
        towers, head = saved
        return self.backward(towers, *cos_mse_grad(head))

    def ranking(self, f: dict, features: np.ndarray, label: np.ndarray, weight: np.ndarray, towers: bool):
        """The ranking network's step on pairs: their feeds `f` (history included), `features` [N, F], 0/1
        `label` and `weight` [N] (`RankingTask.ranking_pairs`); the towers learn too where `towers` (by default only
        the head does: `RankingTask.freeze_towers`). Returns the loss."""
        loss, (saved, head) = self.ranking_loss(f, features, label, weight)
        grads: list = []
        d_u, d_m = ranking_xent_grad(head, grads, towers)
        if towers:
            grads += self.backward(saved, d_u, d_m)
        self.update(grads)
        return loss

    def ranking_loss(self, f: dict, features: np.ndarray, label: np.ndarray, weight: np.ndarray):
        """The ranking network's loss on pairs (see `ranking`) and what its gradients need."""
        x = self.arrays(f)
        u, m, saved = self.forward(x[: self.nu], x[self.nu :], self.history(f))
        loss, head = ranking_xent(plan(self.net.head), u, m, x[self.nu + 4], features, label, weight)
        return loss, (saved, head)

    def softmax(self, users: list, movies: list, target: np.ndarray, temperature: float, add=None, history=None):
        """The candidate-generation step: `softmax_xent` of the towers' arrays (from `arrays`, and the user
        tower's `history` weights; the candidates are the distinct movies of `movies`) with `target` [B] and
        `add` [C] (or None); returns the loss."""
        u, m, saved = self.forward(users, movies, history)
        loss, head = softmax_xent(u, m, target.ravel(), temperature, add)
        self.update(self.backward(saved, *softmax_xent_grad(head)))
        return loss


def in_batch(movie_ids: np.ndarray, log_freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`softmax_xent`'s target [B] and add [C] for `model.in_batch_softmax_loss`, with the batch's distinct
    movies (sorted, as `FusedStep.arrays` orders them) as the candidates. There every other rating of the batch
    is a negative of row i, corrected by log((B-1) q), and the other copies of row i's own movie are masked: a
    movie rated c times is one column here with log c added to its correction, and row i's own movie a column
    with no correction (exp(x) + exp(x) = exp(x + log 2); a copy of the positive contributes nothing)."""
    movies, target, counts = np.unique(movie_ids, return_inverse=True, return_counts=True)
    log_q = log_freq[movies] + np.float32(np.log(max(len(movie_ids) - 1, 1)))
    return target.ravel().astype(np.int64), np.log(counts).astype(np.float32) - log_q
