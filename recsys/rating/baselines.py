"""Rating baselines in numpy, fitted on the training split: global mean, user+item biases, and a small
biased matrix factorisation. Each predicts stars for (user id, movie id) pairs; ids unseen in training fall
back to the parts that are known (the mean, the other side's bias)."""

from __future__ import annotations

import numpy as np


class GlobalMean:
    """Every rating predicted as the mean training rating."""

    name = "global mean"

    def fit(self, user: np.ndarray, movie: np.ndarray, stars: np.ndarray) -> GlobalMean:
        self.mu = float(np.mean(stars))
        return self

    def predict(self, user: np.ndarray, movie: np.ndarray) -> np.ndarray:
        return np.full(len(user), self.mu, np.float32)


def _lookup(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """`table[ids]`, with zeros (rows of zeros) for ids beyond the table."""
    inside = ids < len(table)
    out = np.zeros((len(ids),) + table.shape[1:], table.dtype)
    out[inside] = table[ids[inside]]
    return out


class Biases(GlobalMean):
    """mean + user bias + movie bias, regularised least squares by alternating updates."""

    name = "user + movie biases"

    def __init__(self, reg_user: float = 15.0, reg_movie: float = 10.0, epochs: int = 10):
        self.reg_user, self.reg_movie, self.epochs = reg_user, reg_movie, epochs

    def fit(self, user, movie, stars) -> Biases:
        super().fit(user, movie, stars)
        n_u, n_m = int(user.max()) + 1, int(movie.max()) + 1
        r = stars.astype(np.float64) - self.mu
        cnt_u, cnt_m = np.bincount(user, minlength=n_u), np.bincount(movie, minlength=n_m)
        self.b_user, self.b_movie = np.zeros(n_u), np.zeros(n_m)
        for _ in range(self.epochs):
            self.b_movie = np.bincount(movie, r - self.b_user[user], n_m) / (cnt_m + self.reg_movie)
            self.b_user = np.bincount(user, r - self.b_movie[movie], n_u) / (cnt_u + self.reg_user)
        return self

    def predict(self, user, movie) -> np.ndarray:
        return (self.mu + _lookup(self.b_user, user) + _lookup(self.b_movie, movie)).astype(np.float32)


class MatrixFactorization(Biases):
    """mean + biases + <p_user, q_movie>, k factors, fitted by alternating ridge regressions (ALS)."""

    def __init__(self, k: int = 16, reg: float = 8.0, reg_bias: float = 5.0, epochs: int = 15, seed: int = 0):
        super().__init__(reg_bias, reg_bias, 10)
        self.k, self.reg, self.reg_bias, self.als_epochs, self.seed = k, reg, reg_bias, epochs, seed
        self.name = f"matrix factorisation (k={k}, ALS)"

    def fit(self, user, movie, stars) -> MatrixFactorization:
        super().fit(user, movie, stars)  # biases as the starting point
        rng = np.random.RandomState(self.seed)
        r = stars.astype(np.float64) - self.mu
        self.p = rng.normal(0, 0.1, (len(self.b_user), self.k))
        self.q = rng.normal(0, 0.1, (len(self.b_movie), self.k))
        by_user, by_movie = _groups(user), _groups(movie)
        for _ in range(self.als_epochs):
            self.p, self.b_user = self._solve(by_user, movie, r - self.b_movie[movie], self.q, len(self.b_user))
            self.q, self.b_movie = self._solve(by_movie, user, r - self.b_user[user], self.p, len(self.b_movie))
        return self

    def _solve(self, groups, other, target, factors, n) -> tuple[np.ndarray, np.ndarray]:
        """For each id: ridge regression of its ratings on [other side's factors, 1] -> (factors, bias)."""
        out, bias = np.zeros((n, self.k)), np.zeros(n)
        penalty = np.diag([self.reg] * self.k + [self.reg_bias])
        for i, rows in groups:
            x = np.hstack([factors[other[rows]], np.ones((len(rows), 1))])
            w = np.linalg.solve(x.T @ x + penalty, x.T @ target[rows])
            out[i], bias[i] = w[:-1], w[-1]
        return out, bias

    def predict(self, user, movie) -> np.ndarray:
        dot = np.einsum("nk,nk->n", _lookup(self.p, user), _lookup(self.q, movie))
        return (super().predict(user, movie) + dot).astype(np.float32)


def _groups(ids: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(id, row indices) for every id present, in id order."""
    order = np.argsort(ids, kind="stable")
    uniq, starts = np.unique(ids[order], return_index=True)
    return list(zip(uniq.tolist(), np.split(order, starts[1:])))
