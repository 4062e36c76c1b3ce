"""MovieLens reader: a drop-in for the chapter's `paddle.dataset.movielens`, plus ready numpy arrays.

Chapter calls keep their names and return shapes (`train()`, `test()`, `movie_info()`, `user_info()`,
`max_user_id()`, ...). Vocabularies are deterministic: title words and ml-1m genres in sorted order,
ml-100k genres and occupations in the order of `u.genre` / `u.occupation`.

`load()` is the fast path: the archive becomes numpy columns once (cached beside the archive) and
`Tables.features()` turns (user id, movie id) pairs into the network's seven inputs with a few gathers.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys import fetch
from recsys.errors import RecsysError

age_table = [1, 18, 25, 35, 45, 50, 56]
# what each age_table code stands for (the ml-1m README's ranges)
AGE_GROUPS = ["Under 18", "18–24", "25–34", "35–44", "45–49", "50–55", "56+"]


def age_index(age: int) -> int:
    """The index in `age_table` of a real age in years, or of a bucket's own code (1, 18, 25, ...): each code
    lies in its own range, so both read the same way."""
    if not 1 <= age <= 120:
        raise RecsysError(f"age must be a number of years, 1..120 (or a bucket code: {age_table}), got {age}")
    return max(i for i, a in enumerate(age_table) if a <= age)


FEED_NAMES = ("user_id", "gender_id", "age_id", "job_id", "movie_id", "category_id", "movie_title")
SPLITS = {"ml-1m": ("random",), "ml-100k": ("random", "u1", "u2", "u3", "u4", "u5", "ua", "ub")}
ML1M_JOBS = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)
_TITLE = re.compile(r"^(.*)\((\d+)\)$")
_CACHE_VERSION = 1


class MovieInfo:
    """Movie id, title and categories, as in the chapter; `value()` is the sample's movie part."""

    def __init__(self, index: int, categories: list[str], title: str, category_ids: list[int], title_ids: list[int]):
        self.index = int(index)
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


@dataclass
class Meta:
    """Users, movies and vocabularies of one archive."""

    dataset: str
    users: dict[int, UserInfo]
    movies: dict[int, MovieInfo]
    categories: list[str]  # category id -> genre
    title_words: list[str]  # word id -> lower-cased title word
    jobs: list[str]  # job id -> occupation

    def display_title(self, movie_id: int) -> str:
        return self.movies[movie_id].title.strip()


