"""Every stage keeps the stage contract (`stage_contract.py`), on one tiny synthetic archive whose models are
trained once here; the closed-form objectives' served lists are EASE, popularity and item-kNN computed here in
NumPy, and a ranking network stacked on EASE or popularity reorders their candidates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import assert_one_line_error, run_cli
from fastapi.testclient import TestClient
from stage_contract import StageContract

from recsys import Recommender, movielens, synthetic, train
from recsys.service.api import create_app
from recsys.topn.item_knn import similarities

QUIET = {"log": lambda _msg: None}
CANDIDATES = 20  # the first stage's top N that a ranking network on a closed-form stage reorders
STACKED = ("ease", "popularity", "item-knn")  # the closed-form first stages a ranking network is trained on here
MODELS = ("retrieval", "rating", "ranking", "ease", "popularity", "ease-capped", "item-knn",
          *(f"{name}-{what}" for name in STACKED for what in ("held", "ranking")))  # fmt: skip


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """ml-1m layout, 150 users (half of them rate), 80 movies, 2,000 ratings."""
    out = tmp_path_factory.mktemp("stages-data")
    synthetic.write_ml1m(out, 2_000, seed=5, n_users=150, n_movies=80)
    return out


@pytest.fixture(scope="module")
def data(archive):
    return movielens.load(data_dir=archive)


@pytest.fixture(scope="module")
def models(archive, tmp_path_factory) -> dict[str, Path]:
    """One model dir of each objective (one epoch), a ranking network on the retrieval model, and EASE that
    covers a third of the movies, the closed-form ones fitted on every training rating (their default,
    `--holdout 0`); each closed-form objective with `--holdout 0.1` (`NAME-held`) and a ranking network on
    each (`NAME-ranking`: one epoch of a few batches); each also copied file by file (`copy/NAME`)."""
    out = tmp_path_factory.mktemp("stages")
    flags = {"data_dir": archive, "epochs": 1, **QUIET}
    train.run(objective="retrieval", model_dir=out / "retrieval", **flags)
    train.run(objective="rating", model_dir=out / "rating", **flags)
    train.run(objective="ranking", model_dir=out / "ranking", candidates_from=out / "retrieval", **flags)
    train.run(objective="ease", model_dir=out / "ease", **flags)  # the default: --holdout 0
    proc = run_cli("recsys.train", "--objective", "popularity", "--data-dir", str(archive), "--model-dir",
                   str(out / "popularity"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    train.run(objective="ease", model_dir=out / "ease-capped", ease_items=20, ease_lambda=50.0, holdout=0.0, **flags)
    train.run(objective="item-knn", model_dir=out / "item-knn", holdout=0.0, **flags)
    for name in STACKED:
        train.run(objective=name, model_dir=out / f"{name}-held", holdout=0.1, **flags)
        train.run(objective="ranking", model_dir=out / f"{name}-ranking", candidates_from=out / f"{name}-held",
                  candidates=CANDIDATES, max_batches=3, **flags)  # fmt: skip
    for name in MODELS:
        shutil.copytree(out / name, out / "copy" / name)
    return {name: out / name for name in MODELS} | {f"copy/{name}": out / "copy" / name for name in MODELS}


def _pair(models, first: str, second: str | None = None) -> tuple[Recommender, Recommender]:
    """The stages as loaded, and as loaded from the copies of their files."""

    def load(prefix: str) -> Recommender:
        return Recommender.load(models[prefix + first], None if second is None else models[prefix + second])

    return load(""), load("copy/")


class TestRetrieval(StageContract):
    stages: tuple[str, ...] = ("retrieval",)  # the model dir names: a first stage, and a second one if any

    @pytest.fixture(scope="class")
    def recs(self, models):
        return _pair(models, *self.stages)

    @pytest.fixture
    def rec(self, recs):
        return recs[0]

    @pytest.fixture
    def copy(self, recs):
        return recs[1]


class TestRating(TestRetrieval):
    stages = ("rating",)


class TestEase(TestRetrieval):
    stages = ("ease",)


class TestEaseCapped(TestRetrieval):
    rare_ties = False  # the movies past the cap tie on their counts
    ordered = False  # ... which rank after the others whatever their scores
    stages = ("ease-capped",)


class TestPopularity(TestRetrieval):
    rare_ties = False
    stages = ("popularity",)


class TestItemKnn(TestRetrieval):
    rare_ties = False  # the movies no rated movie is near tie at 0
    stages = ("item-knn",)


class TestRetrievalThenRanking(TestRetrieval):
    ties = False
    stages = ("retrieval", "ranking")


class TestEaseThenRanking(TestRetrieval):
    ties = False
    stages = ("ease-held", "ease-ranking")


class TestPopularityThenRanking(TestRetrieval):
    ties = False
    stages = ("popularity-held", "popularity-ranking")


class TestItemKnnThenRanking(TestRetrieval):
    ties = False
    stages = ("item-knn-held", "item-knn-ranking")


class TestRetrievalThenRating(TestRetrieval):
    ties = False
    stages = ("retrieval", "rating")


# the closed-form objectives by hand


def _training(data) -> tuple[np.ndarray, np.ndarray]:
    """The 0/1 training matrix [users, catalogue] and the catalogue (movie rows, ascending)."""
    catalogue = np.array(sorted(data.meta.movies))
    x = np.zeros((data.sizes()["n_users"], len(catalogue)))
    train_ = ~data.is_test
    x[data.user[train_], np.searchsorted(catalogue, data.movie[train_])] = 1
    return x, catalogue


def _ranked(scores: np.ndarray, seen: np.ndarray, cols: np.ndarray) -> list[int]:
    """The columns `cols` by score (larger first), ties to the smaller column, outside `seen`."""
    cols = cols[~seen[cols]]
    return cols[np.lexsort((cols, -scores[cols]))].tolist()


def _cosines(x: np.ndarray, neighbours: int) -> np.ndarray:
    """Item-kNN's similarities: the cosines of the columns of `x`, 0 on the diagonal, each column's largest
    `neighbours` kept (ties: the smaller row)."""
    norms = np.sqrt((x * x).sum(0))
    s = (x.T @ x) / np.where(norms > 0, np.outer(norms, norms), 1.0)
    np.fill_diagonal(s, 0.0)
    for j in range(s.shape[1]):
        s[np.lexsort((np.arange(len(s)), -s[:, j]))[neighbours:], j] = 0.0
    return s


def _item_knn_by_hand(data) -> dict[int, list[int]]:
    x, catalogue = _training(data)
    s = _cosines(x, 100)
    every = np.arange(len(catalogue))
    return {u: catalogue[_ranked(x[u] @ s, x[u] > 0, every)].tolist() for u in range(1, len(x))}


def test_item_knn_keeps_each_movies_nearest_movies(data):
    x, _ = _training(data)
    for neighbours in (3, 10):
        got = similarities(sp.csr_matrix(x), neighbours).toarray()
        np.testing.assert_allclose(got, _cosines(x, neighbours), atol=1e-12)
        assert ((got > 0).sum(0) <= neighbours).all()


def _by_hand(data, lam: float | None, items: int | None) -> dict[int, list[int]]:
    """Each user row's full list, as movie rows: EASE over the `items` most-rated movies then the rest by
    popularity (lam None: popularity alone)."""
    x, catalogue = _training(data)
    counts = x.sum(0)
    order = np.lexsort((np.arange(len(counts)), -counts))
    keep = np.sort(order[: items or len(counts)])
    rest = np.setdiff1d(np.arange(len(counts)), keep)
    if lam is not None:
        xk = x[:, keep]
        p = np.linalg.inv(xk.T @ xk + lam * np.eye(len(keep)))
        b = -p / np.diag(p)[None, :]
        np.fill_diagonal(b, 0.0)
    out = {}
    for u in range(1, len(x)):
        seen = x[u] > 0
        if lam is None:
            out[u] = catalogue[_ranked(counts, seen, np.arange(len(counts)))].tolist()
            continue
        scores = np.zeros(len(counts))
        scores[keep] = x[u, keep] @ b
        out[u] = catalogue[_ranked(scores, seen, keep) + _ranked(counts, seen, rest)].tolist()
    return out


@pytest.mark.parametrize("name, lam, items", [("ease", 500.0, None), ("ease-capped", 50.0, 20),
                                              ("popularity", None, None), ("item-knn", None, None)])  # fmt: skip
def test_served_closed_form_lists_are_numpys(models, data, name, lam, items):
    """Every user's served list (the whole catalogue, the training ratings left out) is EASE's, popularity's
    or item-kNN's computed here."""
    want = _item_knn_by_hand(data) if name == "item-knn" else _by_hand(data, lam, items)
    client = TestClient(create_app(models[name], reload_interval=0))
    md = Recommender.load(models[name]).model
    n = len(md.movie_ids)
    for user in md.user_ids:
        got = client.get(f"/api/users/{user}/recommendations", params={"k": n, "exclude_rated": "train"})
        assert got.status_code == 200, got.text
        assert [r["movie_id"] for r in got.json()["recommendations"]] == [
            md.own_movie(m) for m in want[md.user_row(user)]
        ], user


