"""The stages of the two-tower networks (`recsys.topn.stage`): a user's list is the catalogue by the cosine of
their user-tower vector with the movies' (`recsys.topn.stages`). The retrieval model adds the item-item score of
the user's history and feeds a second stage; the chapter's rating model scores 5 cos in label space and
predicts stars; the ranking network reorders a leading first stage's candidates (a retrieval model's, EASE's,
popularity's) by its head, and the rating model by 5 cos."""

from __future__ import annotations

import numpy as np

from recsys.errors import RecsysError
from recsys.modeldir.files import damaged
from recsys.topn import filters, reasons, stages
from recsys.topn.checks import is_refit
from recsys.topn.lists import contains, rerank_pool
from recsys.topn.rerank import feature_names, fingerprint, head_scores, served_features, with_rated
from recsys.topn.stage import FirstStage, SecondStage


def stars(score: float) -> float:
    """Label-space score (2*stars-5) to stars."""
    return (float(score) + 5) / 2


class TowerStage(FirstStage):
    """The catalogue by the cosine of the user's and the movies' tower vectors (a ranking network's towers
    ranking alone); `scale` times it is the score."""

    explains = finds_similar = True
    scale = 1.0
    describe = "the ranking network's towers, by cosine"

    def top_k(self, user, k, cold=None, rated=(), search="auto", banned=None) -> list:
        return [(m, self.values(s, c)) for m, s, c in self.scored(user, k, cold, rated, search, banned)]

    def scored(self, user, k, cold=None, rated=(), search="auto", banned=None) -> list[tuple[int, float, float]]:
        """(movie row, score, cosine) of the user's k best (see `stages.top_k`)."""
        return stages.top_k(self.md, user, k, cold, rated, search, banned, self.scale)

    def values(self, score: float, cosine: float) -> dict:
        """An answer's values of one movie: the score where it is more than the cosine, else the cosine."""
        return {"score": score, "cosine": cosine} if self.md.first_stage_beta else {"cosine": cosine}

    def ranker(self, search: str = "auto"):
        md = self.md
        users, movies, ix = md.arrays["user_vectors"], md.catalogue_vectors, stages.movie_index(md, search)
        stage = stages.first_stage(md)
        return lambda u, seen, k, banned=None: filters.top_k_outside(stage, ix, movies, users[u], seen, banned, k)[0]

    def queries(self, users: np.ndarray) -> np.ndarray:
        """The users' unit vectors [n, D]."""
        return self.md.arrays["user_vectors"][users]

    def query(self, user, cold=None, rated=()) -> np.ndarray:
        return stages.vector(self.md, user, cold, rated)[None]

    def pool(self, queries, seen, banned, n, search="auto") -> np.ndarray:
        md = self.md
        ix = stages.movie_index(md, search)
        return filters.top_k_outside(stages.first_stage(md), ix, md.catalogue_vectors, queries, seen, banned, n)[0]

    def pair_score(self, queries, users, cols, history) -> np.ndarray:
        """The cosine of the users' unit vectors `queries[users]` with the movies'."""
        return np.einsum("nd,nd->n", queries[users], self.md.catalogue_vectors[cols])

    def because(self, user, cold, rated, recommendations: list[dict]) -> list[dict]:
        vector = stages.vector(self.md, user, cold, rated)
        return reasons.because(self.md, vector, stages.seen(self.md, user, rated), recommendations)

    def similar(self, row: int, k: int, search: str = "auto") -> list[tuple[int, float]]:
        return stages.similar(self.md, row, k, search)

    def warm(self, search: str = "auto") -> None:
        if self.md.history:  # rated movies (a new user's, or stored ones) go through the tower
            self.md.network  # noqa: B018 -- built here: a second or more that would stall the requests behind it
        stages.movie_index(self.md, search)


