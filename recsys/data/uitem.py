"""The ml-100k layout: `u.item`, `u.user`, `u.genre`, `u.occupation`, and `u.data` or a shipped split's
`<name>.base` / `<name>.test` (tab separated)."""

from __future__ import annotations

from pathlib import Path

from recsys.data import fetch
from recsys.data.common import Ratings, bad_line, int_rows, lines, movies_from, whole_star_ratings
from recsys.data.schema import Meta, UserInfo, age_table
from recsys.errors import RecsysError

DATASET = "ml-100k"
SHIPPED_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")


def bucket_age(age: int) -> int:
    """Bucket an exact age into the ml-1m README's ranges (Under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+)."""
    return [a for a in age_table if a <= age][-1] if age >= 18 else 1


def read_meta(source: Path) -> Meta:
    """Users, movies and vocabularies (genres and occupations in the order of `u.genre` / `u.occupation`)."""
    genres = [ln.split("|")[0] for _, ln in lines(fetch.read_member(source, DATASET, "u.genre"))]
    jobs = [ln for _, ln in lines(fetch.read_member(source, DATASET, "u.occupation"))]
    raw = []
    for i, line in lines(fetch.read_member(source, DATASET, "u.item")):
        f = line.split("|")
        try:
            flags = [int(x) for x in f[-len(genres) :]]
            if len(f) < 5 + len(genres):
                raise ValueError
            raw.append((int(f[0]), f[1], [g for g, on in zip(genres, flags) if on]))
        except ValueError:
            raise bad_line(source, "u.item", i, line) from None
    users = {}
    for i, line in lines(fetch.read_member(source, DATASET, "u.user")):
        try:
            uid, age, gender, job, _zip = line.split("|")
            if gender not in ("M", "F"):
                raise ValueError
            users[int(uid)] = UserInfo(uid, gender, bucket_age(int(age)), jobs.index(job))
        except ValueError:
            raise bad_line(source, "u.user", i, line) from None
    if not raw or not users:
        raise RecsysError(f"{source}: no {'movies' if not raw else 'users'} in the {DATASET} archive")
    movies, words = movies_from(raw, genres)
    return Meta(DATASET, users, movies, genres, words, jobs)


def rating_members(split: str) -> list[str]:
    """The files holding a split's ratings: `u.data` for every computed split, else `<split>.base/.test`."""
    return [f"{split}.base", f"{split}.test"] if split in SHIPPED_SPLITS else ["u.data"]


def read_ratings(source: Path, split: str, meta: Meta) -> Ratings:
    """The split's ratings in file order (a shipped split: its `.base` lines, then its `.test` lines)."""
    members = rating_members(split)
    parts = [int_rows(fetch.read_member(source, DATASET, m), source, m) for m in members]
    return whole_star_ratings(parts, meta, source, members)