@pytest.mark.parametrize("name, baseline", [("ease", "EASE (lambda 500)"), ("popularity", "popularity")])
def test_evaluate_scores_a_closed_form_model_as_its_baseline_row(models, name, baseline):
    proc = run_cli("recsys.evaluate", "--model-dir", str(models[name]), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["model"]: r for r in json.loads(proc.stdout)["top_n"]["rows"]}
    keys = ("precision", "recall", "ndcg", "hr", "coverage")
    assert [rows[f"{Recommender.load(models[name]).first.label} ({name})"][k] for k in keys] == [
        rows[baseline][k] for k in keys
    ]


def test_what_a_closed_form_model_cannot_do_is_one_line(models, archive, tmp_path):
    ease, popularity = str(models["ease"]), str(models["popularity"])
    assert_one_line_error(run_cli("recsys.infer", "--model-dir", ease, "--user", "3", "--movie", "5"),
                          "is an ease model: it ranks movies but predicts no ratings")  # fmt: skip
    assert_one_line_error(run_cli("recsys.infer", "--model-dir", popularity, "--similar-to", "5"),
                          "is a popularity model: it has no movie vectors to find similar movies by")  # fmt: skip
    assert_one_line_error(run_cli("recsys.infer", "--model-dir", ease, "--user", "3", "--top-k", "3", "--explain"),
                          "cannot say why a movie is on a list")  # fmt: skip
    proc = run_cli("recsys.infer", "--model-dir", ease, "--rerank", str(models["ranking"]), "--user", "3", "--top-k",
                   "3")  # fmt: skip
    assert_one_line_error(proc, "was trained on the candidates of another EASE model")
    proc = run_cli("recsys.infer", "--model-dir", str(models["rating"]), "--rerank", str(models["ease-ranking"]),
                   "--user", "3", "--top-k", "3")  # fmt: skip
    assert_one_line_error(proc, "two stages need a first stage that gives candidates", "a rating model",
                          "--objective retrieval, ease, popularity or item-knn")  # fmt: skip
    # a ranking network learns from the ratings its first stage held out
    proc = run_cli("recsys.train", "--objective", "ranking", "--candidates-from", popularity, "--data-dir",
                   str(archive), "--model-dir", str(tmp_path / "r"))  # fmt: skip
    assert_one_line_error(proc, "held no training ratings out for a ranker to learn from")
    proc = run_cli("recsys.train", "--objective", "ranking", "--candidates-from", str(models["rating"]),
                   "--data-dir", str(archive), "--model-dir", str(tmp_path / "r"))  # fmt: skip
    assert_one_line_error(proc, "--candidates-from needs a first stage that gives candidates")
    client = TestClient(create_app(models["popularity"], reload_interval=0))
    for path in ("/api/movies/5/similar", "/api/predict?user=3&movie=5"):
        got = client.get(path)
        assert 400 <= got.status_code < 500 and list(got.json()) == ["error"], (path, got.text)


