"""The user's watch history, the input of the user tower's `History` part.

A user's history is the set of movies they rated in the ratings that a model trains on (never a test rating).
The tower reads it as a row of weights over all movie ids, 1/count at each rated movie, so that one matmul
with the movie embeddings is their mean; a training example leaves its own movie out. A new user's history
is the movies they name (`--rated 1193:5,661:3`).
"""

from __future__ import annotations

import numpy as np

from recsys.errors import RecsysError


def history_rows(n_users: int, n_movies: int, user: np.ndarray, movie: np.ndarray) -> np.ndarray:
    """[n_users, n_movies] float32: 1 where the user rated the movie in these ratings, else 0."""
    rows = np.zeros((n_users, n_movies), np.float32)
    rows[user, movie] = 1.0
    return rows


def history_weights(rows: np.ndarray, leave_out: np.ndarray | None = None) -> np.ndarray:
    """The tower's history input from 0/1 rows [N, n_movies]: each row divided by its count (zeros stay
    zeros); `leave_out` [N] movie ids are removed from their rows first (a training example's own movie)."""
    rows = np.array(rows, np.float32)
    if leave_out is not None:
        rows[np.arange(len(rows)), leave_out] = 0.0
    count = rows.sum(axis=1, keepdims=True)
    return rows / np.maximum(count, 1.0)


def parse_rated(text: str, known, scale: tuple[int, int] = (1, 5)) -> list[tuple[int, float]]:
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


def check_rated(movie: int, stars: float, known, scale: tuple[int, int] = (1, 5)) -> None:
    """One-line error unless `movie` is known and `stars` lies on the data's rating scale."""
    if not known(movie):
        raise RecsysError(f"rated movie {movie} is unknown to the model")
    if not scale[0] <= stars <= scale[1]:  # NaN fails the comparison too
        raise RecsysError(f"rating {stars:g} of movie {movie} is outside the data's scale {scale[0]}..{scale[1]}")
