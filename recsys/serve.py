"""Serve a model dir over HTTP: `python -m recsys.serve --model-dir DIR [--rerank RANKING_DIR] [--port 8000]`.

A JSON API that mirrors `recsys.infer --json` (OpenAPI docs at /docs) and a small web page at `/`.
Model dirs load once at start; every `--reload-interval` seconds a background thread looks for a newer
save (a training run swaps the dir) and loads it whole before switching, so a request is answered by one
pair of model dirs from start to end. Needs the `serve` extra: `pip install -e ".[serve]"`.
"""

import argparse
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from recsys import infer
from recsys.errors import ArgumentParser, RecsysError, cli
from recsys.modeldir import ModelDir
from recsys.movielens import age_table

STATIC = Path(__file__).with_name("static")
MAX_K = 1000


@dataclass(frozen=True)
class Models:
    """The model dirs one request is answered by."""

    main: ModelDir
    rerank: ModelDir | None
    stamp: tuple
    rating_counts: np.ndarray  # per movie id: number of ratings in the archive
    star_sums: np.ndarray  # per movie id: their stars, summed

    @property
    def rating(self) -> ModelDir | None:
        """The model that predicts ratings: the main one or the reranker, whichever is a rating model."""
        return next((m for m in (self.main, self.rerank) if m is not None and m.objective == "rating"), None)


def _stamp(path: Path | None) -> tuple:
    """What changes when a save swaps the dir in: its inode and its manifest's (or meta's) mtime."""
    if path is None:
        return ()
    st = os.stat(path)
    inner = path / "manifest.json" if (path / "manifest.json").exists() else path / "meta.json"
    return (st.st_ino, os.stat(inner).st_mtime_ns)


def load_models(model_dir: str | os.PathLike, rerank: str | os.PathLike | None = None) -> Models:
    """Load and check the pair, and build the predictor now, before any request needs it."""
    paths = Path(model_dir), (Path(rerank) if rerank is not None else None)
    try:
        stamp = (_stamp(paths[0]), _stamp(paths[1]))  # before loading: a save after it shows as a change
    except OSError:
        stamp = ()  # ModelDir.load says what is missing
    main = ModelDir.load(paths[0])
    second = ModelDir.load(paths[1]) if paths[1] is not None else None
    if second is not None:
        infer.check_pair(main, second)
    a, n = main.arrays, len(main.arrays["movie_vectors"])
    counts, sums = np.bincount(a["rated_movie"], minlength=n), np.bincount(a["rated_movie"], a["rated_stars"], n)
    models = Models(main, second, stamp, counts, sums)
    if models.rating is not None:
        models.rating.predictor  # noqa: B018 -- created here, off the request path
    return models


class Holder:
    """The current `Models`, replaced whole by a background thread when a newer save appears."""

    def __init__(self, model_dir, rerank=None, interval: float = 2.0):
        self.paths = (Path(model_dir), Path(rerank) if rerank is not None else None)
        self.current = load_models(*self.paths)
        self.last_error: str | None = None
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True) if interval > 0 else None
        if self._thread is not None:
            self._thread.start()

    def check(self) -> bool:
        """Load a newer save if there is one; True when the models changed."""
        try:
            stamp = (_stamp(self.paths[0]), _stamp(self.paths[1]))
            if stamp == self.current.stamp:
                return False
            self.current = load_models(*self.paths)
            self.last_error = None
            return True
        except (OSError, RecsysError) as e:  # mid-swap or damaged: keep serving what we have
            self.last_error = str(e)
            return False

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def close(self) -> None:
        self._stop.set()


