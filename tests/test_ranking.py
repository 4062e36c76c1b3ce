"""The user's history in the user tower, the ranking network, and the two stages built from them."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import paddle
import pytest
import scipy.sparse as sp
from conftest import assert_one_line_error, infer_json, need_ml100k, run_cli

from recsys import Recommender, movielens, train
from recsys.data import history
from recsys.model import weighted_logistic_loss
from recsys.modeldir import ModelDir
from recsys.topn import Interactions, evaluate
from recsys.topn.lists import rating_keys, rerank_pool
from recsys.topn.rerank import PairInputs
from recsys.training import loop
from recsys.training.candidates import Candidates
from recsys.training.retrieval import RetrievalTask

U1 = ["--dataset", "ml-100k", "--split", "u1"]


def test_history_weights_are_the_mean_without_the_examples_own_movie():
    rows = np.zeros((3, 6), np.float32)
    rows[[1, 1, 1, 2], [0, 2, 5, 4]] = 1.0  # user 1 rated movies 0, 2, 5; user 2 rated 4
    got = history.history_weights(rows[[1, 1, 2, 0]], leave_out=np.array([2, 3, 4, 3]))
    want = np.zeros((4, 6), np.float32)
    want[0, [0, 5]] = 1 / 2  # user 1 rated 0, 2, 5; the example is movie 2
    want[1, [0, 2, 5]] = 1 / 3  # movie 3 is not in the history: nothing to leave out
    # user 2's only movie is the example's own: an empty history; user 0 has none
    np.testing.assert_array_equal(got, want)


def test_training_feeds_leave_out_the_own_movie_and_hold_no_test_rating(small_dir):
    data = movielens.load("ml-1m", small_dir)
    t = RetrievalTask(data, with_history=True, history_cap=0)
    train_idx = np.flatnonzero(~data.is_test)
    t.use_history(train_idx)
    idx = train_idx[:64]
    ids, rows, w = (x.numpy() for x in t.feeds(idx, training=True)[7])  # sparse: movie, batch row, weight
    weights = np.zeros((len(idx), data.sizes()["n_movies"]), np.float32)
    np.add.at(weights, (rows, ids), w.ravel())
    for row, i in zip(weights, idx):
        u = data.user[i]
        rated = set(data.movie[train_idx][data.user[train_idx] == u].tolist()) - {int(data.movie[i])}
        want = np.zeros(len(row), np.float32)
        want[sorted(rated)] = 1 / len(rated)
        np.testing.assert_allclose(row, want, rtol=1e-6)
    test_movies = data.movie[data.is_test & (data.user == data.user[idx[0]])]
    assert not t.full_history.dense(data.user[idx[:1]])[0, test_movies].any()  # evaluation: training ratings only


def _ml100k_with(tmp_path, name: str, member: str, line: str):
    """A copy of the real ml-100k archive with one more line in one member."""
    src = need_ml100k() / "ml-100k.zip"
    folder = tmp_path / name
    folder.mkdir()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(folder / "ml-100k.zip", "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("/" + member):
                data = data + line.encode()
            zout.writestr(item, data)
    return folder


def test_a_planted_test_rating_never_moves_the_users_vector(tmp_path):
    """User 1 never rated movie 300 in u1; planting that rating in u1.test leaves every saved vector of a
    history model as it was, while planting it in u1.base (the control) moves user 1's vector."""
    plain = _ml100k_with(tmp_path, "plain", "u1.test", "")
    test = _ml100k_with(tmp_path, "test", "u1.test", "1\t300\t5\t874965758\n")
    base = _ml100k_with(tmp_path, "base", "u1.base", "1\t300\t5\t874965758\n")
    vectors = {}
    for name, folder in (("plain", plain), ("test", test), ("base", base)):
        model = tmp_path / f"{name}.model"
        proc = run_cli("recsys.train", *U1, "--data-dir", str(folder), "--model-dir", str(model),
                       "--objective", "retrieval", "--epochs", "1", "--max-batches", "20")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        md = ModelDir.load(model)
        assert md.history
        vectors[name] = md.arrays["user_vectors"]
    np.testing.assert_array_equal(vectors["test"], vectors["plain"])
    assert not np.allclose(vectors["base"][1], vectors["plain"][1], atol=1e-4)


