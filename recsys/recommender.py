"""`Recommender`: recommendations from trained model dirs, in the data's own user and movie ids.

    from recsys import Recommender
    rec = Recommender.load("retrieval.model", rerank="ranking.model")    # or one model dir alone
    rec.recommend(1, k=10)                                # a known user: the movies they have not rated
    rec.recommend(1, k=10, explain=True)                  # ... each with the rated movies it is there for
    rec.recommend(1, k=10, genres="Comedy,Drama", years="1990-1999", exclude=[1, 2])   # filtered
    rec.recommend_new(k=10, gender="F", age=25, job=4, rated=[(1193, 5)])   # a new user
    rec.similar(783, k=10)                                # nearest movies by their movie-tower vectors
    rec.predict(1, 783)                                   # a rating model's predicted stars
    rec.recommend_many([1, 2, 3], k=10)                   # movie ids, one list per user

Answers are plain dicts and lists, the same objects that `infer --json` prints and the service returns; each
list says which stages ranked it. Bad input raises one `RecsysError` (`UnknownId` for an id the data lacks),
whose text the CLI prints as its `error:` line. Paddle is imported only where a model runs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from recsys import threads
from recsys.data import history
from recsys.data.schema import AGE_GROUPS, age_index, age_table
from recsys.errors import RecsysError, UnknownId
from recsys.modeldir import ModelDir
from recsys.topn import Interactions, evaluate, filters, nearest, reasons, stages
from recsys.topn.checks import check_data, check_pair, check_tested
from recsys.topn.filters import Filters
from recsys.topn.lists import chunk_rows

Path = str | os.PathLike


def stars(score: float) -> float:
    """Label-space score (2*stars-5) to stars."""
    return (float(score) + 5) / 2


def stars_value(x) -> int | float:
    """A rating as the data gave it: 4 stays 4, 3.5 stays 3.5."""
    return int(x) if float(x).is_integer() else float(x)


def _flag(name: str, value) -> bool:
    """A keyword that must be True or False."""
    if not isinstance(value, bool | np.bool_):
        raise RecsysError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def _movie(md: ModelDir, row: int, **values) -> dict:
    """One movie of an answer: its own id, title and genres, and `values`."""
    return {"movie_id": md.own_movie(row), "title": md.title(row), "genres": md.genres(row)} | values


class Recommender:
    """A model dir, or a retrieval model and its second stage (a ranking network or a rating model), that
    answers in the data's own ids. `candidates`: how many retrieval candidates the second stage reorders
    (default: the number a ranking network was trained on, 100 for a rating model). `search`: how the first
    stage finds a user's top movies: "exact" over the whole catalogue, "faiss" through the model dir's index,
    or "auto", the index from `recsys.modeldir.index.SAVED_FROM` movies on (see `recsys.topn.nearest`)."""

    def __init__(
        self, model: ModelDir, rerank: ModelDir | None = None, candidates: int | None = None, search: str = "auto"
    ):
        if rerank is not None:
            check_pair(model, rerank)
        if candidates is not None and candidates < 1:
            raise RecsysError(f"candidates must be at least 1, got {candidates}")
        nearest.check_search(search)
        self.model, self.rerank, self._candidates, self.search = model, rerank, candidates, search

    @classmethod
    def load(
        cls, model_dir: Path, rerank: Path | None = None, candidates: int | None = None, search: str = "auto"
    ) -> Recommender:
        """Load a model dir (and the second stage's), checking that the two belong together."""
        return cls(ModelDir.load(model_dir), None if rerank is None else ModelDir.load(rerank), candidates, search)

    # what it is

    @property
    def dataset(self) -> str:
        return self.model.meta["dataset"]

    @property
    def stages(self) -> list[str]:
        """The objectives of the models a list goes through, in order: ["retrieval", "ranking"], ["rating"], ..."""
        return [self.model.objective] + ([self.rerank.objective] if self.rerank is not None else [])

    @property
    def candidates(self) -> int:
        """How many retrieval candidates the second stage reorders (a larger k widens them to k)."""
        return stages.candidates_for(self.rerank, self._candidates)

    @property
    def rating_model(self) -> ModelDir | None:
        """The model that predicts ratings: the first or the second, whichever is a rating model."""
        return next((m for m in (self.model, self.rerank) if m is not None and m.objective == "rating"), None)

    @property
    def users(self) -> list[int]:
        """Every known user id, ascending."""
        return sorted(self.model.user_ids)

    @property
    def chapter_features(self) -> bool:
        """True when a new user is given by the chapter's gender, age and job (ml-1m, ml-100k)."""
        return self.model.chapter_features

    @property
    def features(self) -> dict[str, list[str]]:
        """The data's own user features (name -> values; "" is unknown); empty for the chapter's data."""
        return {} if self.chapter_features else self.model.features

    # checks

    def user_row(self, user: int) -> int:
        md = self.model
        if not md.has_user(user):
            ids = md.user_ids
            raise UnknownId(
                f"unknown user id {user}; {self.dataset} has no such user "
                f"({len(ids)} users, ids {min(ids)}..{max(ids)})"
            )
        return md.user_row(user)

    def movie_row(self, movie: int) -> int:
        if not self.model.has_movie(movie):
            raise UnknownId(f"unknown movie id {movie}; {self.dataset} has no such movie")
        return self.model.movie_row(movie)

    def no_chapter_features(self) -> str:
        """Why a new user of this data cannot be given by the chapter's gender, age and job."""
        md = self.model
        if not md.features:
            return (
                f"{self.dataset} has no user features (no gender, age or job): "
                "a new user is known by the movies they rated"
            )
        return f"{self.dataset} users have the features {', '.join(md.features)}, not the chapter's gender, age and job"

    def new_user(
        self, gender: str | None = None, age: int | None = None, job: int | None = None, features: dict | None = None
    ) -> dict:
        """A new user's features, checked, as `recommend_new` takes them back (`**` them into it)."""
        self._new_user(gender, age, job, features)
        if self.chapter_features:
            return {"gender": gender, "age": int(age), "job": int(job)}
        return {"features": {str(k): str(v) for k, v in (features or {}).items()}}

    def _new_user(self, gender, age, job, features: dict | None) -> tuple[tuple[int, ...], dict]:
        """A new user's feature ids, and the features as the answers show them."""
        md = self.model
        if not md.chapter_features:
            if any(x is not None for x in (gender, age, job)):
                raise RecsysError(self.no_chapter_features())
            given = {str(k): str(v) for k, v in (features or {}).items()}
            return self._feature_ids(given), given
        if features:
            raise RecsysError(f"{self.dataset} takes a new user's gender, age and job, not features")
        if None in (gender, age, job):
            raise RecsysError(f"a new user needs all of gender, age and job for {self.dataset}")
        if gender not in ("M", "F"):
            raise RecsysError(f"gender must be M or F, got {gender!r}")
        if isinstance(age, bool) or not isinstance(age, int | np.integer) or not 1 <= age <= 120:
            raise RecsysError(f"age must be a number of years, 1..120 (or a bucket code: 1, 18, 25, ...), got {age!r}")
        n_jobs = len(md.features["job"])
        if isinstance(job, bool) or not isinstance(job, int | np.integer) or not 0 <= job < n_jobs:
            raise RecsysError(f"job must be 0..{n_jobs - 1} for {self.dataset}, got {job!r}")
        shown = {"gender": gender, "age": int(age), "age_group": AGE_GROUPS[age_index(age)], "job": int(job)}
        return (0 if gender == "M" else 1, age_index(age), int(job)), shown

    def _feature_ids(self, given: dict[str, str]) -> tuple[int, ...]:
        """A new user's feature values (name -> value as in the data) as ids; a feature not given is unknown."""
        md = self.model
        for name in given:
            if name not in md.features:
                if not md.features:
                    raise RecsysError(f"{self.dataset} has no user features (got {name!r})")
                raise RecsysError(
                    f"{self.dataset} has no user feature {name!r}; its features: {', '.join(md.features)}"
                )
        out = []
        for name, labels in md.features.items():
            value = given.get(name, "")
            if value not in labels:
                shown = ", ".join(v for v in labels[:20] if v) + (" ..." if len(labels) > 20 else "")
                raise RecsysError(f"{name} {value!r} is not a value of {self.dataset}'s {name}: {shown}")
            out.append(labels.index(value))
        return tuple(out)

    @property
    def reads_history(self) -> bool:
        """Whether every model a list goes through reads the user's history, so that a new rating changes the
        list at once (otherwise only after retraining)."""
        return all(md.history for md in (self.model, self.rerank) if md is not None)

    def _rated_rows(self, rated, strict: bool = True) -> list[tuple[int, float]]:
        """Rated movies ((movie id, stars) pairs), checked, as (row, stars); `strict`: refuse them unless every
        model reads history."""
        rated = [(m, s) for m, s in rated]
        for md in (self.model, self.rerank):
            if strict and md is not None and rated and not md.history:
                raise RecsysError(
                    f"{md.path} has no history input (it was trained without one): rated movies cannot change its list"
                )
        for movie, value in rated:
            history.check_rated(movie, value, self.model.has_movie, self.model.rating_scale)
        return [(self.model.movie_row(m), float(s)) for m, s in rated]

    @staticmethod
    def _k(k) -> int:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise RecsysError(f"k must be a whole number, at least 1, got {k!r}")
        return int(k)

    @functools.cached_property
    def catalogue(self) -> filters.Catalogue:
        """What the filters read of each movie: its genres and release year."""
        return filters.Catalogue(self.model)

    def banned(self, rows: Sequence[int | None], exclude_rated: str = "all", **given) -> sp.csr_matrix | None:
        """The catalogue columns ([n, M] sparse 0/1, None for none) that the lists of these user rows (None: a
        new user) leave out besides their histories (`recsys.topn.filters.banned`); `given`: the filters."""
        return filters.banned(self.model, self.catalogue, rows, exclude_rated, Filters.parse(**given))

    # answers

    def recommend(
        self,
        user: int,
        k: int = 10,
        rated: Sequence[tuple[int, float]] = (),
        explain: bool = False,
        *,
        exclude_rated: str = "all",
        **given,
    ) -> dict:
        """The k best movies a known user has not rated: in any split of the model's data (`exclude_rated`
        "all"), or in its training split alone ("train": the lists evaluation ranks). `rated`: (movie id, stars)
        the user gave since (a ratings store's): never listed, and, with models that read history, part of it.
        `explain`: each movie says which rated movies it is there because of (`recsys.topn.reasons`). Filters
        (`given`): genres= (any of them), exclude_genres=, exclude= (movie ids), years= ("1990-1999")."""
        k, row, explain = self._k(k), self.user_row(user), _flag("explain", explain)
        rows, banned = self._rated_rows(rated, strict=False), self.banned([row], exclude_rated, **given)
        out = {"user_id": user} | self._lists(k, row, rated=rows, banned=banned)
        return self._explained(out, row, None, rows) if explain else out

    def recommend_new(
        self,
        k: int = 10,
        *,
        gender: str | None = None,
        age: int | None = None,
        job: int | None = None,
        features: dict[str, str] | None = None,
        rated: Sequence[tuple[int, float]] = (),
        strict: bool = True,
        explain: bool = False,
        **given,
    ) -> dict:
        """The k best movies for a new user: the chapter's `gender` ("M"/"F"), `age` (years) and `job`, or the
        data's own `features` (name -> value; one not given is unknown); `rated`, (movie id, stars) pairs, is
        their history (with a model that reads one) and is never recommended back. `strict`: refuse `rated`
        unless every model reads history (else those movies are only left out of the list). `explain`: each
        movie says which of the movies in `rated` it is there because of (`recsys.topn.reasons`). Filters
        (`given`): as `recommend`'s."""
        k, explain = self._k(k), _flag("explain", explain)
        cold, shown = self._new_user(gender, age, job, features)
        rows, banned = self._rated_rows(rated, strict), self.banned([None], **given)
        person = {"user": shown} | ({"rated": [[m, stars_value(s)] for m, s in rated]} if rated else {})
        out = person | self._lists(k, None, cold, rows, banned)
        return self._explained(out, None, cold, rows) if explain else out

    def _explained(self, out: dict, user: int | None, cold, rated) -> dict:
        """`out` with each recommendation's reasons, from the retrieval model and the user's history."""
        md = self.model
        vector = stages.vector(md, user, cold, rated)
        out["recommendations"] = reasons.because(md, vector, stages.seen(md, user, rated), out["recommendations"])
        return out

    def _lists(self, k: int, user: int | None, cold=None, rated=(), banned=None) -> dict:
        md, rerank = self.model, self.rerank
        if rerank is None:
            recs = stages.top_k(md, user, k, cold, rated, self.search, banned)
            if md.objective == "rating":
                rows = [_movie(md, m, score=s, stars=stars(s)) for m, s, _ in recs]
            elif md.first_stage_beta:  # the first stage's score: the cosine plus the item-item score
                rows = [_movie(md, m, score=s, cosine=c) for m, s, c in recs]
            else:
                rows = [_movie(md, m, cosine=c) for m, _, c in recs]
            return {"stages": self.stages, "recommendations": rows}
        candidates = max(self.candidates, k)
        rows = []
        for m, s, c, r in stages.two_stage(md, rerank, k, candidates, user, cold, rated, self.search, banned):
            extra = {"stars": stars(s)} if rerank.objective == "rating" else {}
            rows.append(_movie(md, m, score=s, **extra, cosine=c, retrieval_rank=r))
        return {"stages": self.stages, "candidates": candidates, "recommendations": rows}

    def recommend_many(
        self, users: Sequence[int], k: int = 10, chunk: int | None = None, *, exclude_rated: str = "all", **given
    ) -> list[list[int]]:
        """`recommend` for many known users at once: each one's k movie ids, best first (a chunk of users at a
        time, so memory stays chunk x catalogue: `recsys.topn.lists.chunk_rows` by default)."""
        k, rows = self._k(k), np.array([self.user_row(u) for u in users], np.int64)
        md, rank, out = self.model, self.ranker(), []
        self.banned([], exclude_rated, **given)  # bad values fail before any list
        chunk = chunk or chunk_rows(len(md.movie_ids))
        with threads.phase():  # many users' lists: large products, on what pays (`recsys.threads.wide`)
            for s in range(0, len(rows), chunk):
                part = rows[s : s + chunk]
                seen = np.stack([np.isin(md.movie_ids, stages.seen(md, int(r))) for r in part])
                best = rank(part, seen, k, self.banned(part.tolist(), exclude_rated, **given))
                out += [[md.own_movie(int(md.movie_ids[c])) for c in row if c >= 0] for row in best]
        return out

    def ranker(self, pools: list | None = None):
        """The batch form: `(user rows, seen [n, M] catalogue columns, k) -> [n, k] catalogue columns` (-1: none),
        as `recsys.topn.evaluate` takes it (the training ratings alone left out, as the protocol requires), and
        `banned` ([n, M] sparse, see `banned`) left out too when given. With two stages, each batch's
        candidates are appended to `pools`."""
        md, rerank = self.model, self.rerank
        if rerank is None:
            users, movies, ix = md.arrays["user_vectors"], md.catalogue_vectors, stages.movie_index(md, self.search)
            stage = stages.first_stage(md)
            return lambda u, seen, k, banned=None: filters.top_k_outside(stage, ix, movies, users[u], seen, banned, k)[
                0
            ]
        first = md.arrays["user_vectors"]
        second = rerank.arrays["user_outputs" if rerank.objective == "ranking" else "user_vectors"]

        def rank(users, seen, k, banned=None):
            pool, _, best = stages.two_stage_lists(
                md, rerank, first[users], second[users], seen, k, max(self.candidates, k), self.search, banned
            )
            if pools is not None:
                pools.append(pool)
            return best

        return rank

    def evaluate(self, data, k: int = 10, relevant: int = 4) -> dict[str, float]:
        """Top-k metrics over every test user of `data` (a `recsys.movielens.load` result, the model's data):
        precision, recall, ndcg, hr at k, catalogue coverage and the number of users (see `recsys.topn`). The
        lists leave out the training ratings alone (`recommend(..., exclude_rated="train")`'s)."""
        md = self.model
        check_tested(md, data)
        check_data(md, data)
        ranking = Interactions.build(md.movie_ids, data.user, data.movie, data.stars, data.is_test, relevant)
        with threads.phase():  # every test user's list: large products
            return evaluate(self.ranker(), ranking, self._k(k))

    def similar(self, movie: int, k: int = 10) -> dict:
        """The k movies nearest to `movie` by the cosine of their movie-tower vectors."""
        md, row, k = self.model, self.movie_row(movie), self._k(k)
        rows = [_movie(md, m, cosine=c) for m, c in stages.similar(md, row, k, self.search)]
        return {"movie_id": movie, "title": md.title(row), "genres": md.genres(row), "similar": rows}

    def predict(self, user: int, movie: int) -> dict:
        """A rating model's predicted rating of a known user for a movie (and the actual one, when rated)."""
        md = self.rating_model
        if md is None:
            raise RecsysError(
                f"{self.model.path} is a retrieval model: it ranks movies but predicts no ratings; use a rating model "
                "(or --top-k)"
            )
        user_row, row = self.user_row(user), self.movie_row(movie)
        score = float(stages.predict(md, user_row, [row])[0])
        movies, given, _ = md.ratings_of(user_row)
        actual = stars_value(given[movies == row][0]) if row in movies else None
        return {"user_id": user, "movie_id": movie, "title": md.title(row), "score": score, "stars": stars(score)} | {
            "actual_rating": actual
        }

    def predict_new(
        self, movie: int, *, gender=None, age=None, job=None, features: dict[str, str] | None = None
    ) -> dict:
        """A rating model's predicted rating of a new user (see `recommend_new`) for a movie."""
        md = self.rating_model
        if md is None:
            self.predict(0, movie)  # the same error
        cold, shown = self._new_user(gender, age, job, features)
        row = self.movie_row(movie)
        score = float(stages.predict(md, 0, [row], cold)[0])
        return {"user": shown, "movie_id": movie, "title": md.title(row), "score": score, "stars": stars(score)}

    def user(self, user: int) -> dict:
        """A known user's features (the chapter's: age as its bucket code and range) and every rating in the
        archive (split: train or test), best first."""
        md, row = self.model, self.user_row(user)
        movies, given, is_test = md.ratings_of(row)
        order = np.lexsort((md.own_movie_ids[movies], -given))
        ratings = [
            _movie(md, int(movies[i]), stars=stars_value(given[i]), split="test" if is_test[i] else "train")
            for i in order
        ]
        values = [int(x) for x in md.tables.user[row]]
        if not md.chapter_features:
            return {"user_id": user, "features": {f: md.features[f][v] for f, v in zip(md.features, values)}} | {
                "ratings": ratings
            }
        gender, age, job = values
        return {"user_id": user, "gender": "MF"[gender], "age": age_table[age], "age_group": AGE_GROUPS[age],
                "job": md.meta["jobs"][job], "ratings": ratings}  # fmt: skip

    def movie(self, movie: int) -> dict:
        """A movie's title, genres, and its number of ratings and mean stars in the archive."""
        md, row = self.model, self.movie_row(movie)
        counts, sums = self._movie_stats
        n = int(counts[row])
        mean = float(sums[row] / n) if n else None
        return {"movie_id": movie, "title": md.title(row), "genres": md.genres(row), "ratings": n, "mean_stars": mean}

    @functools.cached_property
    def _movie_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per movie row: the number of its ratings in the archive, and their stars summed."""
        a, n = self.model.arrays, len(self.model.arrays["movie_vectors"])
        return np.bincount(a["rated_movie"], minlength=n), np.bincount(a["rated_movie"], a["rated_stars"], n)
