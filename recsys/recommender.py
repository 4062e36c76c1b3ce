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
from recsys.errors import RecsysError, UnknownId
from recsys.modeldir import ModelDir
from recsys.topn import Interactions, answers, evaluate, filters, nearest, newuser, registry, stages
from recsys.topn.answers import stars_value
from recsys.topn.checks import check_data, check_pair, check_tested
from recsys.topn.filters import Filters
from recsys.topn.lists import chunk_rows
from recsys.topn.stage import FirstStage, SecondStage
from recsys.topn.towers import TwoStages, stars

Path = str | os.PathLike


def _flag(name: str, value) -> bool:
    """A keyword that must be True or False."""
    if not isinstance(value, bool | np.bool_):
        raise RecsysError(f"{name} must be true or false, got {value!r}")
    return bool(value)


class Recommender:
    """A model dir (a first stage, `recsys.topn.stage`), or a first stage that leads two (retrieval, EASE,
    popularity) and its second stage (a ranking network or a rating model), answering in the data's own ids.
    `candidates`: how many first-stage candidates the second stage reorders (default: the number a ranking
    network was trained on, 100 for a rating model). `search`: how the first stage finds a user's top movies:
    "exact", "faiss" through the model dir's index, or "auto" (`recsys.topn.nearest`)."""

    def __init__(
        self, model: ModelDir, rerank: ModelDir | None = None, candidates: int | None = None, search: str = "auto"
    ):
        self.first, self.second = registry.first_stage(model), None
        if rerank is not None:
            registry.check_leads(self.first)
            self.second = registry.second_stage(rerank)
            check_pair(self.first, self.second)
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
        second = self.second or SecondStage(self.model)
        return second.candidates(self._candidates)

    @property
    def predictor(self) -> FirstStage | None:
        """The stage that predicts ratings: the first, or the second used alone, whichever predicts them."""
        alone = self.second.alone if self.second is not None else None
        return next((s for s in (self.first, alone) if s is not None and s.predicts), None)

    @property
    def rating_model(self) -> ModelDir | None:
        """The model dir that predicts ratings (see `predictor`)."""
        return None if self.predictor is None else self.predictor.md

    def warm(self) -> None:
        """Build now what the first request would wait for: predictors, the history networks, the index."""
        self.first.warm(self.search)
        if self.second is not None:
            self.second.warm()

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
        return newuser.no_chapter_features(self.model)

    def new_user(
        self, gender: str | None = None, age: int | None = None, job: int | None = None, features: dict | None = None
    ) -> dict:
        """A new user's features, checked, as `recommend_new` takes them back (`**` them into it)."""
        self._new_user(gender, age, job, features)
        if self.chapter_features:
            return {"gender": gender, "age": int(age), "job": int(job)}
        return {"features": {str(k): str(v) for k, v in (features or {}).items()}}

    def _new_user(self, gender, age, job, features: dict | None) -> tuple[tuple[int, ...], dict]:
        """A new user's feature ids, and the features as the answers show them (`recsys.topn.newuser`)."""
        return newuser.parse(self.model, gender, age, job, features)

    @property
    def reads_history(self) -> bool:
        """Whether every model of a list reads the user's history: a new rating changes the list at once."""
        return all(s.reads_history for s in (self.first, self.second) if s is not None)

    def _rated_rows(self, rated, strict: bool = True) -> list[tuple[int, float]]:
        """Rated movies ((movie id, stars) pairs), checked, as (row, stars); `strict`: refuse them unless every
        model reads history."""
        rated = [(m, s) for m, s in rated]
        for stage in (self.first, self.second):
            if strict and stage is not None and rated and not stage.reads_history:
                raise RecsysError(
                    f"{stage.md.path} has no history input (it was trained without one): rated movies cannot change "
                    "its list"
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
        """`out` with each recommendation's reasons, from the first stage and the user's history."""
        out["recommendations"] = self.lists.because(user, cold, rated, out["recommendations"])
        return out

    @property
    def lists(self) -> FirstStage:
        """What makes the lists: the first stage, or the two stages as one."""
        return self.first if self.second is None else TwoStages(self.first, self.second, self.candidates)

    def _lists(self, k: int, user: int | None, cold=None, rated=(), banned=None) -> dict:
        recs = self.lists.top_k(user, k, cold, rated, self.search, banned)
        width = {} if self.second is None else {"candidates": max(self.candidates, k)}
        return (
            {"stages": self.stages} | width | {"recommendations": [answers.movie(self.model, m, **v) for m, v in recs]}
        )

    def how(self, doc: dict) -> str:
        """What the values of a list answer `doc` are, in words (`infer`'s heading)."""
        return self.lists.how(doc)

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
        if self.second is None:
            return self.first.ranker(self.search)
        return self.lists.ranker(self.search, pools)

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
        rows = [answers.movie(md, m, cosine=c) for m, c in self.lists.similar(row, k, self.search)]
        return {"movie_id": movie, "title": md.title(row), "genres": md.genres(row), "similar": rows}

    def _predicting(self) -> FirstStage:
        """The stage that predicts ratings, or one error line."""
        if self.predictor is None:
            raise RecsysError(
                f"{self.model.path} is {self.first.kind()}: it ranks movies but predicts no ratings; use a rating "
                "model (or --top-k)"
            )
        return self.predictor

    def predict(self, user: int, movie: int) -> dict:
        """A rating model's predicted rating of a known user for a movie (and the actual one, when rated)."""
        stage = self._predicting()
        md, user_row, row = stage.md, self.user_row(user), self.movie_row(movie)
        score = float(stage.predict(user_row, [row])[0])
        movies, given, _ = md.ratings_of(user_row)
        actual = stars_value(given[movies == row][0]) if row in movies else None
        return {"user_id": user, "movie_id": movie, "title": md.title(row), "score": score, "stars": stars(score)} | {
            "actual_rating": actual
        }

    def predict_new(
        self, movie: int, *, gender=None, age=None, job=None, features: dict[str, str] | None = None
    ) -> dict:
        """A rating model's predicted rating of a new user (see `recommend_new`) for a movie."""
        stage = self._predicting()
        cold, shown = self._new_user(gender, age, job, features)
        row = self.movie_row(movie)
        score = float(stage.predict(0, [row], cold)[0])
        return {"user": shown, "movie_id": movie, "title": stage.md.title(row), "score": score, "stars": stars(score)}

    def user(self, user: int) -> dict:
        """A known user's features (the chapter's: age as its bucket code and range) and every rating in the
        archive (split: train or test), best first."""
        return answers.user(self.model, self.user_row(user), user)

    def movie(self, movie: int) -> dict:
        """A movie's title, genres, and its number of ratings and mean stars in the archive."""
        return answers.movie_details(self.model, self.movie_row(movie), movie, self._movie_stats)

    @functools.cached_property
    def _movie_stats(self) -> tuple[np.ndarray, np.ndarray]:
        return answers.movie_stats(self.model)
