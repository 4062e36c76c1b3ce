"""The one schema every source format produces: users, movies, vocabularies (`Meta`), the per-row feature
tables (`Tables`) and the rating columns (`MovieLens`).

Users and movies are addressed by ROW: row 0 is the unknown user / no movie, rows 1.. the dataset's own ids
(ml-1m and ml-100k: row == own id; CSV layouts: the distinct own ids ascending). `Meta.user_ids` /
`Meta.movie_ids` map rows back to own ids, `Meta.user_row` / `Meta.movie_row` the other way.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recsys.errors import RecsysError

age_table = [1, 18, 25, 35, 45, 50, 56]
# what each age_table code stands for (the ml-1m README's ranges)
AGE_GROUPS = ["Under 18", "18–24", "25–34", "35–44", "45–49", "50–55", "56+"]
FEED_NAMES = ("user_id", "gender_id", "age_id", "job_id", "movie_id", "category_id", "movie_title")
CHAPTER_FEATURES = ("gender", "age", "job")  # the user features of ml-1m and ml-100k, in feed order
GENDERS = ["M", "F"]


def age_index(age: int) -> int:
    """The index in `age_table` of a real age in years, or of a bucket's own code (1, 18, 25, ...): each code
    lies in its own range, so both read the same way."""
    if not 1 <= age <= 120:
        raise RecsysError(f"age must be a number of years, 1..120 (or a bucket code: {age_table}), got {age}")
    return max(i for i, a in enumerate(age_table) if a <= age)


class MovieInfo:
    """Movie id, title and categories, as in the chapter; `value()` is the sample's movie part."""

    def __init__(
        self,
        index: int,
        categories: list[str],
        title: str,
        category_ids: list[int],
        title_ids: list[int],
        year: int | None = None,
    ):
        self.index = int(index)
        self.year = year  # the release year in the data's title (None: it gives none)
        self.categories = categories
        self.title = title
        self.category_ids = category_ids
        self.title_ids = title_ids

    def value(self) -> list:
        return [self.index, list(self.category_ids), list(self.title_ids)]

    def __str__(self) -> str:
        return f"<MovieInfo id({self.index}), title({self.title}), categories({self.categories})>"

    __repr__ = __str__


class UserInfo:
    """User id, gender, age and job, as in the chapter; `value()` is the sample's user part."""

    def __init__(self, index: int, gender: str, age: int, job_id: int):
        self.index = int(index)
        self.is_male = gender == "M"
        self.age = age_table.index(int(age))
        self.job_id = int(job_id)

    def value(self) -> list[int]:
        return [self.index, 0 if self.is_male else 1, self.age, self.job_id]

    def __str__(self) -> str:
        gender = "M" if self.is_male else "F"
        return f"<UserInfo id({self.index}), gender({gender}), age({age_table[self.age]}), job({self.job_id})>"

    __repr__ = __str__


def _lookup(own_ids: np.ndarray, rows: np.ndarray, ids) -> np.ndarray:
    """Rows of `ids` given the known (own id, row) pairs, `own_ids` ascending; -1 for ids not among them."""
    ids = np.asarray(ids, np.int64)
    if not len(own_ids):
        return np.full(ids.shape, -1, np.int64)
    at = np.minimum(np.searchsorted(own_ids, ids), len(own_ids) - 1)
    return np.where(own_ids[at] == ids, rows[at], -1)