def create_app(model_dir, rerank=None, reload_interval: float = 2.0, candidates: int = 100):
    """The FastAPI application serving these model dirs."""
    from fastapi import FastAPI, Query
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException

    holder = Holder(model_dir, rerank, reload_interval)
    app = FastAPI(title="recsys", description="The chapter's recommender: two-stage top-N, ratings, similar movies")
    app.state.holder = holder

    class NotFound(RecsysError):
        """An unknown user or movie: 404."""

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)

    @app.exception_handler(RecsysError)
    async def _recsys_error(_request, exc: RecsysError):
        return error(404 if isinstance(exc, NotFound) else 422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return error(422, f"malformed JSON body: {first.get('ctx', {}).get('error', 'cannot parse it')}")
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
        return error(422, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def _http(_request, exc: HTTPException):
        return error(exc.status_code, exc.detail)

    @app.exception_handler(Exception)
    async def _unexpected(_request, exc: Exception):  # never a traceback on the wire
        return error(422, f"cannot answer this request: {type(exc).__name__}")

    def check(models: Models, user=None, movie=None, similar_to=None, gender=None, age=None, job=None):
        """The CLI's id checks, as 404 for unknown ids and 422 for bad features; the cold-start triple."""
        if age is not None and age not in age_table:
            raise RecsysError(f"age must be one of {', '.join(map(str, age_table))}, got {age}")
        args = SimpleNamespace(user=user, movie=movie, similar_to=similar_to, gender=gender, age=age, job=job)
        try:
            return infer.check_ids(models.main, args)
        except RecsysError as e:
            raise (NotFound(str(e)) if str(e).startswith("unknown") else e) from None

    K = Query(10, ge=1, le=MAX_K, description="list length")

    @app.get("/api/health")
    async def health():
        """Dataset, objective, training settings and versions of the served model dirs."""
        models = holder.current

        def describe(md: ModelDir | None):
            if md is None:
                return None
            m = md.meta
            keys = ("dataset", "split", "objective", "settings", "paddle", "saved")
            return {"path": str(md.path), **{k: m.get(k) for k in keys}, "objective": md.objective}

        return {
            "status": "ok",
            "model": describe(models.main),
            "rerank": describe(models.rerank),
            "users": len(models.main.user_ids),
            "movies": len(models.main.movie_ids),
            "reload_interval_s": holder.interval,
            "reload_error": holder.last_error,
        }

    @app.get("/api/predict")
    async def predict(user: int, movie: int):
        """The predicted rating of a user for a movie (and the actual one when rated), as `infer --movie`."""
        models = holder.current
        check(models, user=user, movie=movie)
        if models.rating is None:
            raise RecsysError("no rating model is served: start with --rerank RATING_DIR to predict ratings")
        return infer.predict_doc(models.rating, user, movie)

    @app.get("/api/users/{user}/recommendations")
    async def recommend(user: int, k: int = K):
        """Top-k movies the user has not rated, as `infer --top-k` (two stages with --rerank)."""
        models = holder.current
        check(models, user=user)
        return infer.recommend_doc(models.main, k, user, rerank=models.rerank, candidates=max(candidates, k))

    @app.get("/api/recommendations")
    async def recommend_new(
        gender: str = Query(..., pattern="^[MF]$"), age: int = Query(...), job: int = Query(...), k: int = K
    ):
        """Top-k movies for a new user known by gender (M/F), age bucket and job, as `infer --gender ...`."""
        return _recommend_new(gender, age, job, k)

    def _recommend_new(gender: str, age: int, job: int, k: int, rated=()):
        models = holder.current
        cold = check(models, gender=gender, age=age, job=job)
        for md in (models.main, models.rerank):
            if md is not None:
                infer.check_rated(md, rated)
        features = {"gender": gender, "age": age, "job": job}
        return infer.recommend_doc(models.main, k, None, cold, features, models.rerank, max(candidates, k), rated)

    class Who(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: int | None = None
        gender: str | None = Field(None, pattern="^[MF]$")
        age: int | None = None
        job: int | None = None
        rated: list[tuple[int, float]] | None = Field(None, description="a new user's [movie id, stars] pairs")
        k: int = Field(10, ge=1, le=MAX_K)

    @app.post("/api/recommend")
    async def recommend_json(who: Who):
        """Top-k as a JSON request: `{"user_id": 1, "k": 10}` or `{"gender": "F", "age": 25, "job": 4}`, a new
        user, who may name the movies they rated: `"rated": [[1193, 5], [661, 3]]` (their history)."""
        if who.user_id is not None:
            if any(v is not None for v in (who.gender, who.age, who.job, who.rated)):
                raise RecsysError("give user_id, or gender, age, job (and rated), not both")
            return await recommend(who.user_id, who.k)
        if None in (who.gender, who.age, who.job):
            raise RecsysError("give user_id, or all of gender, age and job")
        return _recommend_new(who.gender, who.age, who.job, who.k, [(int(m), float(s)) for m, s in who.rated or []])

    @app.get("/api/movies/{movie}/similar")
    async def similar(movie: int, k: int = K):
        """The k movies nearest to this one by their movie-tower vectors, as `infer --similar-to`."""
        models = holder.current
        check(models, similar_to=movie)
        return infer.similar_doc(models.main, movie, k)

    @app.get("/api/users/{user}")
    async def user_history(user: int):
        """A user's features and every rating in the archive (split: train or test), best first."""
        md = holder.current.main
        check(holder.current, user=user)
        gender, age, job = (int(x) for x in md.tables.user[user])
        movies, stars, is_test = md.ratings_of(user)
        order = np.lexsort((movies, -stars.astype(int)))
        rows = [
            {"movie_id": int(movies[i]), "title": md.title(int(movies[i])), "genres": md.genres(int(movies[i])),
             "stars": int(stars[i]), "split": "test" if is_test[i] else "train"}
            for i in order
        ]  # fmt: skip
        gender_name = "M" if gender == 0 else "F"
        return {
            "user_id": user,
            "gender": gender_name,
            "age": age_table[age],
            "job": md.meta["jobs"][job],
            "ratings": rows,
        }

    @app.get("/api/movies/{movie}")
    async def movie_details(movie: int):
        """A movie's title, genres, and its number of ratings and mean stars in the archive."""
        models = holder.current
        check(models, movie=movie)
        md, n = models.main, int(models.rating_counts[movie])
        return {"movie_id": movie, "title": md.title(movie), "genres": md.genres(movie), "ratings": n,
                "mean_stars": float(models.star_sums[movie] / n) if n else None}  # fmt: skip

    @app.get("/api/meta")
    async def choices():
        """What the page needs for its forms: users, age buckets and jobs."""
        md = holder.current.main
        return {"users": sorted(md.user_ids), "ages": age_table, "jobs": md.meta["jobs"]}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app


@cli
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m recsys.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default="recommender_system.inference.model", help="default: %(default)s")
    ap.add_argument(
        "--rerank", metavar="RANKING_DIR", help="with a retrieval --model-dir: two-stage top-N by this ranking network"
    )
    ap.add_argument(
        "--candidates", type=int, default=100, help="with --rerank: retrieval candidates (default: %(default)s)"
    )
    ap.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    ap.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    ap.add_argument(
        "--reload-interval", type=float, default=2.0, help="seconds between looks for a newer save (0: never)"
    )
    args: argparse.Namespace = ap.parse_args(argv)
    if not 0 < args.port < 65536 or args.candidates < 1 or args.reload_interval < 0:
        ap.error("--port must be 1..65535, --candidates at least 1, --reload-interval not negative")
    try:
        import uvicorn
    except ImportError:
        raise RecsysError('serving needs the serve extra: pip install -e ".[serve]"') from None
    app = create_app(args.model_dir, args.rerank, args.reload_interval, args.candidates)
    print(f"serving {args.model_dir} on http://{args.host}:{args.port}/ (API docs at /docs)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    except OSError as e:
        raise RecsysError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
