"""Train -> save -> load -> infer, through the public API and the CLIs, including every bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest
from conftest import assert_one_line_error, run_cli

from recsys import movielens, train
from recsys.model import RecommenderNet
from recsys.modeldir import ModelDir
from recsys.topn import registry, stages


def _net_from(md: ModelDir) -> RecommenderNet:
    net = RecommenderNet(**md.meta["sizes"])
    with np.load(md.path / "params.npz") as z:
        net.set_state_dict({k: paddle.to_tensor(z[k]) for k in z.files})
    return net


def test_training_lowers_test_cost_below_first_eval_and_global_mean(trained, small_dir):
    metrics = json.loads((trained / "metrics.json").read_text())
    data = movielens.load(data_dir=small_dir)
    mean = data.label[~data.is_test].mean()
    global_mean_cost = float(np.mean((data.label[data.is_test] - mean) ** 2))
    assert len(metrics) >= 3
    assert metrics[-1]["test_cost"] < metrics[0]["test_cost"]
    assert metrics[-1]["test_cost"] < global_mean_cost
    for m in metrics:
        assert set(m) >= {
            "epoch",
            "batch",
            "train_cost",
            "test_cost",
            "test_rmse",
            "test_mae",
            "samples_per_s",
            "seconds",
            "step_seconds",
            "eval_seconds",
        }
        assert m["test_rmse"] == pytest.approx(np.sqrt(m["test_cost"]) / 2, rel=0.05)  # stars = (score + 5) / 2
    spent = [m["step_seconds"] + m["eval_seconds"] + m.get("save_seconds", 0.0) for m in metrics]
    assert 0 < sum(spent) <= metrics[-1]["seconds"] and all(s > 0 for s in spent)
    # a run of seconds saves once, at its end (an epoch's save time is on disk with the next save: none here)
    assert not any("save_seconds" in m for m in metrics)
    assert (trained / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_gives_identical_costs(small_dir, tmp_path):
    data = movielens.load(data_dir=small_dir)
    runs = []
    for name in ("a", "b"):
        args = train.parse_args(["--model-dir", str(tmp_path / name), "--max-batches", "30", "--eval-every", "10"])
        runs.append([(m["train_cost"], m["test_cost"]) for m in train.train(args, data, log=lambda _: None)[1]])
    assert runs[0] == runs[1] and len(runs[0]) == 3


def test_model_dir_round_trip_and_predictor_equals_dygraph(trained, small_dir):
    md = ModelDir.load(trained)
    data = movielens.load(data_dir=small_dir)
    assert md.meta["title_words"] == data.meta.title_words
    assert md.meta["categories"] == data.meta.categories
    assert md.meta["feed_names"] == list(movielens.FEED_NAMES)
    np.testing.assert_array_equal(md.tables.title, data.tables.title)
    rng = np.random.RandomState(0)
    idx = rng.choice(len(data.user), 512, replace=False)
    feeds = md.tables.features(data.user[idx], data.movie[idx])
    with paddle.no_grad():
        want = _net_from(md)(*[paddle.to_tensor(feeds[k]) for k in movielens.FEED_NAMES]).numpy()
    np.testing.assert_allclose(md.predictor(feeds), want, atol=1e-5)


def test_top_k_equals_scoring_every_pair_with_the_full_network(trained):
    md = ModelDir.load(trained)
    user = 7
    rated, _, is_test = md.ratings_of(user)
    movies = np.array(sorted(int(m) for m in md.meta["movies"] if int(m) not in set(rated[~is_test])))
    full = stages.predict(md, user, movies)
    want = movies[np.argsort(-full, kind="stable")][:10]
    got = registry.first_stage(md).scored(user, 10)  # the rating model's stage: (movie, 5 cos, cos)
    assert [m for m, _, _ in got] == want.tolist()
    np.testing.assert_allclose([s for _, s, _ in got], np.sort(full)[::-1][:10], atol=1e-4)
    np.testing.assert_allclose([5 * c for _, _, c in got], [s for _, s, _ in got], atol=1e-5)
    assert not set(rated[~is_test]) & {m for m, _, _ in got}


def test_infer_cli_top_k_and_json(trained):
    proc = run_cli("recsys.infer", "--model-dir", str(trained), "--user", "3", "--top-k", "5")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Top 5 movies for user id 3") and len(lines) == 6
    flags = ["--user", "3", "--top-k", "5", "--exclude-rated", "train", "--json"]  # as the top-N protocol ranks
    doc = json.loads(run_cli("recsys.infer", "--model-dir", str(trained), *flags).stdout)
    assert doc["user_id"] == 3 and len(doc["recommendations"]) == 5
    for r in doc["recommendations"]:
        assert set(r) == {"movie_id", "title", "genres", "score", "stars"}
        assert r["genres"] == ModelDir.load(trained).genres(r["movie_id"])  # as the text output shows them
        assert r["stars"] == pytest.approx((r["score"] + 5) / 2)
    best = stages.top_k(ModelDir.load(trained), 3, 5)
    assert [r["movie_id"] for r in doc["recommendations"]] == [m for m, _, _ in best]


def test_chapter_flow_on_real_metadata(real_meta_dir, tmp_path):
    """The chapter's demo: train 21 batches, save, load the inference model, predict user 1 on movie 783."""
    model = tmp_path / "recommender_system.inference.model"
    proc = run_cli("recsys.train", "--data-dir", str(real_meta_dir), "--model-dir", str(model), "--max-batches", "21")
    assert proc.returncode == 0, proc.stderr
    assert "EpochID 1, BatchID 21, Test Loss" in proc.stdout + proc.stderr
    proc = run_cli("recsys.infer", "--model-dir", str(model), "--user", "1", "--movie", "783")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0].startswith('Predict Rating of user id 1 on movie "Hunchback of Notre Dame, The" is ')
    assert "label space 2*stars-5" in out[1]
    assert out[2] == 'Actual Rating of user id 1 on movie "Hunchback of Notre Dame, The" is 4.'
    proc = run_cli("recsys.infer", "--model-dir", str(model), "--user", "1", "--movie", "783", "--json")
    doc = json.loads(proc.stdout)
    assert doc["actual_rating"] == 4 and doc["title"] == "Hunchback of Notre Dame, The"
    assert doc["score"] == pytest.approx(float(out[0].rsplit(" ", 1)[1]), abs=1e-4)
    assert doc["stars"] == pytest.approx((doc["score"] + 5) / 2)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--user", "99999", "--movie", "1"], "unknown user id 99999"),
        (["--user", "1", "--movie", "99999"], "unknown movie id 99999"),
        (["--user", "0", "--top-k", "3"], "unknown user id 0"),
        (["--user", "1", "--top-k", "0"], "--top-k must be at least 1"),
        (["--user", "1", "--top-k", "x"], "invalid int value"),
        (["--user", "1"], "and either --movie or --top-k"),
    ],
)
def test_infer_bad_inputs(trained, args, needle):
    assert_one_line_error(run_cli("recsys.infer", "--model-dir", str(trained), *args), needle)