@dataclass
class Meta:
    """Users, movies and vocabularies of one dataset.

    `features`: user feature name -> labels of its values (the index is the feature id). `user_table`:
    [n_user_rows, len(features)] int64, each row's feature ids. `users` (the chapter's UserInfo by id) is
    filled for ml-1m and ml-100k only; `movies` is keyed by row for every layout."""

    dataset: str
    users: dict[int, UserInfo]
    movies: dict[int, MovieInfo]  # row -> movie
    categories: list[str]  # category id -> genre
    title_words: list[str]  # word id -> lower-cased title word
    jobs: list[str]  # job id -> occupation
    features: dict[str, list[str]] = field(default_factory=dict)
    user_ids: np.ndarray = None  # int64 [n_user_rows]: row -> own user id (row 0: the unknown user, own id 0)
    movie_ids: np.ndarray = None  # int64 [n_movie_rows]: row -> own movie id
    user_table: np.ndarray = None  # int64 [n_user_rows, len(features)]
    known_user_rows: np.ndarray = None  # int64: rows of real users, ascending

    def __post_init__(self):
        if self.user_ids is None:  # the chapter's layouts: row == own id
            self.user_ids = np.arange(max(self.users) + 1, dtype=np.int64)
        if self.movie_ids is None:
            self.movie_ids = np.arange(max(self.movies) + 1, dtype=np.int64)
        if self.known_user_rows is None:
            self.known_user_rows = np.array(sorted(self.users), np.int64)
        if self.user_table is None:
            if self.features and list(self.features) != list(CHAPTER_FEATURES):
                raise ValueError("user_table is needed for features other than the chapter's")
            self.features = self.features or {"gender": GENDERS, "age": AGE_GROUPS, "job": list(self.jobs)}
            self.user_table = np.zeros((len(self.user_ids), 3), np.int64)
            for u in self.users.values():
                self.user_table[u.index] = u.value()[1:]
        movie_rows = np.array(sorted(self.movies), np.int64)
        self._user_key = self.user_ids[self.known_user_rows]
        self._movie_key = self.movie_ids[movie_rows]
        self._user_order = np.argsort(self._user_key, kind="stable")
        self._movie_order = np.argsort(self._movie_key, kind="stable")
        self._user_rows, self._movie_rows = self.known_user_rows, movie_rows

    def display_title(self, movie_id: int) -> str:
        """The movie's title (by row), without surrounding blanks."""
        return self.movies[movie_id].title.strip()

    def known_users(self) -> np.ndarray:
        """Rows of the real users, ascending."""
        return self.known_user_rows

    def feed_names(self) -> tuple[str, ...]:
        """The network's inputs for this data: user id, one per user feature, movie id, then genres and title
        words when the data has them (ml-1m, ml-100k: exactly `FEED_NAMES`)."""
        names = ("user_id", *[f"{f}_id" for f in self.features], "movie_id")
        return names + ("category_id",) * bool(self.categories) + ("movie_title",) * bool(self.title_words)

    def own_user(self, row: int) -> int:
        return int(self.user_ids[row])

    def own_movie(self, row: int) -> int:
        return int(self.movie_ids[row])

    def user_row(self, ids) -> np.ndarray:
        """Own user ids -> rows (-1 for ids that are no user of this data)."""
        o = self._user_order
        return _lookup(self._user_key[o], self._user_rows[o], ids)

    def movie_row(self, ids) -> np.ndarray:
        """Own movie ids -> rows (-1 for ids that are no movie of this data)."""
        o = self._movie_order
        return _lookup(self._movie_key[o], self._movie_rows[o], ids)


