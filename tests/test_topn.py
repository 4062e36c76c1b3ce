"""Top-N: the metrics, the baselines, the candidate-generation objective, and two-stage recommendation."""

from __future__ import annotations

import json

import numpy as np
import paddle
import pytest
from conftest import assert_one_line_error, run_cli

from recsys import Recommender, movielens, topn, train
from recsys.errors import RecsysError
from recsys.model import in_batch_softmax_loss, softmax_loss
from recsys.modeldir import ModelDir
from recsys.topn import stages
from recsys.training import loop


def test_metrics_on_a_hand_computed_ranking():
    lists = np.array([[0, 1, 2], [3, 4, 5], [7, 8, 9]])
    relevant = [{1, 5}, {9}, set()]  # the third user has no relevant rating: skipped, list and all
    got = topn.metrics(lists, relevant, k=3, n_catalogue=10)
    ndcg_first = (1 / np.log2(3)) / (1 + 1 / np.log2(3))  # one hit at rank 2; ideal: two hits at ranks 1, 2
    assert got["users"] == 2
    assert got["precision"] == pytest.approx((1 / 3 + 0) / 2)
    assert got["recall"] == pytest.approx((1 / 2 + 0) / 2)
    assert got["ndcg"] == pytest.approx((ndcg_first + 0) / 2)
    assert got["hr"] == pytest.approx(0.5)
    assert got["coverage"] == pytest.approx(6 / 10)  # movies 0..5 shown to the two evaluated users
    one = topn.metrics(np.array([[4, 2, 7]]), [{4, 2, 7, 8}], k=3, n_catalogue=10)
    assert one["ndcg"] == pytest.approx(1.0) and one["recall"] == pytest.approx(3 / 4)  # ideal over min(4, 3)
    with pytest.raises(RecsysError, match="no test user"):
        topn.metrics(lists, [set(), set(), set()], k=3, n_catalogue=10)


def test_top_k_lists_exclude_seen_break_ties_by_id_and_pad():
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 5.0]])
    seen = np.array([[False, False, True, False, False], [True, True, True, True, False]])
    np.testing.assert_array_equal(topn.top_k_lists(scores, seen, 3), [[1, 4, 3], [4, -1, -1]])
    with pytest.raises(RecsysError, match="non-finite"):
        topn.top_k_lists(np.array([[1.0, np.nan]]), np.zeros((1, 2), bool), 1)


def _interactions(x: np.ndarray) -> topn.Interactions:
    user, col = np.nonzero(x)
    n = len(user)
    return topn.Interactions.build(np.arange(x.shape[1]), user, col, np.full(n, 5), np.zeros(n, bool))


def test_ease_solves_its_ridge_regressions():
    """EASE's closed form equals, column by column, the ridge regression of that movie on the others."""
    x = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 1, 0], [0, 0, 1, 1]], float)
    lam = 2.0
    b = topn.EASE(lam).fit(_interactions(x)).b
    for j in range(4):
        rest = [i for i in range(4) if i != j]
        a = x[:, rest]
        want = np.linalg.solve(a.T @ a + lam * np.eye(3), a.T @ x[:, j])
        np.testing.assert_allclose(b[rest, j], want, rtol=1e-5, atol=1e-6)
        assert b[j, j] == 0
    np.testing.assert_allclose(topn.EASE(lam).fit(_interactions(x)).scores(np.array([0])), x[:1] @ b, rtol=1e-6)


def test_popularity_counts_training_ratings_and_breaks_ties_by_movie_id():
    x = np.array([[0, 1, 1, 0, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 1]])  # counts 2, 2, 2, 0, 2
    data = _interactions(x)
    lists = topn.top_k_lists(topn.Popularity().fit(data).scores(np.arange(3)), np.zeros((3, 5), bool), 5)
    np.testing.assert_array_equal(lists[0], [0, 1, 2, 4, 3])