def test_weighted_logistic_loss_against_numpy():
    logit = np.array([[2.0], [-1.0], [0.5], [-3.0]], np.float32)
    label = np.array([[1.0], [0.0], [1.0], [0.0]], np.float32)
    weight = np.array([[5.0], [1.0], [4.0], [1.0]], np.float32)
    p = 1 / (1 + np.exp(-logit.astype(np.float64)))
    per = -(label * np.log(p) + (1 - label) * np.log(1 - p))
    want = float((per * weight).sum() / weight.sum())
    got = weighted_logistic_loss(*(paddle.to_tensor(a) for a in (logit, label, weight)))
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_negatives_are_never_rated_in_training():
    rng = np.random.RandomState(0)
    rated = rng.random_sample((30, 50)) < 0.6
    rated[0, :49] = True  # user 0 left one movie unrated
    rated[1, :] = True  # user 1 rated everything: no negative exists
    pool = np.argsort(-rng.random_sample((30, 50)), axis=1)[:, :10]
    none = sp.csr_matrix((30, 50), dtype=np.float32)
    user, col = np.nonzero(rated)
    zeros = np.zeros(50, np.float32)
    inputs = PairInputs(np.zeros((30, 4)), none, np.zeros((50, 4)), sp.csr_matrix((50, 50), dtype=np.float32), zeros,
                        np.zeros((50, 3), np.float32), zeros, zeros)  # fmt: skip
    cand = Candidates(inputs, rating_keys(user, col, 50), pool)
    users = np.repeat(np.arange(30), 20)
    for hard in (0.0, 0.5, 1.0):
        cols = cand.negatives(users, 3, hard, np.random.RandomState(1))
        drawn = cols >= 0
        assert not rated[np.repeat(users, 3)[drawn], cols[drawn]].any()
        assert (cols[np.repeat(users, 3) == 1] == -1).all()
        assert drawn.mean() > 0.9


@pytest.fixture(scope="session")
def u1_two_stage(tmp_path_factory):
    """A short retrieval training and a short ranking network on its candidates, on ml-100k u1."""
    data = str(need_ml100k())
    out = tmp_path_factory.mktemp("u1-ranking")
    flags = [*U1, "--data-dir", data]
    # every rated movie in each step (no cap): in 8 epochs the history part learns enough to be tested
    proc = run_cli("recsys.train", *flags, "--model-dir", str(out / "retrieval"), "--objective", "retrieval",
                   "--epochs", "8", "--history-cap", "0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("recsys.train", *flags, "--model-dir", str(out / "ranking"), "--objective", "ranking",
                   "--candidates-from", str(out / "retrieval"), "--epochs", "4",
                   "--pair-features", "basic")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out / "retrieval", out / "ranking"


