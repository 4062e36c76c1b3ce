"""Ratings in: new users and their ratings into the ratings database, and lists that read them at once.

Writes need the server's token (`Authorization: Bearer TOKEN`), checked before the body is read, compared in
constant time and never logged; a token in the URL is refused. A server without a ratings database or without
a token answers writes with 403 and how to enable them; a database that fails is a 503, never the client's 4xx.
A stored rating enters the user's history at the next request when every served model reads history
(retrieval, ranking); with the chapter's rating model it is only left out of the lists, and they change
after retraining (`python -m recsys.train --ratings-db PATH`).

Deletion (`DELETE /api/users/{user}/ratings/{movie}`, `DELETE /api/users/{user}/ratings`, with the token) takes
stored ratings out of the database at once: the next list neither reads nor excludes them, and the next
`train --ratings-db` never sees them. A model already trained on them keeps what it learnt until it is trained
again: it forgets at the next training. The ratings of the model's own archive are read-only: deleting one is
refused with 409.
"""

from __future__ import annotations

import contextlib
import hmac
import math
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from recsys.data.history import check_rated
from recsys.data.store import RatingsStore
from recsys.errors import RecsysError
from recsys.recommender import Recommender
from recsys.service.contract import NOT_FOUND, Whole
from recsys.service.guard import MAX_ID, Guarded, Id, before_body, query_has_token

HOW = "start serve with --ratings-db PATH and a token (--write-token-file FILE, or RECSYS_WRITE_TOKEN)"

router = APIRouter(route_class=Guarded)


class Unavailable(Exception):
    """The ratings database failed (damaged, locked, gone): the server's fault, answered 503."""


@contextlib.contextmanager
def database() -> Iterator[None]:
    """Around a call of the store: its one-line errors are the server's fault, not the request's."""
    try:
        yield
    except RecsysError as e:
        raise Unavailable(str(e)) from None


def refused(status: int, message: str) -> HTTPException:
    """A write that this server does not take: 401 (no or wrong token, with the scheme to use) or 403 (writes
    are off)."""
    return HTTPException(status, message, headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


class Writes:
    """The server's ratings database (or None) and write token (or None)."""

    def __init__(self, store: RatingsStore | None, token: str | None):
        self.store, self.token = store, token

    @property
    def status(self) -> str:
        """Whether writes are taken: "on", "no token" (a database, but no token) or "off" (no database)."""
        return "off" if self.store is None else "no token" if self.token is None else "on"

    def authorize(self, request: Request) -> RatingsStore:
        """The store, for a request that carries the token; else a 401 or 403 (`refused`)."""
        if self.store is None:
            raise refused(403, f"this server takes no ratings: {HOW}")
        if self.token is None:
            raise refused(403, f"writes are off: this server has no write token; {HOW}")
        if query_has_token(request.url.query):
            raise refused(401, "send the write token as the header Authorization: Bearer TOKEN, never in the URL")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise refused(401, "writes need the header Authorization: Bearer TOKEN")
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise refused(401, "wrong write token")
        return self.store


def _writes(request: Request) -> Writes:
    return request.app.state.writes


BEARER = HTTPBearer(scheme_name="bearer", auto_error=False)  # the schema's security scheme; `authorize` checks it
Scheme = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]


@before_body
def authorized(request: Request, _scheme: Scheme = None) -> RatingsStore:
    """A write route's dependency: the store, for a request that carries the token (checked before the body is
    read); else 401 or 403."""
    return _writes(request).authorize(request)


Store = Annotated[RatingsStore, Depends(authorized)]


def _rec(request: Request) -> Recommender:
    return request.app.state.holder.current


def stored_ratings(request: Request, user: int) -> list[tuple[int, float]]:
    """The user's stored (movie id, rating) pairs; none without a ratings database."""
    store = _writes(request).store
    if store is None:
        return []
    with database():
        return [(m, r) for m, r, _seq, _at in store.ratings_of(user)]


def stored_user(request: Request, user: int) -> dict | None:
    """A user the ratings database made (their features, as `Recommender.recommend_new` takes them), or None."""
    store = _writes(request).store
    if store is None or not 0 < user <= MAX_ID:
        return None
    with database():
        return store.user(user)


def check_user(request: Request, rec: Recommender, user: int) -> dict | None:
    """None for a user of the model's data, the features of a stored new user; `UnknownId` otherwise."""
    if 0 < user <= MAX_ID and rec.model.has_user(user):
        return None
    features = stored_user(request, user)
    if features is None:
        rec.user_row(user)  # raises, naming the data's users
    return features


def recommend(request: Request, user: int, k: int, exclude_rated: str = "all", **options) -> dict:
    """A user's list with their stored ratings: a known user's, or a stored new user's (whose ratings are all
    stored: `exclude_rated` leaves all of them out alike); `options`: `Recommender.recommend`'s."""
    rec = _rec(request)
    features = check_user(request, rec, user)
    rated = stored_ratings(request, user)
    if features is None:
        return rec.recommend(user, k, rated, exclude_rated=exclude_rated, **options)
    return {"user_id": user} | rec.recommend_new(k, **features, rated=rated, strict=False, **options)


def list_effect(rec: Recommender) -> str:
    if rec.reads_history:
        return "now: the list reads the user's stored ratings from the next request on"
    return "after retraining: the served model reads no history, so the movie is only left out of the list until then"


