"""A list's options in one place, for the query string and for the JSON body alike: `explain`, `exclude_rated`
and the filters (`genres`, `exclude_genres`, `exclude`, `years`), as `Recommender.recommend` takes them. The
library reads and checks their values (one-line errors); `recsys.service.contract` writes the same rules
into the schema."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, Query
from pydantic import BaseModel, Field

from recsys.service.contract import Whole
from recsys.topn.filters import EXCLUDE_RATED_HELP

WHY = (
    "each movie names up to three movies the user rated that it is there because of, with their share of its "
    'score: "because": [{"movie_id", "title", "share"}]; with no rated movies, "because": [] and a "reason" '
    "(recsys.topn.reasons)"
)
GENRES = "only movies of any of these genres, separated by commas (e.g. Comedy,Drama)"
EXCLUDE_GENRES = "no movie of these genres, separated by commas (e.g. Horror)"
EXCLUDE = "none of these movie ids, separated by commas (e.g. 1,2,3)"
YEARS = "only movies released in these years, by the year in the title: FIRST-LAST (e.g. 1990-1999) or one year"
FILTERS = ("genres", "exclude_genres", "exclude", "years")
ExcludeRated = Literal["all", "train"]


def filter_query(
    explain: Annotated[bool, Query(description=WHY)] = False,
    genres: Annotated[str | None, Query(description=GENRES)] = None,
    exclude_genres: Annotated[str | None, Query(description=EXCLUDE_GENRES)] = None,
    exclude: Annotated[str | None, Query(description=EXCLUDE)] = None,
    years: Annotated[str | None, Query(description=YEARS)] = None,
) -> dict:
    """A list's options from its query string (a new user's: no `exclude_rated`), as keywords."""
    given = {"genres": genres, "exclude_genres": exclude_genres, "exclude": exclude, "years": years}
    return {"explain": explain} | {k: v for k, v in given.items() if v is not None}


def list_query(
    options: Annotated[dict, Depends(filter_query)],
    exclude_rated: Annotated[ExcludeRated, Query(description=EXCLUDE_RATED_HELP)] = "all",
) -> dict:
    """A known user's list options from its query string, as keywords."""
    return options | {"exclude_rated": exclude_rated}


NewUserOptions = Annotated[dict, Depends(filter_query)]
ListOptions = Annotated[dict, Depends(list_query)]


class BodyOptions(BaseModel):
    """The same options as JSON fields; `exclude_rated` is a known user's."""

    explain: bool = Field(False, description=WHY)
    exclude_rated: ExcludeRated | None = Field(None, description=f"a known user's: {EXCLUDE_RATED_HELP}")
    genres: str | list[str] | None = Field(None, description=f"{GENRES}, or a list of them")
    exclude_genres: str | list[str] | None = Field(None, description=f"{EXCLUDE_GENRES}, or a list of them")
    exclude: str | list[Whole] | None = Field(None, description=f"{EXCLUDE}, or a list of them")
    years: str | None = Field(None, description=YEARS)

    def options(self) -> dict:
        """The options given, as keywords."""
        given = {k: getattr(self, k) for k in (*FILTERS, "exclude_rated")}
        return {"explain": self.explain} | {k: v for k, v in given.items() if v is not None}