def test_infer_without_a_model_dir(tmp_path):
    proc = run_cli("recsys.infer", "--model-dir", str(tmp_path / "nothing"), "--user", "1", "--movie", "1")
    assert_one_line_error(proc, "train first: python -m recsys.train")


def test_use_cuda_without_cuda(small_dir, tmp_path):
    if paddle.is_compiled_with_cuda():
        pytest.skip("this Paddle has CUDA")
    proc = run_cli("recsys.train", "--use-cuda", "--data-dir", str(small_dir), "--model-dir", str(tmp_path / "m"))
    assert_one_line_error(proc, "this Paddle build has no CUDA; install paddlepaddle-gpu")


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_nan_stops_training_and_keeps_the_last_good_model(trained, small_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    before = _digest(model)
    proc = run_cli(
        "recsys.train",
        "--data-dir",
        str(small_dir),
        "--model-dir",
        str(model),
        "--lr",
        "1e30",
        "--max-batches",
        "20",
        "--eval-every",
        "10",
    )
    assert_one_line_error(proc, "NaN", "keeps the last good model")
    assert _digest(model) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp dir, and the lock went with the trainer


@pytest.mark.parametrize(
    "flag", [["--epochs", "0"], ["--batch-size", "0"], ["--lr", "-1"], ["--split", "u1"], ["--dataset", "x"]]
)
def test_train_bad_flags(small_dir, tmp_path, flag):
    proc = run_cli("recsys.train", "--data-dir", str(small_dir), "--model-dir", str(tmp_path / "m"), *flag)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "m").exists()


def test_the_rating_cost_read_a_chunk_of_ratings_at_a_time_is_the_whole_splits(small_dir, monkeypatch):
    """The rating objective's test cost gathers the tower vectors of `EVAL_CHUNK` ratings at a time (bounded
    memory at ml-32m size): with chunks of 7 ratings it equals, bit for bit, one chunk of the whole split, and the
    cost is the mean square error of 5 cos(user, movie) from the vectors, computed here in NumPy."""
    from recsys.training import rating as rating_module

    data = movielens.load(data_dir=small_dir)
    t = rating_module.RatingTask(data)
    order = np.random.RandomState(0).permutation(np.flatnonzero(~data.is_test))
    for s in range(0, 20 * 256, 256):
        t.step(order[s : s + 256])
    test = np.flatnonzero(data.is_test)
    whole = t.evaluate(test)
    monkeypatch.setattr(rating_module, "EVAL_CHUNK", 7)
    assert t.evaluate(test) == whole and len(test) > 7 * 100
    users, movies = t.vectors()
    pred = 5.0 * (users[data.user[test]] * movies[t.column[data.movie[test]]]).sum(axis=1)
    assert whole["cost"] == pytest.approx(np.mean((pred - t.label[test, 0]) ** 2), rel=1e-5)
