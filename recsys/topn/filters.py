"""What a served list may hold: never a movie the user rated, and only movies that pass a client's filters.

A served list leaves out every movie the user rated in the model's data, training and test splits alike
(`exclude_rated="all"`, the default), and the ones they rated since (a ratings store's). `exclude_rated="train"`
leaves out the training ratings alone: the lists `recsys.evaluate` and the top-N metrics rank, as the
protocol requires (a test rating is what a list is scored against, so it must be able to appear).

Filters: genres to include (any of them) and to exclude, movie ids to exclude, and a release-year range (the
year in the title; a movie without one fails a year filter). A left-out movie that is not part of the user's
history is "banned": the first stage searches deeper, k plus the banned movies (through the index, or exactly
over the catalogue where that asks for much of it), so a list is k long wherever k movies pass, and the user's
history (what the item-item score and the second stage's pair features read) stays what it was.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsys.errors import RecsysError, UnknownId
from recsys.modeldir import ModelDir
from recsys.topn import first_stage, nearest

EXCLUDE_RATED = ("all", "train")
EXCLUDE_RATED_HELP = (
    "which of the user's ratings a list leaves out: all (every split of the model's data, and stored ratings; "
    "the default) or train (the training split alone, and stored ratings: the lists evaluate ranks)"
)
# The text forms (the CLI's flags, the query string): names and ids separated by commas, blanks around them
# allowed; a range of years, FIRST-LAST or one year. The service's schema states the same patterns.
YEARS_PATTERN = r"^ *([0-9]{1,4}) *(?:- *([0-9]{1,4}) *)?$"
IDS_PATTERN = r"^ *-?[0-9]+ *(, *-?[0-9]+ *)*$"
_YEARS, _ID = re.compile(YEARS_PATTERN), re.compile(r" *-?[0-9]+ *")


class NothingPasses(RecsysError):
    """A filter that no movie of the catalogue passes (the service answers 404: nothing to list)."""


def names_pattern(names: list[str]) -> str:
    """The pattern of comma-separated names among `names` (blanks around them allowed)."""
    one = "|".join(re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", n) for n in names)  # as JSON Schema's regex reads it
    return f"^ *({one}) *(, *({one}) *)*$"


def check_exclude_rated(value: str) -> str:
    """`value`, unless it is not one of `EXCLUDE_RATED` (one-line error)."""
    if value not in EXCLUDE_RATED:
        raise RecsysError(f"exclude_rated must be one of {', '.join(EXCLUDE_RATED)}, got {value!r}")
    return value


def _names(value, what: str) -> tuple[str, ...]:
    """Comma-separated text, or a sequence of strings, as a tuple of names."""
    if value is None:
        return ()
    items = [x.strip(" ") for x in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, Iterable) or not all(isinstance(x, str) for x in items):
        raise RecsysError(f"{what} are names separated by commas (e.g. Comedy,Drama), got {value!r}")
    names = tuple(items)
    if isinstance(value, str) and not all(names):
        raise RecsysError(f"{what} are names separated by commas (e.g. Comedy,Drama), got {value!r}")
    return names


def _ids(value) -> tuple[int, ...]:
    """Comma-separated movie ids, or a sequence of whole numbers."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    try:
        return tuple(_whole(x) for x in items)
    except (TypeError, ValueError):
        raise RecsysError(f"movie ids to exclude are whole numbers separated by commas, got {value!r}") from None


def _whole(x) -> int:
    if isinstance(x, str) and _ID.fullmatch(x):
        return int(x)
    if isinstance(x, int | np.integer) and not isinstance(x, bool):
        return int(x)
    raise ValueError(x)


def _years(value) -> tuple[int, int] | None:
    """ "1990-1999" or "1995" (or a (first, last) pair) as (first, last), both included."""
    if value is None:
        return None
    if isinstance(value, str):
        m = _YEARS.fullmatch(value)
        if m is None:
            raise RecsysError(f"a release-year range is FIRST-LAST or one year (e.g. 1990-1999), got {value!r}")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
    else:
        try:
            first, last = (_whole(x) for x in value)
        except (TypeError, ValueError):
            raise RecsysError(f"a release-year range is two whole years (first, last), got {value!r}") from None
    if first > last:
        raise NothingPasses(f"the release-year range {first}-{last} is empty: its first year is after its last")
    return first, last


@dataclass(frozen=True)
class Filters:
    """A client's filters: `genres` (a movie passes with any of them), `exclude_genres`, `exclude` (movie ids)
    and `years` (first, last). Empty ones pass every movie."""

    genres: tuple[str, ...] = ()
    exclude_genres: tuple[str, ...] = ()
    exclude: tuple[int, ...] = ()
    years: tuple[int, int] | None = None

    @classmethod
    def parse(cls, genres=None, exclude_genres=None, exclude=None, years=None) -> Filters:
        """From the keywords' values: comma-separated text (as the CLI and the query string give them) or
        sequences (genres: names; exclude: movie ids; years: "1990-1999", "1995" or a (first, last) pair)."""
        return cls(_names(genres, "genres"), _names(exclude_genres, "genres to exclude"), _ids(exclude), _years(years))

    def __bool__(self) -> bool:
        return bool(self.genres or self.exclude_genres or self.exclude or self.years)


