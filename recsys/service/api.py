"""The HTTP API: handlers on one router, errors as one-line JSON, the page, and docs served from local assets.

Every answer mirrors `recsys.infer --json`. Errors speak of the API's own parameters: 404 for an unknown
user or movie, 413 for a body over the bound, 422 for a bad value; 500 and 503 for the server's own faults
(never blamed on the client); `{"error": "..."}` on one line. JSON bodies are typed strictly (a `true` is not
a user id, a key may not be given twice). Handlers are plain functions: FastAPI runs them on its threadpool,
so the event loop stays free for other requests. `guard` holds what every request passes first. Swagger UI's
scripts come from the `fastapi-offline` package, so `/docs` makes no request off this machine.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.routing import Match

from recsys.data.store import RatingsStore
from recsys.errors import RecsysError
from recsys.modeldir import ModelDir
from recsys.movielens import AGE_GROUPS, age_table
from recsys.recommender import Recommender, UnknownId
from recsys.service import contract, feedback, guard
from recsys.service.contract import MAX_RATED, Pairs, Whole
from recsys.service.guard import Id
from recsys.service.options import BodyOptions, ListOptions, NewUserOptions
from recsys.service.reload import Holder
from recsys.topn.filters import NothingPasses

STATIC = Path(__file__).with_name("static")
MAX_K = 1000
K = Query(10, ge=1, le=MAX_K, description="list length")

router = APIRouter(route_class=guard.Guarded)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


async def recsys_error(_request: Request, exc: RecsysError) -> JSONResponse:
    return _error(404 if isinstance(exc, UnknownId | NothingPasses) else 422, str(exc))


async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if request.method == "POST" and kind != "application/json":
        return _error(415, f"send a JSON body with the header content-type: application/json (got {kind or 'none'})")
    if first.get("type") == "json_invalid":
        return _error(422, f"malformed JSON body: {first.get('ctx', {}).get('error', 'cannot parse it')}")
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
    return _error(422, f"{where or 'request'}: {first.get('msg', 'invalid')}")


async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code == 400:  # a body FastAPI cannot read (not UTF-8): malformed, as any unparsable JSON
        return _error(422, f"malformed JSON body: {exc.detail}")
    response = _error(exc.status_code, exc.detail)
    response.headers.update(exc.headers or {})  # a 401's WWW-Authenticate
    if exc.status_code == 405:  # HEAD and OPTIONS are answered wherever GET is
        methods = _allowed(_request) | (set(exc.headers["Allow"].split(", ")) if exc.headers else set())
        response.headers["Allow"] = ", ".join(sorted(methods | ({"HEAD"} if "GET" in methods else set()) | {"OPTIONS"}))
    if exc.status_code == 413:  # the rest of the body is not waited for
        response.headers["Connection"] = "close"
    return response


def _allowed(request: Request) -> set[str]:
    """Every method an API route of the request's path takes (a 405 names the first such route's alone)."""
    routes = [*router.routes, *feedback.router.routes]
    return {m for route in routes if route.matches(request.scope)[0] != Match.NONE for m in route.methods}


async def server_fault(_request: Request, exc: feedback.Unavailable) -> JSONResponse:
    return _error(503, str(exc))


async def unexpected(_request: Request, exc: Exception) -> JSONResponse:  # never a traceback on the wire
    if isinstance(exc, MemoryError | OSError):  # this server's resources: another try may be answered
        return _error(503, f"the server cannot answer now: {type(exc).__name__}")
    return _error(500, f"the server failed on this request: {type(exc).__name__}")


HANDLERS = {
    feedback.Unavailable: server_fault,
    RecsysError: recsys_error,
    RequestValidationError: invalid,
    HTTPException: http_error,
    Exception: unexpected,
}


def _rec(request: Request) -> Recommender:
    return request.app.state.holder.current


def _new_user_hint(rec: Recommender) -> str:
    """How a new user of data without the chapter's features asks for recommendations."""
    if not rec.features:
        return 'POST /api/recommend with {"rated": [[movie id, stars], ...]}'
    name, values = next(iter(rec.features.items()))
    example = next((v for v in values if v), "")
    return f'POST /api/recommend with {{"features": {{"{name}": "{example}"}}}}'


def _chapter_only(rec: Recommender) -> None:
    """The chapter's gender, age and job asked of data without them: say how this data's new users ask."""
    if not rec.chapter_features:
        raise RecsysError(f"{rec.no_chapter_features()}: {_new_user_hint(rec)}")


