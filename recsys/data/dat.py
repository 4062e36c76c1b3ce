"""The ml-1m layout: `movies.dat`, `users.dat`, `ratings.dat` (`::` separated, latin-1)."""

from __future__ import annotations

from pathlib import Path

from recsys.data import fetch
from recsys.data.common import Ratings, bad_line, int_rows, lines, movies_from, whole_star_ratings
from recsys.data.schema import Meta, UserInfo
from recsys.errors import RecsysError

DATASET = "ml-1m"
JOBS = (
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


def read_meta(source: Path) -> Meta:
    """Users, movies and vocabularies (genres and title words sorted; row == own id)."""
    raw = []
    for i, line in lines(fetch.read_member(source, DATASET, "movies.dat")):
        try:
            mid, title, genres = line.split("::")
            raw.append((int(mid), title, genres.split("|")))
        except ValueError:
            raise bad_line(source, "movies.dat", i, line) from None
    users = {}
    for i, line in lines(fetch.read_member(source, DATASET, "users.dat")):
        try:
            uid, gender, age, job, _zip = line.split("::")
            if gender not in ("M", "F"):
                raise ValueError
            users[int(uid)] = UserInfo(uid, gender, int(age), int(job))
        except ValueError:
            raise bad_line(source, "users.dat", i, line) from None
    if not raw or not users:
        raise RecsysError(f"{source}: no {'movies' if not raw else 'users'} in the {DATASET} archive")
    categories = sorted({c for _, _, cs in raw for c in cs})
    movies, words = movies_from(raw, categories)
    return Meta(DATASET, users, movies, categories, words, list(JOBS))


def read_ratings(source: Path, split: str, meta: Meta) -> Ratings:
    """All of `ratings.dat`, in file order."""
    return whole_star_ratings(
        [int_rows(fetch.read_member(source, DATASET, "ratings.dat"), source, "ratings.dat")],
        meta,
        source,
        ["ratings.dat"],
    )