def _candidates(md: ModelDir, user: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A retrieval model's cosines of every catalogue row for `user`, and its first stage's top-n rows outside
    the user's training ratings, ties to the smaller movie id: by the cosine plus beta times the user's history
    dotted with the saved item-item weights, computed here from the saved arrays."""
    movies, _, is_test = md.ratings_of(user)
    rated = np.isin(md.movie_ids, movies[~is_test])
    cosine = md.catalogue_vectors @ md.arrays["user_vectors"][user]
    score = cosine + md.first_stage_beta * (rated.astype(np.float64) @ md.item_item.toarray())
    assert md.first_stage_beta > 0
    return cosine, np.lexsort((md.movie_ids, -np.where(rated, -np.inf, score)))[:n]


def test_two_stage_is_the_candidates_reordered_by_the_ranking_network(u1_two_stage):
    retrieval, ranking = u1_two_stage
    protocol = ["--exclude-rated", "train"]  # the candidates below leave out the training ratings alone
    doc = infer_json("--model-dir", str(retrieval), "--rerank", str(ranking), "--user", "1", "--top-k", "10", *protocol)
    assert doc["stages"] == ["retrieval", "ranking"]
    r, k = ModelDir.load(retrieval), ModelDir.load(ranking)
    # the candidates, computed here from the saved arrays: user 1's top N unrated movies by the first stage's
    # score, N the number the ranking network was trained to reorder (its --candidates, by default 200)
    movies, _, is_test = r.ratings_of(1)
    cosine, pool = _candidates(r, 1, 200)
    assert doc["candidates"] == k.meta["settings"]["candidates"] == 200
    # the pair features (`--pair-features basic`): the retrieval cosine, the movie's log share, the item-item
    # score of user 1's history
    history = np.flatnonzero(np.isin(r.movie_ids, movies[~is_test]))
    item = np.asarray(k.item_item[history][:, pool].sum(axis=0)).ravel()  # the movies' sparse neighbour weights
    features = np.stack([cosine[pool], k.arrays["log_share"][pool], item], axis=1)
    # the ranking network's head, written out: features @ linear + fc(relu(fc([u * m, features])))
    p = k.params()
    x = np.concatenate([k.arrays["user_outputs"][1] * k.arrays["movie_outputs"][r.movie_ids[pool]], features], axis=1)
    hidden = np.maximum(x @ p["head.fc.weight"] + p["head.fc.bias"], 0)
    logit = (features @ p["head.linear"] + hidden @ p["head.out.weight"] + p["head.out.bias"])[:, 0]
    best = pool[np.argsort(-logit, kind="stable")[:10]]
    assert [row["movie_id"] for row in doc["recommendations"]] == r.movie_ids[best].tolist()
    assert [row["retrieval_rank"] for row in doc["recommendations"]] == [
        int(np.flatnonzero(pool == c)[0]) + 1 for c in best
    ]
    got = np.array([row["score"] for row in doc["recommendations"]])
    np.testing.assert_allclose(got, np.sort(logit)[::-1][:10], rtol=1e-4, atol=1e-5)


def test_rated_movies_move_a_new_users_list_towards_their_neighbours(u1_two_stage):
    retrieval, _ = u1_two_stage
    new = ["--model-dir", str(retrieval), "--gender", "F", "--age", "25", "--job", "4", "--top-k", "20"]
    plain = [r["movie_id"] for r in infer_json(*new)["recommendations"]]
    rated = [1, 71, 95]  # Toy Story, The Lion King, Aladdin
    doc = infer_json(*new, "--rated", ",".join(f"{m}:5" for m in rated))
    given = [r["movie_id"] for r in doc["recommendations"]]
    assert doc["rated"] == [[m, 5.0] for m in rated]
    assert not set(given) & set(rated)  # what the user rated is not recommended back
    vectors = ModelDir.load(retrieval).arrays["movie_vectors"]
    taste = vectors[rated].mean(axis=0)  # the direction of the rated movies

    def closeness(movies):
        return float((vectors[[m for m in movies if m not in rated]] @ taste).mean())

    assert given != plain
    assert closeness(given) > closeness(plain) + 0.03


def test_ranking_bad_inputs(u1_two_stage, u1_models, trained, tmp_path):
    retrieval, ranking = u1_two_stage
    _, rating = u1_models
    data = ["--data-dir", str(need_ml100k())]
    cases = [
        (["recsys.infer", "--model-dir", str(ranking), "--rerank", str(ranking), "--user", "1", "--top-k", "5"],
         "two stages need a first stage that gives candidates"),
        (["recsys.evaluate", "--model-dir", str(ranking), "--rerank", str(ranking)],
         "two stages need a first stage that gives candidates"),
        (["recsys.train", *U1, *data, "--objective", "ranking", "--candidates-from", str(rating),
          "--model-dir", str(tmp_path / "x")], "--candidates-from needs a first stage that gives candidates"),
        (["recsys.train", *U1, *data, "--objective", "ranking", "--candidates-from", str(ranking),
          "--model-dir", str(tmp_path / "x")], "--candidates-from needs a first stage that gives candidates"),
        (["recsys.train", "--dataset", "ml-100k", "--split", "u2", *data, "--objective", "ranking",
          "--candidates-from", str(retrieval), "--model-dir", str(tmp_path / "x")], "was trained on other data"),
        (["recsys.infer", "--model-dir", str(retrieval), "--rerank", str(trained), "--user", "1", "--top-k", "5"],
         "disagree on their"),
        (["recsys.infer", "--model-dir", str(retrieval), "--gender", "F", "--age", "25", "--job", "4",
          "--top-k", "5", "--rated", "99999:4"], "rated movie 99999 is unknown"),
        (["recsys.infer", "--model-dir", str(retrieval), "--gender", "F", "--age", "25", "--job", "4",
          "--top-k", "5", "--rated", "1:6"], "outside the data's scale 1..5"),
        (["recsys.infer", "--model-dir", str(retrieval), "--gender", "F", "--age", "25", "--job", "4",
          "--top-k", "5", "--rated", "1:0"], "outside the data's scale 1..5"),
        (["recsys.infer", "--model-dir", str(retrieval), "--gender", "F", "--age", "25", "--job", "4",
          "--top-k", "5", "--rated", "1=5"], "MOVIE:STARS"),
        (["recsys.infer", "--model-dir", str(rating), "--gender", "F", "--age", "25", "--job", "4",
          "--top-k", "5", "--rated", "1:5"], "has no history input"),
    ]  # fmt: skip
    assert not (tmp_path / "x").exists()
    for args, needle in cases:
        assert_one_line_error(run_cli(*args), needle)
    assert not (tmp_path / "x").exists()


def test_a_ranker_refuses_another_retrieval_model(u1_two_stage, tmp_path):
    retrieval, ranking = u1_two_stage
    other = tmp_path / "other"
    proc = run_cli("recsys.train", *U1, "--data-dir", str(need_ml100k()), "--model-dir", str(other),
                   "--objective", "retrieval", "--epochs", "1", "--max-batches", "5")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("recsys.infer", "--model-dir", str(other), "--rerank", str(ranking), "--user", "1", "--top-k", "5")
    assert_one_line_error(proc, "was trained on the candidates of another retrieval model")


def test_the_head_starts_from_the_first_stage_score(u1_two_stage, tmp_path):
    """The ranking head's linear part starts as 4 * (cosine + beta * item-item score), the retrieval model's
    first stage: a training whose steps hardly move it (Adam at 1e-9) saves those weights."""
    retrieval, _ = u1_two_stage
    flags = ["--objective", "ranking", "--candidates-from", str(retrieval), "--epochs", "1", "--lr", "1e-9",
             "--pair-features", "basic"]  # fmt: skip
    proc = run_cli(
        "recsys.train", *U1, "--data-dir", str(need_ml100k()), "--model-dir", str(tmp_path / "still"), *flags
    )
    assert proc.returncode == 0, proc.stderr
    beta = ModelDir.load(retrieval).first_stage_beta
    assert beta > 0
    linear = ModelDir.load(tmp_path / "still").params()["head.linear"].ravel()
    np.testing.assert_allclose(linear, [4.0, 0.0, 4.0 * beta], rtol=1e-5, atol=1e-5)


def test_a_short_ranking_training_lifts_ndcg_over_the_cosine_order(u1_two_stage):
    """A short training lifts NDCG@10 above the retrieval cosine's order of the same candidates."""
    retrieval, ranking = u1_two_stage
    proc = run_cli("recsys.evaluate", "--model-dir", str(retrieval), "--rerank", str(ranking), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["model"].split(" (")[0]: r for r in json.loads(proc.stdout)["top_n"]["rows"]}
    two = rows["two-stage: retrieval top 200 -> ranking network"]
    assert 0 < two["candidates_recall"] <= 1
    rec = Recommender.load(retrieval, ranking)
    md, data = rec.model, movielens.load("ml-100k", need_ml100k(), "u1")
    test = Interactions.build(md.movie_ids, data.user, data.movie, data.stars, data.is_test)

    def by_cosine(users, seen, k):  # the same candidates, in the untrained head's order
        pools: list[np.ndarray] = []
        rec.ranker(pools)(users, seen, k)
        movies = md.catalogue_vectors[np.maximum(pools[0], 0)]
        return rerank_pool(pools[0], np.einsum("nd,npd->np", md.arrays["user_vectors"][users], movies), k)

    assert two["ndcg"] == pytest.approx(evaluate(rec.ranker(), test)["ndcg"], abs=1e-9)
    assert two["ndcg"] > evaluate(by_cosine, test)["ndcg"] + 0.01


def test_the_service_serves_two_stages_and_a_new_users_rated_movies(u1_two_stage):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from recsys.serve import create_app

    retrieval, ranking = u1_two_stage
    pair = ["--model-dir", str(retrieval), "--rerank", str(ranking)]
    with TestClient(create_app(retrieval, ranking, reload_interval=0)) as client:
        got = client.get("/api/users/1/recommendations?k=10").json()
        assert got == infer_json(*pair, "--user", "1", "--top-k", "10")
        who = {"gender": "F", "age": 25, "job": 4, "k": 10, "rated": [[1, 5], [71, 4]]}
        got = client.post("/api/recommend", json=who).json()
        assert got == infer_json(
            *pair, "--gender", "F", "--age", "25", "--job", "4", "--top-k", "10", "--rated", "1:5,71:4"
        )
        for rated, needle in (([[99999, 4]], "unknown"), ([[1, 7]], "outside the data's scale")):
            bad = client.post("/api/recommend", json=who | {"rated": rated})
            assert 400 <= bad.status_code < 500 and needle in bad.json()["error"]
            assert list(bad.json()) == ["error"]
        bad = client.post("/api/recommend", json={"user_id": 1, "rated": [[1, 5]]})
        assert bad.status_code == 422 and "not both" in bad.json()["error"]


def test_evaluations_before_the_last_read_a_sample_of_test_users_and_the_last_reads_all(u1_two_stage):
    retrieval, ranking = u1_two_stage
    metrics = json.loads((ranking / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    # an epoch trains on at most batches x 256 positives, each with 4 negatives: fewer than 200 x 20 / 0.1 pairs,
    # so the sample holds the smallest number of users
    assert metrics[0]["batch"] * 256 * 5 * loop.BETWEEN_PAIRS / 200 < loop.BETWEEN_USERS
    assert [m.get("test_users") for m in metrics] == [loop.BETWEEN_USERS] * 3 + [None]
    proc = run_cli("recsys.evaluate", "--model-dir", str(retrieval), "--rerank", str(ranking), "--json")
    assert proc.returncode == 0, proc.stderr
    top_n = json.loads(proc.stdout)["top_n"]
    full = {r["model"].split(" (")[0]: r for r in top_n["rows"]}["two-stage: retrieval top 200 -> ranking network"]
    assert top_n["users"] > loop.BETWEEN_USERS
    assert metrics[-1]["test_ndcg@10"] == pytest.approx(full["ndcg"], abs=1e-4)


def test_the_ranker_never_learns_from_labels_its_retrieval_model_trained_on(u1_two_stage, tmp_path):
    retrieval, _ = u1_two_stage
    data = movielens.load("ml-100k", need_ml100k(), "u1")
    settings = ModelDir.load(retrieval).meta["settings"]
    flags = [*U1, "--objective", "retrieval", "--epochs", "8", "--history-cap", "0", "--model-dir", str(tmp_path)]
    first = loop.Run(train.parse_args(flags), data, print, None)  # the retrieval model's training ratings
    assert settings["holdout"] == 0.1 and settings["history_cap"] == 0
    flags = [*U1, "--objective", "ranking", "--candidates-from", str(retrieval), "--model-dir", str(tmp_path)]
    ranker = loop.Run(train.parse_args(flags), data, print, None)
    assert len(ranker.train_idx) > 1000
    assert not np.isin(ranker.train_idx, first.train_idx).any()  # the ranker's positives: held out of retrieval's
    assert not data.is_test[ranker.train_idx].any()


def test_a_refit_first_stage_serves_with_the_ranker_and_other_flags_are_refused(u1_two_stage, tmp_path):
    retrieval, ranking = u1_two_stage
    flags = [*U1, "--data-dir", str(need_ml100k()), "--objective", "retrieval", "--history-cap", "0"]
    refit, other = tmp_path / "refit", tmp_path / "other"
    for model, more in ((refit, ["--epochs", "8"]), (other, ["--epochs", "1", "--max-batches", "5"])):
        proc = run_cli("recsys.train", *flags, *more, "--holdout", "0", "--model-dir", str(model))
        assert proc.returncode == 0, proc.stderr
    user = ["--user", "1", "--top-k", "10", "--exclude-rated", "train"]  # candidates as `_candidates` finds them
    doc = infer_json("--model-dir", str(refit), "--rerank", str(ranking), *user)
    # the served first stage is the refit: the candidates are its top 200, not the held-out model's
    r = ModelDir.load(refit)
    pool = r.movie_ids[_candidates(r, 1, 200)[1]]
    for row in doc["recommendations"]:
        assert pool[row["retrieval_rank"] - 1] == row["movie_id"]
    held_out = infer_json("--model-dir", str(retrieval), "--rerank", str(ranking), *user)
    ranks = [row["retrieval_rank"] for row in doc["recommendations"]]
    assert ranks != [row["retrieval_rank"] for row in held_out["recommendations"]]
    proc = run_cli("recsys.infer", "--model-dir", str(other), "--rerank", str(ranking), "--user", "1", "--top-k", "5")
    assert_one_line_error(proc, "its refit (the same flags with --holdout 0)")
