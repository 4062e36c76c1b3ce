"""The protocol every served algorithm follows: a first stage finds each user's best unseen movies with their
scores, a second stage re-scores a first stage's candidates. Each is read from a model dir
(`recsys.topn.registry` names the class of a dir's recorded objective); everything past training composes
stages through these classes, never by asking what kind of model a dir holds.

Rows are the model dir's user and movie indices (`ModelDir.user_row`, `ModelDir.movie_row`); columns are
catalogue positions (`ModelDir.movie_ids`). A user is a known row, or a new user (`user` None) given by
feature ids (`cold`) and/or rated movies (`rated`: (movie row, stars) pairs). Every list leaves out the
movies the user rated in training (`seen`) and those in `rated`, and ties go to the smaller movie id.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recsys.errors import RecsysError
from recsys.modeldir import ModelDir

# the batch form: (user rows, seen [n, M] catalogue columns, k, banned=None) -> [n, k] catalogue columns (-1: none)
Ranker = Callable[..., np.ndarray]


class FirstStage:
    """A model dir that ranks the whole catalogue for a user. A subclass gives `top_k` (one user) and `ranker`
    (a batch of users), and says through its attributes what else it can do."""

    label = "chapter model"  # how evaluation tables name its row
    describe = ""  # how `infer` says what a list's values are
    leads = False  # a second stage may reorder its candidates (`queries`, `pool`, `pair_score`)
    pair_value = "cosine"  # the name of `pair_score` in a two-stage answer's values
    explains = False  # `because`: which rated movies a listed movie is there for
    finds_similar = False  # `similar`: movies near a movie
    predicts = False  # `predict`: a user's stars for a movie

    def __init__(self, md: ModelDir):
        self.md = md

    @property
    def reads_history(self) -> bool:
        """Whether a user's rated movies change their list at once (not only after retraining)."""
        return self.md.history

    def top_k(self, user: int | None, k: int, cold=None, rated=(), search: str = "auto", banned=None) -> list:
        """The user's k best unseen movies outside `banned` ([1, M] sparse 0/1 or None): (movie row, the
        answer's values for it: {"score": ..., ...}) pairs, best first."""
        raise NotImplementedError

    def ranker(self, search: str = "auto") -> Ranker:
        """The batch form of `top_k` for known users, as `recsys.topn.evaluate` takes it."""
        raise NotImplementedError

    def queries(self, users: np.ndarray):
        """Known users' (rows) inputs to `pool` and `pair_score` besides their histories (None: none)."""
        return None

    def query(self, user: int | None, cold=None, rated=()):
        """One user's input to `pool` and `pair_score`, as `queries` gives a batch of one."""
        return None

    def pool(self, queries, seen, banned, n: int, search: str = "auto") -> np.ndarray:
        """Each user's n best catalogue columns outside their history `seen` ([n_users, M] 0/1) and `banned`
        ([n_users, M] sparse 0/1 or None), best first: [n_users, n], -1 padded."""
        raise NotImplementedError

    def pair_score(self, queries, users: np.ndarray, cols: np.ndarray, history) -> np.ndarray:
        """Its score [N] of aligned pairs: user `users[i]` (a row of `queries` and of `history`, [n_users, M]
        sparse 0/1) and catalogue column `cols[i]`. A ranking network's first pair feature."""
        raise NotImplementedError

    def because(self, user: int | None, cold, rated, recommendations: list[dict]) -> list[dict]:
        """`recommendations` with each movie's reasons (`recsys.topn.reasons`)."""
        raise RecsysError(f"{self.md.path.name} is {self.kind()}: it cannot say why a movie is on a list (--explain)")

    def similar(self, row: int, k: int, search: str = "auto") -> list[tuple[int, float]]:
        """The k movies (rows) nearest to the movie row `row`: (row, cosine)."""
        raise RecsysError(f"{self.md.path.name} is {self.kind()}: it has no movie vectors to find similar movies by")

    def predict(self, user: int, movies, cold=None) -> np.ndarray:
        """A user's scores (label space 2*stars-5) of movies (rows)."""
        raise RecsysError(f"{self.md.path.name} is {self.kind()}: it ranks movies but predicts no ratings")

    def warm(self, search: str = "auto") -> None:
        """Build now what the first request would otherwise wait for."""

    def how(self, doc: dict) -> str:
        """What the values of its list answer `doc` are, in words."""
        return self.describe

    def kind(self) -> str:
        """The model in words, for error lines: "a retrieval model", "an ease model". (The lines name the dir by
        its name alone: the service answers them, and no client learns this machine's folders.)"""
        name = self.md.objective
        return f"{'an' if name[:1] in 'aeiou' else 'a'} {name} model"


class SecondStage:
    """A model dir that re-scores a leading first stage's candidates of each user."""

    label = ""  # how evaluation tables name the two stages' second
    describe = ""  # how `infer` says what its scores are
    default_candidates = 100  # the first stage's top N it reorders, unless given

    def __init__(self, md: ModelDir):
        self.md = md

    @property
    def reads_history(self) -> bool:
        return self.md.history

    @property
    def alone(self) -> FirstStage | None:
        """The same model dir as a first stage of its own, where evaluation also ranks with it alone."""
        return None

    def candidates(self, given: int | None = None) -> int:
        """How many candidates it reorders: `given`, else its own number."""
        return self.default_candidates if given is None else given

    def check_first(self, first: FirstStage) -> None:
        """One-line error unless it may reorder `first`'s candidates (besides their data agreeing)."""

    def user_vectors(self, user: int | None, cold=None, rated=()) -> np.ndarray:
        """One user's input to `scores`, [D]."""
        raise NotImplementedError

    def batch_vectors(self, users: np.ndarray) -> np.ndarray:
        """Known users' inputs to `scores`, [n, D]."""
        raise NotImplementedError

    def user_inputs(self, user: int | None, cold=None, rated=()):
        """One user's inputs to `scores`, as `batch_inputs` gives a batch of one (their vector, [1, D])."""
        return self.user_vectors(user, cold, rated)[None]

    def batch_inputs(self, users: np.ndarray):
        """Known users' inputs to `scores` (their vectors, [n, D])."""
        return self.batch_vectors(users)

    def scores(self, first: FirstStage, queries, vectors, pool: np.ndarray, seen) -> np.ndarray:
        """Its scores [n, N] of each user's candidate columns `pool` [n, N] (-1: none), from the users' inputs
        to the leading first stage `first` (`queries`, `FirstStage.queries`) and to this one (`vectors`:
        `batch_inputs`), and their seen catalogue columns [n, M]."""
        raise NotImplementedError

    def values(self, score: float) -> dict:
        """What an answer says of a movie's second-stage score besides it ({"stars": ...} for stars)."""
        return {}

    def warm(self) -> None:
        """Build now what the first request would otherwise wait for."""