def banned(md: ModelDir, catalogue: Catalogue, rows, exclude_rated: str, chosen: Filters) -> sp.csr_matrix | None:
    """The catalogue columns ([n, M] sparse 0/1, None for none) that the lists of the user rows `rows` (None: a
    new user) leave out besides their histories: their test-split ratings (`exclude_rated` "all"; "train"
    leaves out the training split alone, as evaluation ranks), and the movies failing `chosen`."""
    check_exclude_rated(exclude_rated)
    for m in chosen.exclude:
        if not md.has_movie(m):
            raise UnknownId(f"unknown movie id {m} to exclude; {md.meta['dataset']} has no such movie")
    parts = []
    if chosen:
        excluded = np.searchsorted(md.movie_ids, [md.movie_row(m) for m in chosen.exclude]).astype(np.int64)
        fails = catalogue.failing(chosen, excluded)
        parts.append(sp.csr_matrix(np.broadcast_to(fails, (len(rows), len(fails)))))
    if exclude_rated == "all" and len(rows):
        parts.append(sp.vstack([_columns(md, _tested(md, r)) for r in rows], format="csr"))
    out = sum(parts[1:], parts[0]) if parts else None
    return out if out is not None and out.nnz else None


def _tested(md: ModelDir, row: int | None) -> np.ndarray:
    """The movie rows the user row `row` rated in the model's test split (none for a new user, None)."""
    if row is None:
        return np.zeros(0, np.int64)
    movies, _, is_test = md.ratings_of(row)
    return movies[is_test].astype(np.int64)


def _columns(md: ModelDir, rows: np.ndarray) -> sp.csr_matrix:
    """Movie rows as one sparse 0/1 catalogue row [1, M]."""
    cols = np.searchsorted(md.movie_ids, rows)
    return sp.csr_matrix((np.ones(len(cols), bool), cols, [0, len(cols)]), shape=(1, len(md.movie_ids)))


def release_years(md: ModelDir) -> np.ndarray:
    """Each movie row's release year (0: none), as the model dir saved them, or, for a model dir saved before
    it kept them, as its archive's titles give them (one error when that is gone)."""
    if "movie_year" in md.arrays:
        return md.arrays["movie_year"]
    from recsys.movielens import read_meta

    meta = read_meta(md.meta["dataset"], md.source(), download=False)
    years = np.zeros(len(md.arrays["movie_category"]), np.int64)
    for row, info in meta.movies.items():
        years[row] = info.year or 0
    return years


class Catalogue:
    """What the filters read of a model dir's catalogue columns: their genres (`member` [M, G] bool over the
    names `genres`) and release years (`years` [M], 0: none; read on first use)."""

    def __init__(self, md: ModelDir):
        self.md, self.genres = md, list(md.meta["categories"])
        self.member = np.zeros((len(md.movie_ids), len(self.genres)), bool)
        for col, row in enumerate(md.movie_ids.tolist()):
            self.member[col, [self.genres.index(g) for g in md.genres(row)]] = True

    @functools.cached_property
    def years(self) -> np.ndarray:
        return np.asarray(release_years(self.md))[self.md.movie_ids]

    def failing(self, filters: Filters, excluded: np.ndarray) -> np.ndarray:
        """[M] bool: the columns that fail `filters`, whose movie ids to exclude are the columns `excluded`.
        One-line error for a genre the data lacks (naming its genres), or a filter no movie passes."""
        for name in filters.genres + filters.exclude_genres:
            if name not in self.genres:
                raise RecsysError(f"unknown genre {name!r}; the genres of this data: {', '.join(self.genres)}")
        fails = np.zeros(len(self.years), bool)
        fails[excluded] = True
        if filters.genres:
            fails |= ~self.member[:, [self.genres.index(g) for g in filters.genres]].any(axis=1)
        if filters.exclude_genres:
            fails |= self.member[:, [self.genres.index(g) for g in filters.exclude_genres]].any(axis=1)
        if filters.years is not None:
            first, last = filters.years
            fails |= (self.years < first) | (self.years > last)  # no year (0) fails any range
        if fails.all():
            raise NothingPasses(f"no movie passes these filters ({describe(filters)})")
        return fails


def describe(filters: Filters) -> str:
    """The filters as words, for messages."""
    parts = [f"genres {','.join(filters.genres)}"] if filters.genres else []
    parts += [f"without {','.join(filters.exclude_genres)}"] if filters.exclude_genres else []
    parts += [f"{len(filters.exclude)} movies excluded"] if filters.exclude else []
    parts += [f"released {filters.years[0]}-{filters.years[1]}"] if filters.years else []
    return "; ".join(parts)


def top_k_outside(stage, ix, movies: np.ndarray, queries: np.ndarray, seen, banned, k: int, items=None) -> tuple:
    """`first_stage.top_k` with the columns `banned` [n, M] (sparse 0/1, or None) left out too, though not part
    of the histories `seen`: each row's top k plus its banned columns outside `seen`, banned ones dropped, so
    a row keeps k wherever k columns are neither seen nor banned. ([n, k] columns, -1 padded; [n, k] scores)."""
    if banned is None or banned.nnz == 0:
        return first_stage.top_k(stage, ix, movies, queries, seen, k, items)
    seen, banned = sp.csr_matrix(seen, dtype=bool), sp.csr_matrix(banned, dtype=bool)
    extra = (banned > seen).getnnz(axis=1)
    deeper = min(k + int(extra.max()), len(movies))
    cols, values = first_stage.top_k(stage, ix, movies, queries, seen, deeper, items)
    banned.sort_indices()
    drop = (cols < 0) | nearest._is_seen(banned, cols)
    order = np.argsort(drop, axis=1, kind="stable")[:, :k]  # the kept ones first, in their order
    cols, values = np.take_along_axis(cols, order, 1), np.take_along_axis(values, order, 1)
    dropped = np.take_along_axis(drop, order, 1)
    return np.where(dropped, -1, cols), np.where(dropped, 0.0, values)
