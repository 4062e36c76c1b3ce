"""The pieces of answers that name the data: a movie by its own id, title and genres, a user's ratings, a
movie's counts; plain dicts, as `infer --json` prints them and the service returns them."""

from __future__ import annotations

import numpy as np

from recsys.data.schema import AGE_GROUPS, age_table
from recsys.modeldir import ModelDir


def stars_value(x) -> int | float:
    """A rating as the data gave it: 4 stays 4, 3.5 stays 3.5."""
    return int(x) if float(x).is_integer() else float(x)


def movie(md: ModelDir, row: int, **values) -> dict:
    """One movie of an answer: its own id, title and genres, and `values`."""
    return {"movie_id": md.own_movie(row), "title": md.title(row), "genres": md.genres(row)} | values


def user(md: ModelDir, row: int, user_id: int) -> dict:
    """A known user's features (the chapter's: age as its bucket code and range) and every rating in the
    archive (split: train or test), best first."""
    movies, given, is_test = md.ratings_of(row)
    order = np.lexsort((md.own_movie_ids[movies], -given))
    ratings = [
        movie(md, int(movies[i]), stars=stars_value(given[i]), split="test" if is_test[i] else "train") for i in order
    ]
    values = [int(x) for x in md.tables.user[row]]
    if not md.chapter_features:
        features = {f: md.features[f][v] for f, v in zip(md.features, values)}
        return {"user_id": user_id, "features": features, "ratings": ratings}
    gender, age, job = values
    return {"user_id": user_id, "gender": "MF"[gender], "age": age_table[age], "age_group": AGE_GROUPS[age],
            "job": md.meta["jobs"][job], "ratings": ratings}  # fmt: skip


def movie_stats(md: ModelDir) -> tuple[np.ndarray, np.ndarray]:
    """Per movie row: the number of its ratings in the archive, and their stars summed."""
    a, n = md.arrays, len(md.arrays["movie_category"])
    return np.bincount(a["rated_movie"], minlength=n), np.bincount(a["rated_movie"], a["rated_stars"], n)


def movie_details(md: ModelDir, row: int, movie_id: int, stats: tuple[np.ndarray, np.ndarray]) -> dict:
    """A movie's title, genres, and its number of ratings and mean stars in the archive (`stats`:
    `movie_stats`)."""
    counts, sums = stats
    n = int(counts[row])
    mean = float(sums[row] / n) if n else None
    return {"movie_id": movie_id, "title": md.title(row), "genres": md.genres(row), "ratings": n, "mean_stars": mean}
