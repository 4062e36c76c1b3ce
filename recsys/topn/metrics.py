"""Top-N metrics: full ranking of a catalogue against each user's relevant test ratings.

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
from recsys.topn.lists import chunk_rows

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


def evaluate(rank_fn, data: Interactions, k: int = 10, chunk: int | None = None) -> dict[str, float]:
    """Top-k lists of every evaluation user from `rank_fn(user ids, seen [n, M], k) -> [n, k] columns`
    (see `by_score`), scored against the users' relevant test ratings, a chunk of users at a time
    (`lists.chunk_rows` by default). `seen` is the training ratings alone, as the protocol requires (a served
    list leaves out the test ratings too: `Recommender.recommend(..., exclude_rated="train")` is this list)."""
    users, chunk = data.eval_users(), chunk or chunk_rows(len(data.catalogue))
    lists = [
        rank_fn(users[s : s + chunk], data.train_matrix(users[s : s + chunk], bool), k)
        for s in range(0, len(users), chunk)
    ]
    return metrics(np.concatenate(lists), data.relevant(), k, len(data.catalogue))


def recall_at(pool: np.ndarray, relevant: list[set[int]]) -> float:
    """Mean over users with a relevant movie of the share of their relevant movies found in their pool row."""
    users = [i for i, r in enumerate(relevant) if r]
    if not users:
        return float("nan")
    return float(np.mean([len(relevant[i] & set(pool[i].tolist())) / len(relevant[i]) for i in users]))