class RetrievalStage(TowerStage):
    """The retrieval model: the cosine plus beta times the item-item score of the history; it leads two stages."""

    label = "retrieval"
    leads = True

    def how(self, doc: dict) -> str:
        rows = doc["recommendations"]
        return "retrieval model, by cosine" + (
            " + item-item score of the history" if rows and "score" in rows[0] else ""
        )


class RatingStage(TowerStage):
    """The chapter's rating model used alone: its score is 5 cos (label space), shown in stars too."""

    predicts = True
    scale = 5.0
    describe = "score in 2*stars-5"

    def values(self, score: float, cosine: float) -> dict:
        return {"score": score, "stars": stars(score)}

    def predict(self, user: int, movies, cold=None) -> np.ndarray:
        return stages.predict(self.md, user, movies, cold)

    def warm(self, search: str = "auto") -> None:
        self.md.predictor  # noqa: B018 -- created here, off the request path
        super().warm(search)


class RankingReranker(SecondStage):
    """The ranking network: its head scores a leading first stage's candidates from both towers' raw outputs
    and the pair features, which read each user's history and the first stage's score of the pair."""

    label = "ranking network"
    describe = "the ranking network, logit"

    def __init__(self, md):
        super().__init__(md)
        if "latest_item_item" in feature_names(md) and "latest_movies" not in md.arrays:
            raise damaged(md.path, "arrays.npz", "its head reads the users' latest movies, and it has none")

    def candidates(self, given: int | None = None) -> int:
        """`given`, else the number it was trained to reorder (its `--candidates`)."""
        if given is not None:
            return given
        return int(self.md.meta["settings"].get("candidates") or self.default_candidates)

    def check_first(self, first: FirstStage) -> None:
        retrieval, rerank = first.md, self.md
        want = rerank.meta["settings"].get("candidates_params_sha256")
        if (want is None or want != fingerprint(retrieval)) and not is_refit(retrieval, rerank):
            raise RecsysError(
                f"{rerank.path} was trained on the candidates of another {first.label} model "
                f"({rerank.meta['settings'].get('candidates_from')} as it was then), not on {retrieval.path} as "
                "it is now; give that model, its refit (the same flags with --holdout 0), or train the ranking "
                "network again on this one"
            )

    def user_vectors(self, user, cold=None, rated=()) -> np.ndarray:
        return stages.vector(self.md, user, cold, rated, unit=False)

    def batch_vectors(self, users: np.ndarray) -> np.ndarray:
        return self.md.arrays["user_outputs"][users]

    def user_inputs(self, user, cold=None, rated=()) -> tuple:
        """The user's raw tower output [1, D] and latest movies [1, LATEST] (None where the head reads none):
        their saved latest training movies, then those of `rated` ((row, stars) pairs) as the newest."""
        vectors, saved = self.user_vectors(user, cold, rated)[None], self.md.arrays.get("latest_movies")
        if saved is None:
            return vectors, None
        latest = np.full(saved.shape[1], -1, np.int32) if user is None else saved[user]
        rows = np.array([m for m, _ in rated], np.int64)  # in the order given (the service's: oldest first)
        cols = np.searchsorted(self.md.movie_ids, rows[contains(self.md.movie_ids, rows)])
        return vectors, with_rated(latest, cols)[None]

    def batch_inputs(self, users: np.ndarray) -> tuple:
        latest = self.md.arrays.get("latest_movies")
        return self.batch_vectors(users), None if latest is None else latest[users]

    def scores(self, first, queries, inputs, pool, seen) -> np.ndarray:
        (vectors, latest), cols, a = inputs, np.maximum(pool, 0), self.md.arrays
        features = served_features(first, self.md, queries, seen, pool, latest)
        movies = a["movie_outputs"][self.md.movie_ids[cols]]
        return head_scores(self.md.head_params, vectors[:, None, :], movies, features)

    def warm(self) -> None:
        if self.md.history:
            self.md.network  # noqa: B018 -- built off the request path