def test_full_softmax_loss_equals_numpy():
    rng = np.random.RandomState(0)
    u, v, target, tau = rng.randn(6, 8), rng.randn(11, 8), rng.randint(0, 11, 6), 0.1
    logits = (u / np.linalg.norm(u, axis=1, keepdims=True)) @ (v / np.linalg.norm(v, axis=1, keepdims=True)).T / tau
    want = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(6), target])
    got = softmax_loss(*(paddle.to_tensor(a.astype(np.float32)) for a in (u, v)), paddle.to_tensor(target), tau)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_in_batch_loss_approaches_the_full_softmax_as_the_batch_covers_the_catalogue():
    rng = np.random.RandomState(1)
    n_movies, tau = 20, 0.5
    movies = rng.randn(n_movies, 8).astype(np.float32)
    user = rng.randn(8).astype(np.float32)
    q = rng.dirichlet(np.full(n_movies, 5.0))
    logits = movies @ user / np.linalg.norm(movies, axis=1) / np.linalg.norm(user) / tau

    def gap(batch: int) -> float:
        ids = rng.choice(n_movies, batch, p=q)
        full = np.mean(np.log(np.exp(logits).sum()) - logits[ids])
        users = paddle.to_tensor(np.tile(user, (batch, 1)))
        got = in_batch_softmax_loss(users, paddle.to_tensor(movies[ids]), ids, np.log(q).astype(np.float32), tau)
        return abs(float(got) - full)

    small, large = gap(8), gap(4000)
    assert large < 0.02 < 0.1 < small


