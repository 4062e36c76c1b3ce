"""MovieLens reader: a drop-in for the chapter's `paddle.dataset.movielens`, plus ready numpy arrays.

Chapter calls keep their names and return shapes (`train()`, `test()`, `movie_info()`, `user_info()`,
`max_user_id()`, ...). Vocabularies are deterministic: title words and ml-1m genres in sorted order,
ml-100k genres and occupations in the order of `u.genre` / `u.occupation`.

`load()` is the fast path: the data becomes numpy columns once (cached beside it) and `Tables.features()`
turns (user, movie) row pairs into the network's inputs with a few gathers. The data layer itself lives in
`recsys.data` (one module per source format: ml-1m `.dat`, ml-100k `u.*`, CSV); this module re-exports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from recsys.data import fetch
from recsys.data.common import bad_line, lines
from recsys.data.dat import JOBS as ML1M_JOBS
from recsys.data.loader import (
    CACHE_VERSION,
    DATASETS,
    SPLITS,
    VALIDATION,
    _meta_cached,
    check_split,
    load,
    read_meta,
    source_meta,
    split_mask,
    temporal_mask,
)
from recsys.data.schema import (
    AGE_GROUPS,
    FEED_NAMES,
    Meta,
    MovieInfo,
    MovieLens,
    Tables,
    UserInfo,
    age_index,
    age_table,
    unknown_user_features,
)
from recsys.data.uitem import SHIPPED_SPLITS, rating_members
from recsys.errors import RecsysError

__all__ = [
    "AGE_GROUPS",
    "CACHE_VERSION",
    "DATASETS",
    "FEED_NAMES",
    "ML1M_JOBS",
    "SPLITS",
    "VALIDATION",
    "Meta",
    "MovieInfo",
    "MovieLens",
    "Tables",
    "UserInfo",
    "_meta_cached",
    "age_index",
    "age_table",
    "get_movie_title_dict",
    "load",
    "max_job_id",
    "max_movie_id",
    "max_user_id",
    "movie_categories",
    "movie_info",
    "read_meta",
    "split_mask",
    "temporal_mask",
    "test",
    "train",
    "unknown_user_features",
    "user_info",
]


# ---------------------------------------------------------------- the chapter's API


def _line_reader(dataset, data_dir, split, rand_seed, test_ratio, is_test) -> Iterator[list]:
    """ml-1m / ml-100k, random or shipped split: the rating lines themselves, as the chapter reads them."""
    source, meta = source_meta(dataset, data_dir)
    rng = np.random.RandomState(rand_seed)
    members = ["ratings.dat"] if dataset == "ml-1m" else rating_members(split)
    if split != "random":
        members = members[1:] if is_test else members[:1]
    for member in members:
        for i, line in lines(fetch.read_member(source, dataset, member)):
            if split == "random" and (rng.random_sample() < test_ratio) != is_test:
                continue
            try:
                uid, mid, rating, _ = line.replace("::", "\t").split("\t")
                usr, mov = meta.users[int(uid)], meta.movies[int(mid)]
            except (ValueError, KeyError):
                raise bad_line(source, member, i, line) from None
            yield usr.value() + mov.value() + [[float(rating) * 2 - 5.0]]


def _array_reader(dataset, data_dir, split, rand_seed, test_ratio, is_test) -> Iterator[list]:
    """Any layout and split, from the arrays: `[user row, *user feature ids, movie row, [category ids],
    [title word ids], [rating*2-5]]`."""
    data = load(dataset, data_dir, split, rand_seed, test_ratio)
    label = data.label
    for j in np.flatnonzero(data.is_test == is_test):
        u, m = int(data.user[j]), int(data.movie[j])
        user = [u, *(int(x) for x in data.tables.user[u])]
        yield user + data.meta.movies[m].value() + [[float(label[j, 0])]]


def _reader(dataset, data_dir, split, rand_seed, test_ratio, is_test) -> Iterator[list]:
    check_split(dataset, split)
    if dataset in ("ml-1m", "ml-100k") and (split == "random" or split in SHIPPED_SPLITS):
        return _line_reader(dataset, data_dir, split, rand_seed, test_ratio, is_test)
    return _array_reader(dataset, data_dir, split, rand_seed, test_ratio, is_test)


def _creator(is_test: bool) -> Callable[..., Callable[[], Iterator[list]]]:
    def creator(
        data_dir=None, rand_seed: int = 0, test_ratio: float = 0.1, dataset: str = "ml-1m", split: str = "random"
    ):
        return lambda: _reader(dataset, data_dir, split, rand_seed, test_ratio, is_test)

    creator.__doc__ = (
        f"Reader creator over the {'test' if is_test else 'training'} samples, as the chapter's: each sample is "
        "`[uid, gender, age_idx, job, mid, [category ids], [title word ids], [rating*2-5]]` (other layouts: "
        "their own user features in place of gender, age and job)."
    )
    return creator


train = _creator(is_test=False)
test = _creator(is_test=True)


def movie_info(data_dir=None, dataset: str = "ml-1m") -> dict[int, MovieInfo]:
    return read_meta(dataset, data_dir).movies


def user_info(data_dir=None, dataset: str = "ml-1m") -> dict[int, UserInfo]:
    """The chapter's users by id (ml-1m, ml-100k; empty for the CSV layouts, whose users are rows of
    `Meta.user_table`)."""
    return read_meta(dataset, data_dir).users


def max_user_id(data_dir=None, dataset: str = "ml-1m") -> int:
    """The largest user row (ml-1m, ml-100k: the largest user id)."""
    return len(read_meta(dataset, data_dir).user_ids) - 1


def max_movie_id(data_dir=None, dataset: str = "ml-1m") -> int:
    """The largest movie row (ml-1m, ml-100k: the largest movie id)."""
    return len(read_meta(dataset, data_dir).movie_ids) - 1


def max_job_id(data_dir=None, dataset: str = "ml-1m") -> int:
    meta = read_meta(dataset, data_dir)
    if not meta.users:
        raise RecsysError(f"{dataset} has no job feature")
    return max(u.job_id for u in meta.users.values())


def movie_categories(data_dir=None, dataset: str = "ml-1m") -> dict[str, int]:
    return {c: i for i, c in enumerate(read_meta(dataset, data_dir).categories)}


def get_movie_title_dict(data_dir=None, dataset: str = "ml-1m") -> dict[str, int]:
    return {w: i for i, w in enumerate(read_meta(dataset, data_dir).title_words)}
