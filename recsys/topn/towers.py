"""The stages of the two-tower networks (`recsys.topn.stage`): a user's list is the catalogue by the cosine of
their user-tower vector with the movies' (`recsys.topn.stages`). The retrieval model adds the item-item score of
the user's history and feeds a second stage; the chapter's rating model scores 5 cos in label space and
predicts stars; the ranking network reorders a retrieval model's candidates by its head, and the rating model
by 5 cos."""

from __future__ import annotations

import numpy as np

from recsys.errors import RecsysError
from recsys.topn import filters, reasons, stages
from recsys.topn.checks import is_refit
from recsys.topn.rerank import fingerprint, head_scores, served_features
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
    """The ranking network: its head scores a retrieval model's candidates from both towers' raw outputs and
    the pair features, which read each user's history."""

    label = "ranking network"
    describe = "the ranking network, logit"

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
                f"{rerank.path} was trained on the candidates of another retrieval model "
                f"({rerank.meta['settings'].get('candidates_from')} as it was then), not on {retrieval.path} as "
                "it is now; give that model, its refit (the same flags with --holdout 0), or train the ranking "
                "network again on this one"
            )

    def user_vectors(self, user, cold=None, rated=()) -> np.ndarray:
        return stages.vector(self.md, user, cold, rated, unit=False)

    def batch_vectors(self, users: np.ndarray) -> np.ndarray:
        return self.md.arrays["user_outputs"][users]

    def scores(self, first, queries, vectors, pool, seen) -> np.ndarray:
        cols, a = np.maximum(pool, 0), self.md.arrays
        features = served_features(first, self.md, queries, seen, pool)
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
    each movie's values are the second stage's score, the first stage's cosine and its rank there. Reasons are
    the first stage's (the second reorders its candidates but does not say why they were candidates)."""

    def __init__(self, first: FirstStage, second: SecondStage, candidates: int):
        super().__init__(first.md)
        self.first, self.second, self.candidates = first, second, candidates
        self.explains, self.finds_similar, self.predicts = first.explains, first.finds_similar, first.predicts

    @property
    def reads_history(self) -> bool:
        return self.first.reads_history and self.second.reads_history

    def top_k(self, user, k, cold=None, rated=(), search="auto", banned=None) -> list:
        second, n = self.second, max(self.candidates, k)
        return [
            (m, {"score": s, **second.values(s), "cosine": c, "retrieval_rank": r})
            for m, s, c, r in stages.two_stage(self.md, second, k, n, user, cold, rated, search, banned)
        ]

    def ranker(self, search: str = "auto", pools: list | None = None):
        """The batch form; each batch's candidates are appended to `pools`, when given."""
        md, second, users_first = self.md, self.second, self.md.arrays["user_vectors"]

        def rank(users, seen, k, banned=None):
            pool, _, best = stages.two_stage_lists(md, second, users_first[users], second.batch_vectors(users), seen,
                                                   k, max(self.candidates, k), search, banned)  # fmt: skip
            if pools is not None:
                pools.append(pool)
            return best

        return rank

    def because(self, user, cold, rated, recommendations: list[dict]) -> list[dict]:
        return self.first.because(user, cold, rated, recommendations)

    def similar(self, row: int, k: int, search: str = "auto") -> list[tuple[int, float]]:
        return self.first.similar(row, k, search)

    def how(self, doc: dict) -> str:
        return f"retrieval top {doc.get('candidates')} reordered by {self.second.describe}"