def _fit_matrix(data, seed: int = 0, holdout: float = 0.1) -> np.ndarray:
    """The 0/1 matrix of the training ratings a closed-form stage with `--holdout 0.1` is fitted on:
    each training rating drawn out with probability `holdout` (`recsys.training.splits.holdout_mask`)."""
    catalogue = np.array(sorted(data.meta.movies))
    train_idx = np.flatnonzero(~data.is_test)
    fit = train_idx[~(np.random.RandomState(seed + 2).random_sample(len(train_idx)) < holdout)]
    x = np.zeros((data.sizes()["n_users"], len(catalogue)))
    x[data.user[fit], np.searchsorted(catalogue, data.movie[fit])] = 1
    return x


def _closed_form_weights(name: str, fit: np.ndarray) -> np.ndarray | None:
    """EASE's item-item weights (lambda 500) or item-kNN's similarities of the 0/1 matrix `fit`; None for
    popularity (its scores are the columns' counts)."""
    if name == "item-knn":
        return _cosines(fit, 100)
    if name == "popularity":
        return None
    p = np.linalg.inv(fit.T @ fit + 500.0 * np.eye(fit.shape[1]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


@pytest.mark.parametrize("name", STACKED)
def test_a_ranker_on_a_closed_form_stage_reorders_its_top_n(models, data, name):
    """The served two stages: the first stage's top N (EASE, popularity or item-kNN fitted here in NumPy on the
    ratings it kept, scored from every training rating), reordered by the ranker's served scores, cut to k."""
    x, catalogue = _training(data)
    fit = _fit_matrix(data)
    assert 0 < fit.sum() < x.sum()
    counts, b = fit.sum(0), _closed_form_weights(name, fit)
    rec = Recommender.load(models[f"{name}-held"], rerank=models[f"{name}-ranking"])
    assert rec.candidates == CANDIDATES and rec.stages == [name, "ranking"]
    md = rec.model
    for user in rec.users[::9]:
        row = md.user_row(user)
        scores = counts if b is None else x[row] @ b
        want = catalogue[_ranked(scores, x[row] > 0, np.arange(len(counts)))[:CANDIDATES]]
        doc = rec.recommend(user, k=CANDIDATES, exclude_rated="train")["recommendations"]
        got = {md.movie_row(r["movie_id"]): r for r in doc}
        assert sorted(got) == sorted(want.tolist()), user  # every candidate, once
        assert [got[m]["retrieval_rank"] for m in want] == list(range(1, CANDIDATES + 1))
        np.testing.assert_allclose([got[m]["first_score"] for m in want],
                                   scores[np.searchsorted(catalogue, want)], rtol=1e-5, atol=1e-6)  # fmt: skip
        by_score = sorted(want, key=lambda m: (-got[m]["score"], got[m]["retrieval_rank"]))
        top = rec.recommend(user, k=5, exclude_rated="train")["recommendations"]
        assert [md.movie_row(r["movie_id"]) for r in top] == by_score[:5], user
        assert [r["score"] for r in top] == [got[m]["score"] for m in by_score[:5]]


def test_evaluate_scores_a_ranker_on_ease_as_two_stages(models):
    proc = run_cli("recsys.evaluate", "--model-dir", str(models["ease-held"]), "--rerank",
                   str(models["ease-ranking"]), "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {r["model"]: r for r in json.loads(proc.stdout)["top_n"]["rows"]}
    two = rows[f"two-stage: EASE top {CANDIDATES} -> ranking network"]
    assert 0 <= two["ndcg"] <= 1 and 0 < two["candidates_recall"] <= 1


def test_a_ranker_on_ease_serves_through_infer_and_the_service(models):
    ease, ranker = str(models["ease-held"]), str(models["ease-ranking"])
    rec = Recommender.load(ease, rerank=ranker)
    want = [r["movie_id"] for r in rec.recommend(3, k=4)["recommendations"]]
    proc = run_cli("recsys.infer", "--model-dir", ease, "--rerank", ranker, "--user", "3", "--top-k", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [r["movie_id"] for r in json.loads(proc.stdout)["recommendations"]] == want
    client = TestClient(create_app(ease, rerank=ranker, reload_interval=0))
    got = client.get("/api/users/3/recommendations", params={"k": 4})
    assert got.status_code == 200, got.text
    assert [r["movie_id"] for r in got.json()["recommendations"]] == want
    assert got.json()["stages"] == ["ease", "ranking"]
    # the refit (the same flags with --holdout 0, on every training rating) serves in its place
    refit = Recommender.load(models["ease"], rerank=ranker).recommend(3, k=CANDIDATES)["recommendations"]
    assert [r["retrieval_rank"] for r in refit] != list(range(1, CANDIDATES + 1))  # reordered
    assert sorted(r["retrieval_rank"] for r in refit) == list(range(1, CANDIDATES + 1))


@pytest.mark.parametrize("flags, needle", [
    (["--ease-lambda", "0"], "--ease-lambda must be positive, got 0.0"),
    (["--ease-lambda", "nan"], "--ease-lambda must be positive, got nan"),
    (["--ease-lambda", "x"], "argument --ease-lambda: invalid float value: 'x'"),
    (["--ease-items", "0"], "--ease-items must be at least 1, got 0"),
])  # fmt: skip
def test_bad_closed_form_flags_are_one_error_line(archive, tmp_path, flags, needle):
    proc = run_cli("recsys.train", "--objective", "ease", "--data-dir", str(archive), "--model-dir",
                   str(tmp_path / "m"), *flags)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {needle} (see python -m recsys.train --help)"
    assert not (tmp_path / "m").exists()