@dataclass
class Tables:
    """Per-row feature tables: what turns (user row, movie row) pairs into the network's inputs."""

    user: np.ndarray  # [n_user_rows, n_features] int64 (ml-1m: gender, age index, job)
    category: np.ndarray  # [n_movie_rows, C] int64, padded with category_pad (= n_categories)
    title: np.ndarray  # [n_movie_rows, L] int64, padded with title_pad (= n_title_words)
    category_pad: int
    title_pad: int
    user_feature_names: tuple[str, ...] = CHAPTER_FEATURES

    def __post_init__(self):
        self._category_len = (self.category != self.category_pad).sum(1)
        self._title_len = (self.title != self.title_pad).sum(1)

    @classmethod
    def from_meta(cls, meta: Meta) -> Tables:
        n_movies = len(meta.movie_ids)
        category = _pad([m.category_ids for m in meta.movies.values()], meta.movies, n_movies, len(meta.categories))
        title = _pad([m.title_ids for m in meta.movies.values()], meta.movies, n_movies, len(meta.title_words))
        user = meta.user_table
        return cls(user, category, title, len(meta.categories), len(meta.title_words), tuple(meta.features))

    def genres(self, movie_ids: np.ndarray) -> np.ndarray:
        """[n, category_pad] float32 0/1: each of the movie rows' genres (categories)."""
        ids = self.category[np.asarray(movie_ids, np.int64)]
        out = np.zeros((len(ids), self.category_pad + 1), np.float32)
        out[np.repeat(np.arange(len(ids)), ids.shape[1]), ids.ravel()] = 1.0
        return out[:, : self.category_pad]

    def user_features(self, user_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The user tower's feeds (`user_id`, then one `<feature>_id` per user feature) for an array of rows."""
        user_ids = np.asarray(user_ids, np.int64)
        u = self.user[user_ids]
        return {"user_id": user_ids} | {f"{f}_id": u[:, i] for i, f in enumerate(self.user_feature_names)}

    def movie_features(self, movie_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The movie tower's feeds (`movie_id`, and `category_id`, `movie_title` when the data has genres /
        titles) for an array of movie rows.

        Padding columns that no movie of this batch needs are dropped (they change nothing, and cost time)."""
        movie_ids = np.asarray(movie_ids, np.int64)
        out = {"movie_id": movie_ids}
        if self.category_pad:
            n_cat = max(1, int(self._category_len[movie_ids].max(initial=0)))
            out["category_id"] = self.category[movie_ids, :n_cat]
        if self.title_pad:
            n_title = max(1, int(self._title_len[movie_ids].max(initial=0)))
            out["movie_title"] = self.title[movie_ids, :n_title]
        return out

    def features(self, user_ids: np.ndarray, movie_ids: np.ndarray) -> dict[str, np.ndarray]:
        """All feeds, in `Meta.feed_names()` order, for aligned arrays of user and movie rows."""
        return self.user_features(user_ids) | self.movie_features(movie_ids)


def unknown_user_features(gender_ids, age_ids, job_ids) -> dict[str, np.ndarray]:
    """The user tower's feeds for the unknown user (id 0, which MovieLens never assigns) with these features."""
    g, a, j = (np.asarray(x, np.int64) for x in np.broadcast_arrays(gender_ids, age_ids, job_ids))
    return {"user_id": np.zeros_like(g), "gender_id": g, "age_id": a, "job_id": j}


def _pad(rows: list[list[int]], movies: dict[int, MovieInfo], n: int, pad: int) -> np.ndarray:
    """[n, longest] table of the id lists `rows` (of the movies' rows), padded with `pad`."""
    lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
    out = np.full((n, max(1, int(lengths.max(initial=0)))), pad, np.int64)
    flat = np.fromiter(itertools.chain.from_iterable(rows), np.int64, int(lengths.sum()))
    starts = np.cumsum(lengths) - lengths
    out[
        np.repeat(np.fromiter(movies, np.int64, len(movies)), lengths),
        np.arange(len(flat)) - np.repeat(starts, lengths),
    ] = flat
    return out


@dataclass
class MovieLens:
    """One dataset as arrays: metadata, feature tables, and the rating columns in file order."""

    meta: Meta
    tables: Tables
    source: Path
    split: str
    user: np.ndarray  # int64 [n], user rows
    movie: np.ndarray  # int64 [n], movie rows
    stars: np.ndarray  # float32 [n], 0.5..5 in halves (ml-1m, ml-100k: 1..5)
    is_test: np.ndarray  # bool [n]
    timestamp: np.ndarray | None = None  # int64 [n], or None when the data has none

    def lowest_rating(self) -> float:
        """The bottom of the rating scale: 0.5 for half-star data, else the chapter's 1."""
        return 0.5 if ((self.stars % 1) != 0).any() or (self.stars < 1).any() else 1.0

    @property
    def label(self) -> np.ndarray:
        """The chapter's regression target, `rating * 2 - 5`, as float32 [n, 1]."""
        return (self.stars.astype(np.float32) * 2 - 5)[:, None]

    def sizes(self) -> dict:
        """Dictionary sizes of the network's embeddings (ml-1m, ml-100k: as the chapter derives them)."""
        meta = self.meta
        if list(meta.features) == list(CHAPTER_FEATURES) and meta.users:
            return {
                "n_users": max(meta.users) + 1,
                "n_ages": len(age_table),
                "n_jobs": max(u.job_id for u in meta.users.values()) + 1,
                "n_movies": max(meta.movies) + 1,
                "n_categories": len(meta.categories),
                "n_title_words": len(meta.title_words),
            }
        return {
            "n_users": len(meta.user_ids),
            "n_movies": len(meta.movie_ids),
            "n_categories": len(meta.categories),
            "n_title_words": len(meta.title_words),
            "user_features": {name: len(values) for name, values in meta.features.items()},
        }
