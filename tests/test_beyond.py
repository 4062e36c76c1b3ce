"""Beyond the chapter: similar movies, cold-start users, and data-parallel training on paddle.distributed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from conftest import assert_one_line_error, run_cli

from recsys import movielens
from recsys.model import RecommenderNet
from recsys.modeldir import ModelDir
from recsys.movielens import FEED_NAMES, age_table
from recsys.topn import stages


@pytest.fixture(scope="module")
def cold_model(small_dir, tmp_path_factory) -> Path:
    model = tmp_path_factory.mktemp("cold") / "model"
    flags = ["--data-dir", str(small_dir), "--model-dir", str(model), "--epochs", "2", "--cold-start-rate", "0.1"]
    proc = run_cli("recsys.train", *flags)
    assert proc.returncode == 0, proc.stderr
    return model


def _net(md: ModelDir) -> RecommenderNet:
    net = RecommenderNet(**md.meta["sizes"])
    net.set_state_dict({k: paddle.to_tensor(v) for k, v in md.params().items()})
    return net


def test_similar_movies_are_the_nearest_movie_vectors(cold_model):
    md = ModelDir.load(cold_model)
    net = _net(md)
    with paddle.no_grad():
        f = md.tables.movie_features(md.movie_ids)
        v = net.movie_tower(*(paddle.to_tensor(f[n]) for n in FEED_NAMES[4:])).numpy()
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    target = int(md.movie_ids[5])
    cos = v @ v[5]
    order = [int(m) for m in md.movie_ids[np.argsort(-cos)] if m != target][:10]
    got = stages.similar(md, target, 10)
    assert [m for m, _ in got] == order
    np.testing.assert_allclose([c for _, c in got], np.sort(cos)[::-1][1:11], atol=1e-5)
    doc = json.loads(
        run_cli("recsys.infer", "--model-dir", str(cold_model), "--similar-to", str(target), "--json").stdout
    )
    assert doc["movie_id"] == target and len(doc["similar"]) == 10
    assert set(doc["similar"][0]) == {"movie_id", "title", "genres", "cosine"}
    text = run_cli("recsys.infer", "--model-dir", str(cold_model), "--similar-to", str(target), "--top-k", "3").stdout
    assert text.splitlines()[0].startswith(f'3 movies nearest to "{md.title(target)}"') and len(text.splitlines()) == 4


def test_cold_start_user_is_user_zero_with_its_features(cold_model):
    md = ModelDir.load(cold_model)
    args = ["--model-dir", str(cold_model), "--gender", "F", "--age", "25", "--job", "4"]
    doc = json.loads(run_cli("recsys.infer", *args, "--top-k", "5", "--json").stdout)
    assert doc["user"] == {"gender": "F", "age": 25, "age_group": "25–34", "job": 4}
    assert len(doc["recommendations"]) == 5
    movies = [r["movie_id"] for r in doc["recommendations"]]
    # the same ranking from the saved inference model, scoring user 0 with those features on every movie
    full = stages.predict(md, 0, md.movie_ids, cold=(1, age_table.index(25), 4))
    assert movies == md.movie_ids[np.argsort(-full, kind="stable")][:5].tolist()
    np.testing.assert_allclose([r["score"] for r in doc["recommendations"]], np.sort(full)[::-1][:5], atol=1e-4)
    one = json.loads(run_cli("recsys.infer", *args, "--movie", str(movies[0]), "--json").stdout)
    assert one["score"] == pytest.approx(doc["recommendations"][0]["score"], abs=1e-4) and "actual_rating" not in one


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--similar-to", "99999"], "unknown movie id 99999"),
        (["--gender", "F", "--age", "0", "--job", "4", "--top-k", "3"], "--age must be a number of years, 1..120"),
        (["--gender", "F", "--age", "25", "--job", "99", "--top-k", "3"], "job must be 0..20 for ml-1m, got 99"),
        (["--gender", "X", "--age", "25", "--job", "1", "--top-k", "3"], "invalid choice: 'X'"),
        (["--gender", "F", "--top-k", "3"], "a new user needs all of --gender, --age and --job"),
        (["--similar-to", "1", "--user", "1"], "--similar-to takes only --top-k"),
    ],
)
def test_beyond_bad_inputs(cold_model, args, needle):
    assert_one_line_error(run_cli("recsys.infer", "--model-dir", str(cold_model), *args), needle)


def _launch(script: list[str], log_dir: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(log_dir)]
    return subprocess.run(cmd + script, capture_output=True, text=True, timeout=600, env={**os.environ})


def _train_on_two_ranks_alike(flags: list[str], tmp_path: Path) -> None:
    """Train under the launcher on 2 gloo ranks into tmp_path/dp (logs in tmp_path/log); both ranks must end
    with identical parameters."""
    worker = str(Path(__file__).with_name("dp_worker.py"))
    proc = _launch([worker, str(tmp_path), *flags, "--model-dir", str(tmp_path / "dp")], tmp_path / "log")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [np.load(tmp_path / f"params_rank{r}.npz") for r in (0, 1)]
    for name in ranks[0].files:
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)


def test_two_cpu_ranks_train_like_one_process(small_dir, tmp_path):
    flags = ["--data-dir", str(small_dir), "--epochs", "1"]
    _train_on_two_ranks_alike(flags, tmp_path)
    dp = json.loads((tmp_path / "dp" / "metrics.json").read_text())
    single = tmp_path / "single"
    assert run_cli("recsys.train", *flags, "--model-dir", str(single)).returncode == 0
    one = json.loads((single / "metrics.json").read_text())
    assert dp[-1]["step"] == one[-1]["step"]  # same global batch: the same number of updates
    assert abs(dp[-1]["test_cost"] - one[-1]["test_cost"]) <= 0.05 * one[-1]["test_cost"]
    # only rank 0 logs and writes the model dir
    assert "EpochID 1," in (tmp_path / "log" / "workerlog.0").read_text()
    assert "EpochID" not in (tmp_path / "log" / "workerlog.1").read_text()


def test_two_cpu_ranks_train_the_retrieval_objective_in_step(small_dir, tmp_path):
    flags = ["--data-dir", str(small_dir), "--epochs", "1", "--objective", "retrieval", "--max-batches", "8"]
    _train_on_two_ranks_alike(flags, tmp_path)
    md = ModelDir.load(tmp_path / "dp")
    assert md.objective == "retrieval" and json.loads((tmp_path / "dp" / "metrics.json").read_text())[-1]["step"] == 8
    assert "NDCG@10" in (tmp_path / "log" / "workerlog.0").read_text()


def test_the_cli_runs_under_the_launcher(small_dir, tmp_path):
    script = Path(sys.executable).with_name("recsys-train")
    if not script.exists():
        pytest.skip("the recsys-train console script is not installed beside this Python")
    flags = ["--data-dir", str(small_dir), "--model-dir", str(tmp_path / "m"), "--epochs", "1", "--batch-size", "250"]
    proc = _launch([str(script), *flags, "--batch-size", "255"], tmp_path / "bad")
    assert (
        proc.returncode != 0 and "must be a multiple of the 2 ranks" in (tmp_path / "bad" / "workerlog.0").read_text()
    )
    proc = _launch([str(script), *flags], tmp_path / "log")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert ModelDir.load(tmp_path / "m").meta["settings"]["batch_size"] == 250
    assert movielens.FEED_NAMES == tuple(ModelDir.load(tmp_path / "m").meta["feed_names"])
