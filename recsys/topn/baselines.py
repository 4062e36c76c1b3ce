"""The two NumPy top-N baselines: popularity and EASE (a closed-form item-item model)."""

from __future__ import annotations

import numpy as np

from recsys import threads
from recsys.topn.lists import by_score, top_k_by_group
from recsys.topn.metrics import Interactions


class Popularity:
    """Every user gets the whole catalogue ordered by number of training ratings (ties: smaller movie id)."""

    name = "popularity"

    def fit(self, data: Interactions) -> Popularity:
        self.counts = np.bincount(data.train_col, minlength=len(data.catalogue)).astype(np.float32)
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(users), len(self.counts)))

    def ranker(self):
        """`(user ids, seen, k) -> top-k columns` (see `evaluate`)."""
        return by_score(self.scores)


EASE_MAX_ITEMS = 10_000  # EASE's item-item matrix covers at most this many of the most-rated movies


def most_rated(counts: np.ndarray, n: int) -> np.ndarray:
    """The columns of the `n` largest `counts` (ties: the smaller column), ascending."""
    return np.sort(np.lexsort((np.arange(len(counts)), -counts))[:n])


def cooccurrence(indptr: np.ndarray, cols: np.ndarray, n_cols: int, dense_from: int | None = None) -> np.ndarray:
    """X'X [n_cols, n_cols] float64 of the 0/1 rows given as CSR (columns >= 0, distinct within a row): rows
    with `dense_from` (default: n_cols / 30, where the two cost about the same) or more entries go through
    matrix products, the others through their pairs' counts."""
    dense_from = max(32, n_cols // 30) if dense_from is None else dense_from
    gram = np.zeros((n_cols, n_cols), np.float64)
    length = np.diff(indptr)
    heavy, light = np.flatnonzero(length >= dense_from), np.flatnonzero((length > 0) & (length < dense_from))
    for s in range(0, len(heavy), 256):
        rows = heavy[s : s + 256]
        x = np.zeros((len(rows), n_cols), np.float32)
        for i, r in enumerate(rows):
            x[i, cols[indptr[r] : indptr[r + 1]]] = 1
        for c in range(0, n_cols, 4096):  # exact: integer counts below 2**24
            gram[:, c : c + 4096] += x.T @ x[:, c : c + 4096]
    flat = gram.reshape(-1)
    budget, s = 8_000_000, 0  # pairs per step
    while s < len(light):
        n_pairs = np.cumsum(length[light[s:]] ** 2)
        e = s + max(1, int(np.searchsorted(n_pairs, budget, side="right")))
        rows = light[s:e]
        lens = length[rows]
        at = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(indptr[rows], lens)
        c, rep = cols[at], np.repeat(lens, lens)
        first = np.repeat(c, rep)  # each entry paired with every entry of its row
        group = np.repeat(np.cumsum(lens) - lens, lens)  # row start within `c`, per entry
        second = c[np.arange(int(rep.sum())) - np.repeat(np.cumsum(rep) - rep, rep) + np.repeat(group, rep)]
        np.add.at(flat, first * n_cols + second, 1.0)
        s = e
    return gram


def _invert_in_place(a: np.ndarray, block: int = 1024) -> np.ndarray:
    """Overwrite the symmetric positive definite `a` (C order) with its inverse: LAPACK's Cholesky inverse
    (potrf, then potri: half the work of an LU inverse), on `a`'s own memory, then the triangle it leaves
    mirrored a block at a time."""
    from scipy.linalg import lapack

    n = len(a)
    f = a.T  # Fortran order on the same memory; its lower triangle is `a`'s upper one
    _c, info = lapack.dpotrf(f, lower=1, overwrite_a=1, clean=0)
    if info == 0:
        _c, info = lapack.dpotri(f, lower=1, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"the item-item matrix is not positive definite (LAPACK info {info})")
    for s in range(0, n, block):  # the inverse is in `a`'s upper triangle: mirror it to the lower
        e = min(n, s + block)
        diag = a[s:e, s:e]
        diag[:] = np.triu(diag) + np.triu(diag, 1).T
        a[e:, s:e] = a[s:e, e:].T
    return a


def _weights_from_gram(gram: np.ndarray, lam: float) -> np.ndarray:
    """EASE's weights from X'X (float64, overwritten): [M, M] float32 on the gram's own memory."""
    gram[np.diag_indices_from(gram)] += lam
    p = _invert_in_place(gram)  # P; B = -P / diag(P)
    p /= -np.diag(p).copy()[None, :]
    p[np.diag_indices_from(p)] = 0.0
    n = len(p)
    out = p.reshape(-1).view(np.float32)[: n * n]  # float32 rows written over float64 rows already read
    for s in range(0, n, 1024):
        out[s * n : min(n, s + 1024) * n] = p[s : s + 1024].astype(np.float32).reshape(-1)
    return out.reshape(n, n)


def ease_weights(x: np.ndarray, lam: float) -> np.ndarray:
    """EASE's item-item weights for 0/1 rows `x` [U, M] (see `EASE`): [M, M] float32."""
    x = x.astype(np.float32, copy=False)
    return _weights_from_gram((x.T @ x).astype(np.float64), lam)


class EASE:
    """Steck (2019): item-item weights B = argmin ||X - XB||^2 + lam ||B||^2 with diag(B) = 0, in closed form:
    P = (X'X + lam I)^-1, B = -P / diag(P) column-wise, diag(B) = 0. X is the binary training matrix.

    With more than `max_items` movies, X keeps the `max_items` most-rated (ties: smaller movie id); every
    other movie ranks after them, by popularity."""

    def __init__(self, lam: float = 500.0, max_items: int = EASE_MAX_ITEMS):
        self.lam, self.max_items = lam, max_items
        self.name = f"EASE (lambda {lam:g})"

    def fit(self, data: Interactions) -> EASE:
        self.data = data
        counts = np.bincount(data.train_col, minlength=len(data.catalogue))
        m = len(counts)
        self.keep = np.arange(m)
        if m > self.max_items:
            self.keep = most_rated(counts, self.max_items)
            self.name = f"EASE (lambda {self.lam:g}, top {self.max_items:,} movies)"
        self.rest = np.setdiff1d(np.arange(m), self.keep)
        self.rest_counts = counts[self.rest].astype(np.float32)
        column = np.full(m, -1, np.int64)
        column[self.keep] = np.arange(len(self.keep))
        indptr, cols = data.train_csr
        cols = column[cols]
        kept = cols >= 0
        owner = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        self.indptr = np.zeros_like(indptr)
        np.cumsum(np.bincount(owner[kept], minlength=len(indptr) - 1), out=self.indptr[1:])
        self.cols = cols[kept]
        with threads.phase():  # X'X and its inverse: large products
            self.b = _weights_from_gram(cooccurrence(self.indptr, self.cols, len(self.keep)), self.lam)
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        """[len(users), kept movies] scores (all movies unless capped), in `keep` order."""
        if len(self.rest) == 0:
            return self.data.train_matrix(users) @ self.b
        out = np.zeros((len(users), len(self.keep)), np.float32)
        for i, u in enumerate(np.asarray(users).tolist()):  # sparse rows: sum the rated movies' weight rows
            out[i] = self.b[self.cols[self.indptr[u] : self.indptr[u + 1]]].sum(0)
        return out

    def ranker(self):
        """`(user ids, seen, k) -> top-k columns` (see `evaluate`): the kept movies by score, then the rest by
        popularity."""
        if len(self.rest) == 0:
            return by_score(self.scores)

        def rank(users, seen, k):
            rest = np.broadcast_to(self.rest_counts, (len(users), len(self.rest)))
            return top_k_by_group(
                [(self.scores(users), seen[:, self.keep], self.keep), (rest, seen[:, self.rest], self.rest)], k
            )

        return rank