class Rating(BaseModel):
    """A user's rating of a movie, in the data's own ids and on its scale."""

    model_config = ConfigDict(extra="forbid", strict=True)
    user_id: Whole = Field(ge=1)
    movie_id: Whole = Field(ge=1)
    rating: float = Field(description="on the data's scale (ml-100k, ml-1m: 1..5 whole stars)")


class NewUser(BaseModel):
    """A new user: the chapter's gender, age and job, or the data's own features."""

    model_config = ConfigDict(extra="forbid", strict=True)
    gender: str | None = Field(None, pattern="^[MF]$")
    age: Whole | None = Field(None, ge=1, le=120, description="age in years, or the bucket code")
    job: Whole | None = Field(None, ge=0)
    features: dict[str, str] | None = Field(None, description="a new user's features, for data with its own")


RESPONSES = {
    401: {"description": "no or wrong write token (checked before the body is read), or a token in the URL"},
    403: {"description": "this server takes no writes (no ratings database or no token)"},
    404: {"description": NOT_FOUND},
}  # 415 and 422, on every write, come from `contract`


@router.post("/api/ratings", status_code=201, responses=RESPONSES)
def rate(request: Request, rating: Rating, store: Store):
    """Store a rating (`Authorization: Bearer TOKEN`). The latest rating of a (user, movie) pair counts: a
    re-rating replaces it. Answered once the row is on disk."""
    rec = _rec(request)
    check_user(request, rec, rating.user_id)
    rec.movie_row(rating.movie_id)
    if not math.isfinite(rating.rating):
        raise RecsysError(f"rating must be a number on the data's scale, got {rating.rating}")
    check_rated(rating.movie_id, rating.rating, rec.model.has_movie, rec.model.rating_scale)
    with database():
        seq, replaced = store.rate(rating.user_id, rating.movie_id, rating.rating)
    return {"user_id": rating.user_id, "movie_id": rating.movie_id, "rating": rating.rating, "seq": seq,
            "replaced": replaced, "list_changes": list_effect(rec)}  # fmt: skip


@router.post("/api/users", status_code=201, responses=RESPONSES)
def new_user(request: Request, who: NewUser, store: Store):
    """Make a new user (`Authorization: Bearer TOKEN`) with the data's features; answers their new id, with
    which they rate through `POST /api/ratings`."""
    rec = _rec(request)
    features = rec.new_user(who.gender, who.age, who.job, who.features)
    with database():
        user = store.add_user(features, int(max(rec.model.user_ids)))
    return {"user_id": user} | features


@router.get("/api/users/{user}/ratings", responses={404: RESPONSES[404]})
def ratings(request: Request, user: Id):
    """The ratings stored for a user through `POST /api/ratings`, oldest first (none without a database)."""
    rec = _rec(request)
    features = check_user(request, rec, user)
    store = _writes(request).store
    with database():
        rows = [] if store is None else store.ratings_of(user)
    return {
        "user_id": user,
        "new_user": features is not None,
        "ratings": [
            {"movie_id": m, "title": rec.movie(m)["title"], "rating": r, "seq": q, "at": at} for m, r, q, at in rows
        ],  # fmt: skip
        "list_changes": list_effect(rec),
    }


ARCHIVE = "a rating of the model's own data (its archive), which is read-only: only stored ratings can be deleted"
DELETES = RESPONSES | {
    404: {"description": f"{NOT_FOUND}, or no such stored rating"},
    409: {"description": ARCHIVE},
}


def in_archive(rec: Recommender, user: int, movie: int) -> bool:
    """Whether the model's data holds a rating of `movie` by `user` (training or test split)."""
    if not rec.model.has_user(user):
        return False
    movies, _, _ = rec.model.ratings_of(rec.model.user_row(user))
    return bool((movies == rec.model.movie_row(movie)).any())


@router.delete("/api/users/{user}/ratings/{movie}", status_code=204, responses=DELETES)
def unrate(request: Request, user: Id, movie: Id, store: Store) -> Response:
    """Delete the user's stored rating of the movie (`Authorization: Bearer TOKEN`): 204 once it is gone from
    disk. The lists and `GET /api/users/{user}/ratings` change at once; 404 when no such rating is stored, 409
    when the rating is the archive's (read-only). A model already trained on the rating keeps what it learnt
    from it until it is trained again: the next `train --ratings-db` no longer reads it."""
    rec = _rec(request)
    check_user(request, rec, user)
    rec.movie_row(movie)
    with database():
        deleted = store.delete_rating(user, movie)
    if deleted:
        return Response(status_code=204)
    if in_archive(rec, user, movie):
        raise HTTPException(409, f"user {user}'s rating of movie {movie} is {ARCHIVE}")
    raise HTTPException(404, f"user {user} has no stored rating of movie {movie}")


@router.delete("/api/users/{user}/ratings", status_code=204, responses=RESPONSES)
def unrate_all(request: Request, user: Id, store: Store) -> Response:
    """Delete every stored rating of the user (`Authorization: Bearer TOKEN`) in one transaction: 204 once they
    are gone from disk, whether or not there were any. The archive's ratings stay (read-only). A model already
    trained on them keeps what it learnt until it is trained again: the next `train --ratings-db` no longer
    reads them."""
    check_user(request, _rec(request), user)
    with database():
        store.delete_ratings(user)
    return Response(status_code=204)
