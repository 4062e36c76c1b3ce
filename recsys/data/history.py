"""The user's watch history, the input of the user tower's `History` part.

A user's history is the set of movies they rated in the ratings that a model trains on (never a test rating).
The tower reads it as a row of weights over all movie ids, 1/count at each rated movie, so that one matmul
with the movie embeddings is their mean (the saved inference model's `history` input), or, in training and
for whole catalogues of users, as the same weights in sparse form (`Histories.sparse`): the rated movies, the
batch row of each and its weight. A training example leaves its own movie out; with a cap, a user who rated
more movies than the cap is read through that many of them drawn at random (with replacement) each step. A new
user's history is the movies they name (`--rated 1193:5,661:3`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from recsys.errors import RecsysError, UnknownId


def history_weights(rows: np.ndarray, leave_out: np.ndarray | None = None) -> np.ndarray:
    """The tower's history input from 0/1 rows [N, n_movies]: each row divided by its count (zeros stay
    zeros); `leave_out` [N] movie ids are removed from their rows first (a training example's own movie)."""
    rows = np.array(rows, np.float32)
    if leave_out is not None:
        rows[np.arange(len(rows)), leave_out] = 0.0
    count = rows.sum(axis=1, keepdims=True)
    return rows / np.maximum(count, 1.0)


@dataclass
class Histories:
    """Every user's history as sorted movie ids per user row (CSR): `movies[indptr[u]:indptr[u + 1]]`."""

    indptr: np.ndarray  # int64 [n_users + 1]
    keys: np.ndarray  # int64 user * n_movies + movie, ascending: one per (user, movie)
    n_movies: int

    @property
    def movies(self) -> np.ndarray:
        return self.keys % self.n_movies

    @classmethod
    def of(cls, n_users: int, n_movies: int, user: np.ndarray, movie: np.ndarray) -> Histories:
        """The histories of these ratings (a movie rated twice by a user counts once)."""
        key = np.sort(np.asarray(user, np.int64) * n_movies + np.asarray(movie, np.int64))
        key = key[np.r_[True, key[1:] != key[:-1]]] if len(key) else key  # np.unique, without its slow paths
        counts = np.bincount(key // n_movies, minlength=n_users)
        return cls(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), key, n_movies)

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def sparse(
        self, users: np.ndarray, leave_out: np.ndarray | None = None, cap: int = 0, rng=None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The history weights of rows `users` in sparse form: (movie ids [P], batch row of each [P], weight [P]),
        equal to `dense` (`leave_out` [N] removes each row's own movie). With `cap` > 0, a row whose history is
        longer is `cap` of its movies drawn with replacement by `rng`, each weighted 1/cap (the mean of a
        random sample of its history). The rows read whole come first, then the drawn ones, each in row order.
        The work is the rows' histories: a row's own movie is found within its own sorted movies."""
        users = np.asarray(users, np.int64)
        start, end = self.indptr[users], self.indptr[users + 1]
        own = np.full(len(users), -1, np.int64)  # each row's position of its own movie in its history, or -1
        if leave_out is not None:
            own = _own_positions(self.keys, start, end, users * self.n_movies + np.asarray(leave_out, np.int64))
        n = end - start - (own >= 0)  # each row's history length after leaving its own movie out
        drawn = (n > cap) if cap else np.zeros(len(users), bool)
        picks = rng.random_sample((int(drawn.sum()), cap)) if drawn.any() else np.zeros((0, max(cap, 1)))
        return _gather_history(self.keys, self.n_movies, start, end, own, n, drawn, picks)

    def dense(self, users: np.ndarray, leave_out: np.ndarray | None = None) -> np.ndarray:
        """The history weights [N, n_movies] of rows `users` (the saved inference model's input)."""
        ids, rows, weight = self.sparse(users, leave_out)
        out = np.zeros((len(users), self.n_movies), np.float32)
        out[rows, ids] = weight
        return out


@numba.njit(cache=True, nogil=True)
def _own_positions(keys: np.ndarray, start: np.ndarray, end: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Each row's position of `key[i]` among `keys[start[i]:end[i]]` (sorted), or -1 where it is not there."""
    own = np.full(len(key), -1, np.int64)
    for i in range(len(key)):
        lo, hi = start[i], end[i]
        while lo < hi:
            mid = (lo + hi) // 2
            if keys[mid] < key[i]:
                lo = mid + 1
            else:
                hi = mid
        if lo < end[i] and keys[lo] == key[i]:
            own[i] = lo - start[i]
    return own


@numba.njit(cache=True, nogil=True)
def _gather_history(keys, n_movies, start, end, own, n, drawn, picks):
    """`Histories.sparse`'s arrays: rows not `drawn` read whole (but their `own` position), then each drawn row
    its picks (uniforms in [0, 1) scaled to its `n` movies, skipping its own), weighted 1/cap."""
    cap = picks.shape[1]
    size = 0
    for i in range(len(start)):
        size += cap if drawn[i] else n[i]
    ids, rows, weight = np.empty(size, np.int64), np.empty(size, np.int64), np.empty(size, np.float32)
    p = 0
    for i in range(len(start)):
        if not drawn[i]:
            w = np.float32(1.0 / max(n[i], 1))
            base = keys[start[i]] // n_movies * n_movies if end[i] > start[i] else 0  # the row's user * n_movies
            for k in range(end[i] - start[i]):
                if k != own[i]:
                    ids[p], rows[p], weight[p] = keys[start[i] + k] - base, i, w
                    p += 1
    d = 0
    for i in range(len(start)):
        if drawn[i]:
            base = keys[start[i]] // n_movies * n_movies
            for c in range(cap):
                k = np.int64(picks[d, c] * n[i])
                if own[i] >= 0 and k >= own[i]:
                    k += 1
                ids[p], rows[p], weight[p] = keys[start[i] + k] - base, i, np.float32(1.0 / cap)
                p += 1
            d += 1
    return ids, rows, weight


def parse_rated(text: str, known, scale: tuple[float, float] = (1, 5)) -> list[tuple[int, float]]:
    """`1193:5,661:3` -> [(1193, 5.0), (661, 3.0)]; one-line errors for a bad pair, an unknown movie
    (`known(movie_id) -> bool`) or a rating outside the data's scale."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        movie, sep, stars = part.partition(":")
        try:
            pair = (int(movie), float(stars))
        except ValueError:
            raise RecsysError(f"--rated takes MOVIE:STARS pairs separated by commas, got {part!r}") from None
        if not sep:
            raise RecsysError(f"--rated takes MOVIE:STARS pairs separated by commas, got {part!r}")
        check_rated(*pair, known, scale)
        out.append(pair)
    return out


def check_rated(movie: int, stars: float, known, scale: tuple[float, float] = (1, 5)) -> None:
    """One-line error unless `movie` is known and `stars` lies on the data's rating scale, in its steps (the
    lowest rating: half stars from 0.5, else whole stars)."""
    low, high = scale
    if not known(movie):
        raise UnknownId(f"rated movie {movie} is unknown to the model")
    if not low <= stars <= high:  # NaN fails the comparison too
        raise RecsysError(f"rating {stars:g} of movie {movie} is outside the data's scale {low:g}..{high:g}")
    if not float(stars / low).is_integer():
        steps = f"{low:g}, {2 * low:g}, ..., {high:g}"
        raise RecsysError(f"rating {stars:g} of movie {movie} is not one of the data's ratings {steps}")
