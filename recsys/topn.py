"""Top-N recommendation: full-ranking metrics and the two numpy baselines (popularity, EASE).

Every ranking here is over a fixed catalogue (a sorted array of movie ids). A user's candidates are the
catalogue movies they did not rate in training; ties are broken by the smaller movie id, so every list is
deterministic. Metrics (binary gains, `relevant` = the user's test ratings of `threshold` stars or more):

    Precision@K  hits in the top K / K
    Recall@K     hits in the top K / number of relevant movies
    NDCG@K       sum over hits at rank r (1-based) of 1/log2(r+1), divided by the same sum for an ideal list
                 of min(#relevant, K) hits
    HR@K         1 if the top K holds at least one hit, else 0
    coverage     distinct movies over all users' top-K lists / catalogue size

The first four are means over the users with at least one relevant test rating; the others are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from recsys.errors import RecsysError

RELEVANT = 4  # default: test ratings of 4 or 5 stars are the relevant ones


@dataclass
class Interactions:
    """Training and test ratings as user x catalogue-column index arrays, for full ranking."""

    catalogue: np.ndarray  # [M] movie ids, ascending
    train_user: np.ndarray
    train_col: np.ndarray  # column index into catalogue
    test_user: np.ndarray  # only relevant test ratings (stars >= threshold)
    test_col: np.ndarray
    n_users: int  # rows: user ids 0..n_users-1

    @classmethod
    def build(cls, catalogue, user, movie, stars, is_test, threshold: int = RELEVANT) -> Interactions:
        catalogue = np.asarray(catalogue, np.int64)
        col = np.searchsorted(catalogue, movie)
        col = np.minimum(col, len(catalogue) - 1)
        if not np.array_equal(catalogue[col], movie):
            raise RecsysError("ratings name movies outside the catalogue")
        rel = is_test & (stars >= threshold)
        n_users = int(user.max()) + 1 if len(user) else 0
        return cls(catalogue, user[~is_test], col[~is_test], user[rel], col[rel], n_users)

    def eval_users(self) -> np.ndarray:
        """Users with at least one relevant test rating, ascending."""
        return np.flatnonzero(np.bincount(self.test_user, minlength=self.n_users))

    def sample_users(self, n: int, seed: int = 0) -> Interactions:
        """The same ratings with the relevant test ratings of at most `n` evaluation users, drawn by `seed`
        (itself when there are no more than `n`): a cheaper estimate of the metrics on a large catalogue."""
        users = self.eval_users()
        if len(users) <= n:
            return self
        keep = np.isin(self.test_user, np.random.RandomState(seed).choice(users, n, replace=False))
        return replace(self, test_user=self.test_user[keep], test_col=self.test_col[keep])

    def relevant(self) -> list[set[int]]:
        """The relevant test columns of each user in `eval_users()` order."""
        out: dict[int, set[int]] = {u: set() for u in self.eval_users().tolist()}
        for u, c in zip(self.test_user.tolist(), self.test_col.tolist()):
            out[u].add(c)
        return list(out.values())

    @cached_property
    def train_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """The training ratings as CSR rows by user id: (indptr [n_users + 1], columns), each user's columns
        in input order. Plain numpy arrays (no scipy)."""
        order = np.argsort(self.train_user, kind="stable")
        indptr = np.zeros(self.n_users + 1, np.int64)
        np.cumsum(np.bincount(self.train_user, minlength=self.n_users), out=indptr[1:])
        return indptr, self.train_col[order]

    def train_entries(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row into `users`, catalogue column) of every training rating of the given users."""
        indptr, cols = self.train_csr
        start, length = indptr[users], indptr[np.asarray(users) + 1] - indptr[users]
        row = np.repeat(np.arange(len(length)), length)
        at = np.arange(int(length.sum())) - np.repeat(np.cumsum(length) - length, length) + np.repeat(start, length)
        return row, cols[at]

    def train_matrix(self, users: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
        """Binary [len(users), M] matrix of training ratings (all users by id when `users` is None): dense, so
        meant for a chunk of users at a time."""
        rows = np.arange(self.n_users) if users is None else np.asarray(users)
        row, col = self.train_entries(rows)
        x = np.zeros((len(rows), len(self.catalogue)), dtype)
        x[row, col] = 1
        return x


def top_k_lists(scores: np.ndarray, seen: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k best unseen columns, best first; ties go to the smaller column.

    scores: [U, M] floats; seen: [U, M] bool (excluded). Rows with fewer than k candidates are padded
    with -1. A non-finite score is an error, never a ranking."""
    if not np.isfinite(scores).all():
        raise RecsysError("the model produced non-finite scores; it cannot rank them (train it again)")
    s = np.where(seen, -np.inf, scores)
    n_rows, k = s.shape[0], min(k, s.shape[1])
    if k == 0:
        return np.zeros((n_rows, 0), np.int64)
    kth = -np.partition(-s, k - 1, axis=1)[:, k - 1 : k]  # each row's k-th best score
    row, col = np.nonzero(s >= kth)  # the k best and everything tied with the k-th, row-major, columns ascending
    value = s[row, col]
    order = np.lexsort((col, -value, row))
    row, col, value = row[order], col[order], value[order]
    place = np.arange(len(row)) - np.searchsorted(row, row)  # position within its row
    keep = (place < k) & (value > -np.inf)
    out = np.full((n_rows, k), -1, np.int64)
    out[row[keep], place[keep]] = col[keep]
    return out


def rerank(candidates: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's candidate columns (-1: none) reordered by `scores` [U, M], best first, then cut to k.
    Equal scores keep the candidates' order."""
    return rerank_pool(candidates, np.take_along_axis(scores, np.maximum(candidates, 0), 1), k)


def rerank_pool(candidates: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """`rerank` with the candidates' own scores [U, N] (aligned with `candidates`)."""
    s = np.array(scores, np.float64)
    s[candidates < 0] = 0.0
    if not np.isfinite(s).all():
        raise RecsysError("the ranking model produced non-finite scores; it cannot rank them (train it again)")
    s[candidates < 0] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(candidates, order, 1)


def metrics(lists: np.ndarray, relevant: list[set[int]], k: int, n_catalogue: int) -> dict[str, float]:
    """Precision, recall, NDCG, HR at k and catalogue coverage of the lists (rows align with `relevant`)."""
    users = [i for i, r in enumerate(relevant) if r]
    if not users:
        raise RecsysError("no test user has a relevant rating; nothing to rank")
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    p = r = n = h = 0.0
    for i in users:
        rel = relevant[i]
        hits = np.array([c in rel for c in lists[i, :k]], bool)
        n_hits = int(hits.sum())
        p += n_hits / k
        r += n_hits / len(rel)
        n += float(discount[: len(hits)][hits].sum()) / float(discount[: min(len(rel), k)].sum())
        h += n_hits > 0
    shown = lists[users, :k]
    return {
        "precision": p / len(users),
        "recall": r / len(users),
        "ndcg": n / len(users),
        "hr": h / len(users),
        "coverage": len(np.unique(shown[shown >= 0])) / n_catalogue,
        "users": len(users),
    }


def by_score(score_fn):
    """A ranker from a scorer: `score_fn(user ids) -> [n, M]` becomes `(user ids, seen, k) -> top-k columns`."""
    return lambda users, seen, k: top_k_lists(score_fn(users), seen, k)


def evaluate(rank_fn, data: Interactions, k: int = 10, chunk: int = 1024) -> dict[str, float]:
    """Top-k lists of every evaluation user from `rank_fn(user ids, seen [n, M], k) -> [n, k] columns`
    (see `by_score`), scored against the users' relevant test ratings."""
    users = data.eval_users()
    lists = [
        rank_fn(users[s : s + chunk], data.train_matrix(users[s : s + chunk], bool), k)
        for s in range(0, len(users), chunk)
    ]
    return metrics(np.concatenate(lists), data.relevant(), k, len(data.catalogue))


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
_INVERT_IN_PLACE_FROM = 8_192  # larger grams are inverted in place (numpy's inverse holds four copies)


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
    """Overwrite the symmetric positive definite `a` with minus its inverse (block sweep operator), using
    O(n * block) memory beside it."""
    n = len(a)
    for s in range(0, n, block):
        k = slice(s, min(n, s + block))
        d = np.linalg.inv(a[k, k])
        c = a[:, k] @ d
        ak = a[k, :].copy()
        for r in range(0, n, block):
            a[r : r + block] -= c[r : r + block] @ ak
        a[:, k] = c
        a[k, :] = c.T
        a[k, k] = -d
    return a


def _weights_from_gram(gram: np.ndarray, lam: float) -> np.ndarray:
    """EASE's weights from X'X (float64, overwritten): [M, M] float32."""
    gram[np.diag_indices_from(gram)] += lam
    if len(gram) < _INVERT_IN_PLACE_FROM:
        p = np.linalg.inv(gram)
        b = -p / np.diag(p)[None, :]
        b[np.diag_indices_from(b)] = 0.0
        return b.astype(np.float32)
    b = _invert_in_place(gram)  # -P: B = -P / diag(P) = b / -diag(b)
    b /= -np.diag(b).copy()[None, :]
    b[np.diag_indices_from(b)] = 0.0
    n = len(b)
    out = b.reshape(-1).view(np.float32)[: n * n]  # float32 rows written over float64 rows already read
    for s in range(0, n, 1024):
        out[s * n : min(n, s + 1024) * n] = b[s : s + 1024].astype(np.float32).reshape(-1)
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
            self.keep = np.sort(np.lexsort((np.arange(m), -counts))[: self.max_items])
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
            first = top_k_lists(self.scores(users), seen[:, self.keep], k)
            after = top_k_lists(np.broadcast_to(self.rest_counts, (len(users), len(self.rest))), seen[:, self.rest], k)
            both = np.concatenate(
                [np.where(first >= 0, self.keep[first], -1), np.where(after >= 0, self.rest[after], -1)], 1
            )
            order = np.argsort(both < 0, axis=1, kind="stable")[:, :k]
            return np.take_along_axis(both, order, 1)

        return rank