def _describe(md: ModelDir | None) -> dict | None:
    if md is None:
        return None
    keys = ("dataset", "split", "objective", "settings", "paddle", "saved")
    return _names({"path": str(md.path), **{k: md.meta.get(k) for k in keys}, "objective": md.objective})


def _names(value):
    """A value with every absolute path in it shown as its name: no client learns this machine's folders."""
    if isinstance(value, dict):
        return {k: _names(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_names(v) for v in value]
    return Path(value).name if isinstance(value, str) and Path(value).is_absolute() else value


@router.get("/api/health")
def health(request: Request):
    """Dataset, objective, training settings and versions of the served model dirs."""
    rec, holder = _rec(request), request.app.state.holder
    return {
        "status": "ok",
        "model": _describe(rec.model),
        "rerank": _describe(rec.rerank),
        "users": len(rec.model.user_ids),
        "movies": len(rec.model.movie_ids),
        "candidates": rec.candidates,
        "ratings": request.app.state.writes.status,
        "reload_interval_s": holder.interval,
        "reload_error": _names_only(holder.last_error, holder.paths),
    }


def _names_only(text: str | None, paths) -> str | None:
    """A message with the served dirs' absolute paths shown as their names."""
    for path in (p for p in paths if p is not None):
        for spelled in sorted({str(path.resolve()), str(path.absolute()), str(path)}, key=len, reverse=True):
            text = text.replace(spelled, path.name) if text else text
    return text


@router.get("/api/predict")
def predict(request: Request, user: Id, movie: Id):
    """The predicted rating of a user for a movie (and the actual one when rated), as `infer --movie`."""
    rec = _rec(request)
    rec.user_row(user), rec.movie_row(movie)
    if rec.rating_model is None:
        raise HTTPException(404, f"no rating model is served: {_no_rating_model(rec)}")
    return rec.predict(user, movie)


def _no_rating_model(rec: Recommender) -> str:
    """What predicting ratings needs, said for the models this server has."""
    served = " and ".join(f"a {md.objective} model ({md.path.name})" for md in (rec.model, rec.rerank) if md)
    if rec.rerank is None:
        return f"this server has {served}; start it with --rerank RATING_DIR (a rating model) to predict ratings"
    return (
        f"this server has {served}, which rank movies but predict no ratings; a rating model (train "
        "--objective rating) given as --rerank RATING_DIR predicts them"
    )


@router.get("/api/users/{user}/recommendations", responses={404: feedback.RESPONSES[404]})
def recommend(request: Request, user: Id, options: ListOptions, k: int = K):
    """Top-k movies the user has not rated (in any split of the model's data; `exclude_rated=train`: the
    training split alone, the lists `evaluate` ranks), as `infer --top-k` (two stages with --rerank: the
    retrieval model's top max(candidates, k), reordered by the second model), filtered as asked. With a
    ratings database, the user's stored ratings are never listed and, with models that read history, are part
    of it; a user made by `POST /api/users` is answered too. 404 also when no movie passes the filters."""
    return feedback.recommend(request, user, k, **options)


@router.get("/api/recommendations")
def recommend_new(
    request: Request,
    options: NewUserOptions,
    gender: str = Query(..., pattern="^[MF]$"),
    age: int = Query(..., description="age in years, or the bucket code (1, 18, 25, 35, 45, 50, 56)"),
    job: int = Query(...),
    k: int = K,
):
    """Top-k movies for a new user known by gender (M/F), age and job, as `infer --gender ...`, filtered as
    asked."""
    rec = _rec(request)
    _chapter_only(rec)
    return rec.recommend_new(k, gender=gender, age=age, job=job, **options)


class Who(BodyOptions):
    """A JSON request for recommendations: a known user, or a new one by features."""

    model_config = ConfigDict(extra="forbid", strict=True)
    user_id: Whole | None = None
    gender: str | None = Field(None, pattern="^[MF]$")
    age: Whole | None = None
    job: Whole | None = None
    features: dict[str, str] | None = Field(None, description="a new user's features, for data with its own")
    rated: Pairs | None = Field(
        None, description=f"a new user's rated movies: [movie id, stars] pairs, at most {MAX_RATED}"
    )
    k: Whole = Field(10, ge=1, le=MAX_K)


@router.post("/api/recommend")
def recommend_json(request: Request, who: Who):
    """Top-k as a JSON request: `{"user_id": 1, "k": 10}` or `{"gender": "F", "age": 25, "job": 4}`, a new
    user, who may name the movies they rated: `"rated": [[1193, 5], [661, 3]]` (their history).
    `"explain": true`: each movie says which rated movies it is there because of. The list options of
    `GET /api/users/{user}/recommendations` are fields here: `"genres": "Comedy,Drama"` (or a list), ...; a
    known user's list reads their stored ratings as that one does."""
    rec = _rec(request)
    if who.user_id is not None:
        if any(v is not None for v in (who.gender, who.age, who.job, who.rated, who.features)):
            raise RecsysError("give user_id, or a new user's features (and rated), not both")
        return feedback.recommend(request, who.user_id, who.k, **who.options())
    if who.exclude_rated is not None:
        raise RecsysError("exclude_rated is a known user's (user_id): a new user's rated movies are never listed")
    pairs = [(int(m), float(s)) for m, s in who.rated or []]
    chapter = (who.gender, who.age, who.job)
    if any(v is not None for v in chapter):
        _chapter_only(rec)
    if rec.chapter_features and (None in chapter or who.features is not None):
        raise RecsysError("give user_id, or all of gender, age and job")
    return rec.recommend_new(who.k, gender=who.gender, age=who.age, job=who.job, features=who.features, rated=pairs,
                             **who.options())  # fmt: skip


@router.get("/api/movies/{movie}/similar")
def similar(request: Request, movie: Id, k: int = K):
    """The k movies nearest to this one by their movie-tower vectors, as `infer --similar-to`."""
    return _rec(request).similar(movie, k)


@router.get("/api/users/{user}")
def user_history(request: Request, user: Id):
    """A user's features (age as the bucket code and its range) and every rating in the archive (split:
    train or test), best first."""
    return _rec(request).user(user)


@router.get("/api/movies/{movie}")
def movie_details(request: Request, movie: Id):
    """A movie's title, genres, and its number of ratings and mean stars in the archive."""
    return _rec(request).movie(movie)


@router.get("/api/meta")
def choices(request: Request):
    """What the page needs for its forms: users, the genres, and the chapter's age buckets (codes and ranges) and
    jobs, or the data's own user features (name -> values; "" is unknown)."""
    rec = _rec(request)
    genres = {"genres": list(rec.model.meta["categories"])}
    if not rec.chapter_features:
        return {"users": rec.users, "features": rec.features} | genres
    return {"users": rec.users, "ages": age_table, "age_groups": AGE_GROUPS, "jobs": rec.model.meta["jobs"]} | genres


@router.get("/", include_in_schema=False)
async def page():
    return FileResponse(STATIC / "index.html", media_type="text/html")


def create_app(
    model_dir,
    rerank=None,
    reload_interval: float = 2.0,
    candidates: int | None = None,
    search: str = "auto",
    ratings_db=None,
    write_token: str | None = None,
    max_body_bytes: int = guard.MAX_BODY_BYTES,
):
    """The FastAPI application serving these model dirs (Swagger UI at /docs, from local assets); with
    `ratings_db` (a path) it takes ratings and new users from clients that send `write_token`. A request body
    over `max_body_bytes` is answered 413."""
    holder = Holder(model_dir, rerank, reload_interval, candidates, search)
    store = None if ratings_db is None else RatingsStore(ratings_db, holder.current.dataset)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        if store is not None:  # every request thread's connection
            store.close(every_thread=True)

    app = FastAPIOffline(
        lifespan=lifespan,
        redoc_url=None,  # ReDoc's bundle fetches its logo from its vendor's site
        title="recsys",
        description="The chapter's recommender: two-stage top-N, ratings, similar movies",
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from the validator's site
        redirect_slashes=False,  # its redirect would echo the Host header; `Guard` reads /path/ as /path
    )
    app.add_middleware(guard.Guard, max_body=max_body_bytes, csp={"/": guard.page_csp(STATIC / "index.html")})
    app.state.holder = holder
    app.state.writes = feedback.Writes(store, write_token)
    app.include_router(router)
    app.include_router(feedback.router)
    app.openapi = lambda: contract.schema(app)  # the served data's constraints written into FastAPI's schema
    for kind, handler in HANDLERS.items():
        app.add_exception_handler(kind, handler)
    return app