def test_short_retrieval_training_beats_popularity_and_the_rating_model(u1_models):
    retrieval, rating = u1_models
    md = ModelDir.load(retrieval)
    assert md.objective == "retrieval" and md.meta["settings"]["negatives"] == "in-batch"
    proc = run_cli("recsys.evaluate", "--model-dir", str(retrieval), "--rerank", str(rating), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = {r["model"].split(" (")[0].split(":")[0]: r for r in doc["top_n"]["rows"]}
    assert set(rows) == {"popularity", "EASE", "retrieval", "chapter model", "two-stage"}
    assert rows["popularity"]["ndcg"] == pytest.approx(0.2451, abs=1e-4)  # the measurement
    assert rows["EASE"]["ndcg"] == pytest.approx(0.4476, abs=1e-4)
    assert rows["retrieval"]["ndcg"] > rows["popularity"]["ndcg"] + 0.05
    assert rows["retrieval"]["ndcg"] > rows["chapter model"]["ndcg"]
    assert doc["top_n"]["users"] == 456 and doc["top_n"]["k"] == 10
    assert [r["model"] for r in doc["rows"]][0] == "recsys model (rating)"  # the rating table: the rating model
    metrics = json.loads((retrieval / "metrics.json").read_text())
    assert metrics[-1]["test_ndcg@10"] == pytest.approx(rows["retrieval"]["ndcg"], abs=1e-4)


def test_two_stage_is_the_retrieval_candidates_reordered_by_the_rating_model(u1_models):
    retrieval, rating = u1_models
    args = ["--model-dir", str(retrieval), "--rerank", str(rating), "--user", "1", "--exclude-rated", "train", "--json"]
    doc = json.loads(run_cli("recsys.infer", *args, "--top-k", "20", "--candidates", "20").stdout)
    md, rr = ModelDir.load(retrieval), ModelDir.load(rating)
    first = [m for m, _, _ in stages.top_k(md, 1, 20)]
    got = [r["movie_id"] for r in doc["recommendations"]]
    assert sorted(got) == sorted(first)
    predicted = stages.predict(rr, 1, np.array(first))  # the rating model's inference model
    assert got == [first[i] for i in np.argsort(-predicted, kind="stable")]
    for r in doc["recommendations"]:
        assert first[r["retrieval_rank"] - 1] == r["movie_id"]
        assert r["score"] == pytest.approx(float(predicted[first.index(r["movie_id"])]), abs=1e-4)
    five = json.loads(run_cli("recsys.infer", *args, "--top-k", "5", "--candidates", "20").stdout)
    assert [r["movie_id"] for r in five["recommendations"]] == got[:5] and five["stages"] == ["retrieval", "rating"]
    one = ["--model-dir", str(retrieval), "--user", "1", "--top-k", "3", "--exclude-rated", "train", "--json"]
    alone = json.loads(run_cli("recsys.infer", *one).stdout)
    assert [r["movie_id"] for r in alone["recommendations"]] == first[:3] and set(alone["recommendations"][0]) == {
        "movie_id", "title", "genres", "score", "cosine"}  # fmt: skip


def test_two_stage_bad_inputs(u1_models, trained):
    retrieval, rating = u1_models
    cases = [
        (["--model-dir", str(rating), "--rerank", str(rating)], "is a rating model"),
        (["--model-dir", str(retrieval), "--rerank", str(retrieval)], "--rerank needs a rating or ranking model"),
        (["--model-dir", str(retrieval), "--rerank", str(trained)], "disagree on their dataset"),
        (
            ["--model-dir", str(retrieval), "--rerank", str(rating), "--candidates", "0"],
            "--candidates must be at least 1",
        ),
    ]
    for flags, needle in cases:
        assert_one_line_error(run_cli("recsys.infer", *flags, "--user", "1", "--top-k", "10"), needle)
    proc = run_cli("recsys.infer", "--model-dir", str(retrieval), "--user", "1", "--movie", "5")
    assert_one_line_error(proc, "is a retrieval model: it ranks movies but predicts no ratings")
    proc = run_cli("recsys.evaluate", "--model-dir", str(retrieval), "--rerank", str(trained))
    assert_one_line_error(proc, "disagree on their dataset")
    assert_one_line_error(
        run_cli("recsys.evaluate", "--model-dir", str(retrieval), "--k", "0"), "--k must be at least 1"
    )


def _retrieval_args(small_dir, model, *flags):
    return train.parse_args(["--data-dir", str(small_dir), "--model-dir", str(model), "--objective", "retrieval",
                             "--temperature", "0.1", *flags])  # fmt: skip


@pytest.mark.parametrize("negatives", ["in-batch", "full"])
def test_retrieval_seed_determinism_and_resume(small_dir, tmp_path, negatives):
    data = movielens.load(data_dir=small_dir)
    flags = ["--epochs", "2", "--negatives", negatives, "--batch-size", "512"]
    runs = [train.train(_retrieval_args(small_dir, tmp_path / n, *flags), data, log=lambda _: None)[1] for n in "ab"]
    key = [(m["train_cost"], m["test_cost"], m["test_ndcg@10"]) for m in runs[0]]
    assert key == [(m["train_cost"], m["test_cost"], m["test_ndcg@10"]) for m in runs[1]] and len(key) == 2
    assert runs[0][-1]["test_cost"] < runs[0][0]["test_cost"] or runs[0][-1]["train_cost"] < runs[0][0]["train_cost"]
    # one epoch, then --resume to the second: the same costs as the uninterrupted run
    resumed = tmp_path / "c"
    args = _retrieval_args(small_dir, resumed, *flags, "--max-batches", str(runs[0][0]["step"]))
    train.train(args, data, log=lambda _: None)
    got = train.train(_retrieval_args(small_dir, resumed, *flags, "--resume"), data, log=lambda _: None)[1]
    assert [(m["train_cost"], m["test_cost"]) for m in got] == [(m["train_cost"], m["test_cost"]) for m in runs[0]]
    md = ModelDir.load(resumed)
    assert md.objective == "retrieval" and md.meta["settings"]["temperature"] == 0.1
    wrong = ["--data-dir", str(small_dir), "--model-dir", str(resumed), "--resume", "--objective", "rating", *flags]
    with pytest.raises(RecsysError, match="--objective 'retrieval'"):
        train.parse_args(wrong)
    alone = train.parse_args(["--model-dir", str(resumed), "--resume"])  # the recorded run, with its data
    assert (alone.objective, alone.temperature, alone.negatives) == ("retrieval", 0.1, negatives)
    assert alone.data_dir == str(small_dir / "ml-1m.zip")


def test_retrieval_evaluations_before_the_last_read_a_sample_of_test_users(small_dir, tmp_path):
    data = movielens.load(data_dir=small_dir)
    run = loop.Run(_retrieval_args(small_dir, tmp_path / "m", "--epochs", "2", "--batch-size", "64"), data,
                   lambda _: None, None)  # fmt: skip
    metrics = run.run()[1]
    # each of an epoch's positives against the batch's 64 movies: a tenth of those pairs, over 400 movies a user
    sampled = int(len(run.train_idx) * 64 * loop.BETWEEN_PAIRS) // 400
    assert loop.BETWEEN_USERS < sampled < len(run.ranking.eval_users())
    assert [m.get("test_users") for m in metrics] == [sampled, None]
    assert metrics[-1]["test_ndcg@10"] == pytest.approx(
        Recommender.load(tmp_path / "m").evaluate(data)["ndcg"], abs=1e-6
    )