class RatingReranker(SecondStage):
    """The chapter's rating model reordering a retrieval model's candidates by 5 cos of its own towers."""

    label = "chapter model"
    describe = "the rating model, score in 2*stars-5"

    @property
    def alone(self) -> FirstStage:
        return RatingStage(self.md)

    def user_vectors(self, user, cold=None, rated=()) -> np.ndarray:
        return stages.vector(self.md, user, cold, rated)

    def batch_vectors(self, users: np.ndarray) -> np.ndarray:
        return self.md.arrays["user_vectors"][users]

    def scores(self, first, queries, vectors, pool, seen) -> np.ndarray:
        return 5.0 * np.einsum("nd,npd->np", vectors, self.md.catalogue_vectors[np.maximum(pool, 0)])

    def values(self, score: float) -> dict:
        return {"stars": stars(score)}

    def warm(self) -> None:
        self.md.predictor  # noqa: B018 -- created here, off the request path
        if self.md.history:
            self.md.network  # noqa: B018


class TwoStages(FirstStage):
    """A leading first stage's top `candidates` (widened to k) reordered by a second stage, as one first stage:
    each movie's values are the second stage's score, the first stage's score of the pair (`pair_score`: a
    tower model's cosine) and its rank there. Reasons are the first stage's (the second reorders its
    candidates but does not say why they were candidates)."""

    def __init__(self, first: FirstStage, second: SecondStage, candidates: int):
        super().__init__(first.md)
        self.first, self.second, self.candidates = first, second, candidates
        self.explains, self.finds_similar, self.predicts = first.explains, first.finds_similar, first.predicts

    @property
    def reads_history(self) -> bool:
        return self.first.reads_history and self.second.reads_history

    def lists(self, queries, vectors, seen, k: int, search: str = "auto", banned=None):
        """The users' first-stage candidates outside `seen` and `banned`, their second-stage scores, and those
        reordered and cut to k: ([n, N] columns, [n, N] scores, [n, k] columns), -1 padded."""
        pool = self.first.pool(queries, seen, banned, max(self.candidates, k), search)
        scores = self.second.scores(self.first, queries, vectors, pool, seen)
        return pool, scores, rerank_pool(pool, scores, k)

    def top_k(self, user, k, cold=None, rated=(), search="auto", banned=None) -> list:
        md, first, second = self.md, self.first, self.second
        queries, vectors = first.query(user, cold, rated), second.user_inputs(user, cold, rated)
        seen = stages.seen_columns(md, stages.seen(md, user, rated))
        pool, scores, best = (a[0] for a in self.lists(queries, vectors, seen, k, search, banned))
        best = best[best >= 0]
        place = {c: i for i, c in enumerate(pool.tolist())}
        paired = first.pair_score(queries, np.zeros(len(best), np.int64), best, seen)
        return [
            (int(md.movie_ids[c]), {"score": float(scores[place[c]]), **second.values(float(scores[place[c]])),
                                    first.pair_value: float(v), "retrieval_rank": place[c] + 1})
            for c, v in zip(best.tolist(), paired)
        ]  # fmt: skip

    def ranker(self, search: str = "auto", pools: list | None = None):
        """The batch form; each batch's candidates are appended to `pools`, when given."""
        first, second = self.first, self.second

        def rank(users, seen, k, banned=None):
            pool, _, best = self.lists(first.queries(users), second.batch_inputs(users), seen, k, search, banned)
            if pools is not None:
                pools.append(pool)
            return best

        return rank

    def because(self, user, cold, rated, recommendations: list[dict]) -> list[dict]:
        return self.first.because(user, cold, rated, recommendations)

    def similar(self, row: int, k: int, search: str = "auto") -> list[tuple[int, float]]:
        return self.first.similar(row, k, search)

    def how(self, doc: dict) -> str:
        return f"{self.first.label} top {doc.get('candidates')} reordered by {self.second.describe}"