@dataclass
class Tables:
    """Per-id feature rows: what turns (user id, movie id) pairs into the network's seven inputs."""

    user: np.ndarray  # [max_user_id+1, 3] int64: gender, age index, job
    category: np.ndarray  # [max_movie_id+1, C] int64, padded with category_pad (= n_categories)
    title: np.ndarray  # [max_movie_id+1, L] int64, padded with title_pad (= n_title_words)
    category_pad: int
    title_pad: int

    def __post_init__(self):
        self._category_len = (self.category != self.category_pad).sum(1)
        self._title_len = (self.title != self.title_pad).sum(1)

    @classmethod
    def from_meta(cls, meta: Meta) -> Tables:
        user = np.zeros((max(meta.users) + 1, 3), np.int64)
        for u in meta.users.values():
            user[u.index] = u.value()[1:]
        n_movies = max(meta.movies) + 1
        category = _pad([m.category_ids for m in meta.movies.values()], meta.movies, n_movies, len(meta.categories))
        title = _pad([m.title_ids for m in meta.movies.values()], meta.movies, n_movies, len(meta.title_words))
        return cls(user, category, title, len(meta.categories), len(meta.title_words))

    def user_features(self, user_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The user tower's feeds (`user_id, gender_id, age_id, job_id`) for an array of user ids."""
        user_ids = np.asarray(user_ids, np.int64)
        u = self.user[user_ids]
        return {"user_id": user_ids, "gender_id": u[:, 0], "age_id": u[:, 1], "job_id": u[:, 2]}

    def movie_features(self, movie_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The movie tower's feeds (`movie_id, category_id, movie_title`) for an array of movie ids.

        Padding columns that no movie of this batch needs are dropped (they change nothing, and cost time)."""
        movie_ids = np.asarray(movie_ids, np.int64)
        n_cat = max(1, int(self._category_len[movie_ids].max(initial=0)))
        n_title = max(1, int(self._title_len[movie_ids].max(initial=0)))
        return {
            "movie_id": movie_ids,
            "category_id": self.category[movie_ids, :n_cat],
            "movie_title": self.title[movie_ids, :n_title],
        }

    def features(self, user_ids: np.ndarray, movie_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The chapter's seven feeds, in `FEED_NAMES` order, for aligned arrays of user and movie ids."""
        return self.user_features(user_ids) | self.movie_features(movie_ids)


def unknown_user_features(gender_ids, age_ids, job_ids) -> dict[str, np.ndarray]:
    """The user tower's feeds for the unknown user (id 0, which MovieLens never assigns) with these features."""
    g, a, j = (np.asarray(x, np.int64) for x in np.broadcast_arrays(gender_ids, age_ids, job_ids))
    return {"user_id": np.zeros_like(g), "gender_id": g, "age_id": a, "job_id": j}


def _pad(rows: list[list[int]], movies: dict[int, MovieInfo], n: int, pad: int) -> np.ndarray:
    out = np.full((n, max(1, max(len(r) for r in rows))), pad, np.int64)
    for mid, r in zip(movies, rows):
        out[mid, : len(r)] = r
    return out


@dataclass
class MovieLens:
    """One archive as arrays: metadata, feature tables, and the rating columns in file order."""

    meta: Meta
    tables: Tables
    source: Path
    split: str
    user: np.ndarray  # int64 [n]
    movie: np.ndarray  # int64 [n]
    stars: np.ndarray  # int8 [n], 1..5
    is_test: np.ndarray  # bool [n]

    @property
    def label(self) -> np.ndarray:
        """The chapter's regression target, `rating * 2 - 5`, as float32 [n, 1]."""
        return (self.stars.astype(np.float32) * 2 - 5)[:, None]

    def sizes(self) -> dict[str, int]:
        """Dictionary sizes of the network's embeddings, as the chapter derives them."""
        return {
            "n_users": max(self.meta.users) + 1,
            "n_ages": len(age_table),
            "n_jobs": max(u.job_id for u in self.meta.users.values()) + 1,
            "n_movies": max(self.meta.movies) + 1,
            "n_categories": len(self.meta.categories),
            "n_title_words": len(self.meta.title_words),
        }


# ---------------------------------------------------------------- parsing


def _lines(data: bytes) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of each non-blank line."""
    for i, raw in enumerate(data.decode("latin-1").splitlines(), 1):
        if raw.strip():
            yield i, raw.strip()


def _bad(source: Path, member: str, line_no: int, line: str) -> RecsysError:
    return RecsysError(f"{source}: {member} line {line_no} is malformed: {line[:80]!r}")


def _movie(index: str, title: str, categories: list[str], cat_ids: dict[str, int], words: dict[str, int]) -> MovieInfo:
    return MovieInfo(
        index, categories, title, [cat_ids[c] for c in categories], [words[w.lower()] for w in title.split()]
    )


def _title(full: str) -> str:
    m = _TITLE.match(full)
    return m.group(1) if m else full


def _parse_ml1m(source: Path) -> Meta:
    raw_movies = []
    for i, line in _lines(fetch.read_member(source, "ml-1m", "movies.dat")):
        try:
            mid, title, genres = line.split("::")
            raw_movies.append((int(mid), _title(title), genres.split("|")))
        except ValueError:
            raise _bad(source, "movies.dat", i, line) from None
    users = {}
    for i, line in _lines(fetch.read_member(source, "ml-1m", "users.dat")):
        try:
            uid, gender, age, job, _zip = line.split("::")
            if gender not in ("M", "F"):
                raise ValueError
            users[int(uid)] = UserInfo(uid, gender, int(age), int(job))
        except ValueError:
            raise _bad(source, "users.dat", i, line) from None
    categories = sorted({c for _, _, cs in raw_movies for c in cs})
    return _finish("ml-1m", raw_movies, users, categories, list(ML1M_JOBS), source)


def _ml100k_age(age: int) -> int:
    """Bucket an exact age into the ml-1m README's ranges (Under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+)."""
    return [a for a in age_table if a <= age][-1] if age >= 18 else 1


def _parse_ml100k(source: Path) -> Meta:
    genres = [ln.split("|")[0] for _, ln in _lines(fetch.read_member(source, "ml-100k", "u.genre"))]
    jobs = [ln for _, ln in _lines(fetch.read_member(source, "ml-100k", "u.occupation"))]
    raw_movies = []
    for i, line in _lines(fetch.read_member(source, "ml-100k", "u.item")):
        f = line.split("|")
        try:
            flags = [int(x) for x in f[-len(genres) :]]
            if len(f) < 5 + len(genres):
                raise ValueError
            raw_movies.append((int(f[0]), _title(f[1]), [g for g, on in zip(genres, flags) if on]))
        except ValueError:
            raise _bad(source, "u.item", i, line) from None
    users = {}
    for i, line in _lines(fetch.read_member(source, "ml-100k", "u.user")):
        try:
            uid, age, gender, job, _zip = line.split("|")
            if gender not in ("M", "F"):
                raise ValueError
            users[int(uid)] = UserInfo(uid, gender, _ml100k_age(int(age)), jobs.index(job))
        except ValueError:
            raise _bad(source, "u.user", i, line) from None
    return _finish("ml-100k", raw_movies, users, genres, jobs, source)


def _finish(dataset: str, raw_movies: list, users: dict, categories: list[str], jobs: list[str], source: Path) -> Meta:
    if not raw_movies or not users:
        raise RecsysError(f"{source}: no {'movies' if not raw_movies else 'users'} in the {dataset} archive")
    words = {w: i for i, w in enumerate(sorted({w.lower() for _, t, _ in raw_movies for w in t.split()}))}
    cat_ids = {c: i for i, c in enumerate(categories)}
    movies = {mid: _movie(mid, title, cs, cat_ids, words) for mid, title, cs in raw_movies}
    return Meta(dataset, users, movies, categories, list(words), jobs)


@functools.lru_cache(maxsize=8)
def _meta_cached(dataset: str, source: str, stamp: tuple) -> Meta:
    return (_parse_ml1m if dataset == "ml-1m" else _parse_ml100k)(Path(source))


def _stamp(source: Path) -> tuple:
    st = source.stat()
    return (st.st_size, st.st_mtime_ns) if source.is_file() else (st.st_mtime_ns,)


def _source_meta(dataset: str, data_dir, download: bool = True) -> tuple[Path, Meta]:
    """The archive's path and its metadata (parsed once per process and archive version)."""
    source = fetch.locate(dataset, data_dir, download)
    return source, _meta_cached(dataset, str(source), _stamp(source))


def read_meta(dataset: str = "ml-1m", data_dir: str | os.PathLike | None = None, download: bool = True) -> Meta:
    """Users, movies and vocabularies of the archive (parsed once per process)."""
    return _source_meta(dataset, data_dir, download)[1]


def _rating_members(dataset: str, split: str) -> list[str]:
    if dataset == "ml-1m":
        return ["ratings.dat"]
    return ["u.data"] if split == "random" else [f"{split}.base", f"{split}.test"]


def _parse_ratings(data: bytes, source: Path, member: str) -> np.ndarray:
    """`user, movie, rating, timestamp` lines (`::` or tab separated) as an int64 [n, 4] array."""
    text = data.replace(b"::", b"\t")
    n = text.count(b"\n") + (not text.endswith(b"\n"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            arr = np.fromstring(text, dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning):
        arr = np.zeros(0, np.int64)
    if arr.size != 4 * n:  # blank lines, or a malformed one: find out which, line by line
        n = 0
        for i, line in _lines(data):
            parts = line.replace("::", "\t").split("\t")
            if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
                raise _bad(source, member, i, line)
            n += 1
        if arr.size != 4 * n:
            raise RecsysError(f"{source}: {member} is malformed")
    return arr.reshape(n, 4)


def _check_ids(rows: np.ndarray, meta: Meta, source: Path, member: str) -> None:
    for col, known, what in ((0, meta.users, "user"), (1, meta.movies, "movie")):
        bad = ~np.isin(rows[:, col], np.fromiter(known, np.int64))
        if bad.any():
            raise RecsysError(
                f"{source}: {member} line {int(np.argmax(bad)) + 1} has unknown {what} id {rows[bad, col][0]}"
            )
    bad = (rows[:, 2] < 1) | (rows[:, 2] > 5)
    if bad.any():
        raise RecsysError(
            f"{source}: {member} line {int(np.argmax(bad)) + 1} has rating {rows[bad, 2][0]} outside 1..5"
        )


def _cache_files(source: Path, split: str) -> list[Path]:
    """Where the arrays are cached: beside the archive, and in the data home (used when that folder is read-only)."""
    name = f"{source.name}.{split}.recsys-v{_CACHE_VERSION}.npz"
    digest = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]
    return [source.parent / name, fetch.data_home() / "cache" / f"{digest}-{name}"]


def _writable(folder: Path) -> bool:
    """Writable and not marked read-only (a folder without write bits stays untouched, even for root)."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o200)


def _read_ratings(dataset: str, source: Path, split: str, meta: Meta) -> tuple[np.ndarray, np.ndarray | None]:
    """Rating rows [n, 3] (user, movie, stars) and, for a shipped split, its test mask; cached as .npz."""
    key = np.array([*_stamp(source), _CACHE_VERSION], np.int64)
    caches = _cache_files(source, split)
    for cache in caches:  # a damaged cache (its zip checksums fail, or its arrays do not fit) is rebuilt
        try:
            with np.load(cache, allow_pickle=False) as z:
                if np.array_equal(z["key"], key):
                    rows, is_test = z["rows"], (z["is_test"] if "is_test" in z.files else None)
                    if rows.ndim == 2 and rows.shape[1] == 3 and (is_test is None or is_test.shape == rows[:, 0].shape):
                        return rows, is_test
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            pass
    parts = []
    for member in _rating_members(dataset, split):
        rows = _parse_ratings(fetch.read_member(source, dataset, member), source, member)
        _check_ids(rows, meta, source, member)
        parts.append(rows[:, :3])
    rows = np.concatenate(parts).astype(np.int32)
    is_test = None if len(parts) == 1 else np.repeat([False, True], [len(parts[0]), len(parts[1])])
    arrays = {"key": key, "rows": rows} | ({} if is_test is None else {"is_test": is_test})
    for cache in caches if _writable(source.parent) else caches[1:]:
        if _save_npz(cache, arrays):
            break
    return rows, is_test


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Write atomically; False (and nothing left behind) when the folder is not writable."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False


def split_mask(n: int, rand_seed: int = 0, test_ratio: float = 0.1) -> np.ndarray:
    """The chapter's split: one `np.random.random() < test_ratio` per rating line, in file order, after seeding."""
    return np.random.RandomState(rand_seed).random_sample(n) < test_ratio


VALIDATION = ":val"  # `--split u1:val`: u1's training ratings alone, a seeded tenth of them as the test set


def _check_split(dataset: str, split: str) -> None:
    fetch.archive(dataset)
    if split.removesuffix(VALIDATION) not in SPLITS[dataset]:
        choices = ", ".join(SPLITS[dataset])
        raise RecsysError(
            f"{dataset} has no split {split!r}; choose one of {choices} (or NAME{VALIDATION}: validation)"
        )


def load(
    dataset: str = "ml-1m",
    data_dir: str | os.PathLike | None = None,
    split: str = "random",
    rand_seed: int = 0,
    test_ratio: float = 0.1,
    download: bool = True,
) -> MovieLens:
    """The archive as arrays (parsed once, then read from the cache beside it). A split named `NAME:val` is
    the validation split of NAME: its training ratings alone, a seeded tenth of them as the test set (for
    choosing settings without looking at test ratings)."""
    _check_split(dataset, split)
    source, meta = _source_meta(dataset, data_dir, download)
    rows, is_test = _read_ratings(dataset, source, split.removesuffix(VALIDATION), meta)
    if is_test is None:
        is_test = split_mask(len(rows), rand_seed, test_ratio)
    if split.endswith(VALIDATION):  # the test ratings are dropped; a tenth of the training ones stand in for them
        rows = rows[~is_test]
        is_test = np.random.RandomState(rand_seed + 12345).random_sample(len(rows)) < 0.1
    user, movie, stars = (rows[:, i] for i in range(3))
    return MovieLens(
        meta,
        Tables.from_meta(meta),
        source,
        split,
        user.astype(np.int64),
        movie.astype(np.int64),
        stars.astype(np.int8),
        is_test,
    )


# ---------------------------------------------------------------- the chapter's API


def _reader(dataset, data_dir, split, rand_seed, test_ratio, is_test) -> Iterator[list]:
    _check_split(dataset, split)
    source, meta = _source_meta(dataset, data_dir)
    rng = np.random.RandomState(rand_seed)
    members = _rating_members(dataset, split)
    if split != "random":
        members = members[1:] if is_test else members[:1]
    for member in members:
        for i, line in _lines(fetch.read_member(source, dataset, member)):
            if split == "random" and (rng.random_sample() < test_ratio) != is_test:
                continue
            try:
                uid, mid, rating, _ = line.replace("::", "\t").split("\t")
                usr, mov = meta.users[int(uid)], meta.movies[int(mid)]
            except (ValueError, KeyError):
                raise _bad(source, member, i, line) from None
            yield usr.value() + mov.value() + [[float(rating) * 2 - 5.0]]


def _creator(is_test: bool) -> Callable[..., Callable[[], Iterator[list]]]:
    def creator(
        data_dir=None, rand_seed: int = 0, test_ratio: float = 0.1, dataset: str = "ml-1m", split: str = "random"
    ):
        return lambda: _reader(dataset, data_dir, split, rand_seed, test_ratio, is_test)

    creator.__doc__ = (
        f"Reader creator over the {'test' if is_test else 'training'} samples, as the chapter's: each sample is "
        "`[uid, gender, age_idx, job, mid, [category ids], [title word ids], [rating*2-5]]`."
    )
    return creator


train = _creator(is_test=False)
test = _creator(is_test=True)


def movie_info(data_dir=None, dataset: str = "ml-1m") -> dict[int, MovieInfo]:
    return read_meta(dataset, data_dir).movies


def user_info(data_dir=None, dataset: str = "ml-1m") -> dict[int, UserInfo]:
    return read_meta(dataset, data_dir).users


def max_user_id(data_dir=None, dataset: str = "ml-1m") -> int:
    return max(read_meta(dataset, data_dir).users)


def max_movie_id(data_dir=None, dataset: str = "ml-1m") -> int:
    return max(read_meta(dataset, data_dir).movies)


def max_job_id(data_dir=None, dataset: str = "ml-1m") -> int:
    return max(u.job_id for u in read_meta(dataset, data_dir).users.values())


def movie_categories(data_dir=None, dataset: str = "ml-1m") -> dict[str, int]:
    return {c: i for i, c in enumerate(read_meta(dataset, data_dir).categories)}


def get_movie_title_dict(data_dir=None, dataset: str = "ml-1m") -> dict[str, int]:
    return {w: i for i, w in enumerate(read_meta(dataset, data_dir).title_words)}
