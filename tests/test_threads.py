"""The training math's thread count: its default's numbers on ml-100k u1, `--threads`, and what `--resume` keeps."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error, need_ml100k, run_cli

from recsys import Recommender, threads, train
from recsys.errors import RecsysError
from recsys.topn.lists import usable_cores

USERS = [1, 2, 3]
# One epoch of each objective on ml-100k u1 (ranking: 20 batches), seed 0, the math on one thread, as recorded
# on the 2-core AMD EPYC box the README's timings come from. Two threads give other last digits (retrieval
# 6.481203208267302, ranking 0.6510110314389999).
GOLDEN = {
    "rating": {"test_cost": 4.668530464172363, "test_rmse": 1.0803390741348267},
    "retrieval": {"test_cost": 6.481203206844473, "test_ndcg@10": 0.4309943462136675},
    "ranking": {"test_cost": 0.6510114008551658, "test_ndcg@10": 0.43115377006116623},
}
TOP_10 = {
    "rating": [[651, 483, 1065, 593, 647, 1529, 157, 611, 515, 891], [483, 22, 651, 1065, 611, 205, 313, 647, 549, 157],
               [483, 22, 651, 611, 1065, 205, 647, 157, 891, 299]],
    "retrieval": [[100, 98, 174, 56, 318, 286, 258, 12, 202, 275], [50, 9, 15, 313, 124, 333, 268, 181, 7, 98],
                  [286, 300, 328, 313, 307, 100, 269, 315, 272, 327]],
    "ranking": [[100, 98, 174, 56, 12, 258, 318, 64, 286, 69], [50, 15, 9, 313, 124, 333, 268, 181, 7, 475],
                [300, 286, 328, 313, 100, 307, 50, 269, 315, 294]],
}  # fmt: skip


@pytest.fixture(scope="module")
def u1_runs(tmp_path_factory) -> tuple[dict, dict]:
    """One epoch of each objective on ml-100k u1 with the default thread count: (last metrics, top-10 lists of
    users 1-3) by objective."""
    out = tmp_path_factory.mktemp("golden")
    flags = {"dataset": "ml-100k", "split": "u1", "data_dir": need_ml100k(), "log": lambda _msg: None, "epochs": 1}
    metrics = {
        "rating": train.run(objective="rating", model_dir=out / "rating", **flags)[-1],
        "retrieval": train.run(objective="retrieval", model_dir=out / "retrieval", **flags)[-1],
        "ranking": train.run(objective="ranking", model_dir=out / "ranking", candidates_from=out / "retrieval",
                             max_batches=20, **flags)[-1],
    }  # fmt: skip
    recommenders = {
        "rating": Recommender.load(out / "rating"),
        "retrieval": Recommender.load(out / "retrieval"),
        "ranking": Recommender.load(out / "retrieval", rerank=out / "ranking"),
    }
    return metrics, {name: rec.recommend_many(USERS, k=10, exclude_rated="train") for name, rec in recommenders.items()}


@pytest.mark.parametrize("objective", ["rating", "retrieval", "ranking"])
def test_default_threads_keep_the_recorded_numbers_on_ml100k(u1_runs, objective):
    metrics, lists = u1_runs
    assert {k: metrics[objective][k] for k in GOLDEN[objective]} == GOLDEN[objective]
    assert lists[objective] == TOP_10[objective]


@pytest.mark.parametrize("value", ["0", "-1", "abc", "cores+1"])
def test_bad_thread_counts_are_one_line_errors(value, capsys):
    value = str(usable_cores() + 1) if value == "cores+1" else value
    with pytest.raises(SystemExit) as stop:
        train.parse_args(["--threads", value])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "--threads" in err, err


def test_a_bad_thread_count_from_the_command_line(tmp_path):
    proc = run_cli("recsys.train", "--model-dir", str(tmp_path / "m"), "--threads", "0")
    assert_one_line_error(proc, "--threads must be 1..")
    assert not (tmp_path / "m").exists()


def _checkpoint(model) -> dict:
    return json.loads((model / "checkpoint.json").read_text())


def test_the_thread_count_is_recorded_and_resume_keeps_it(small_dir, tmp_path):
    """A run on two threads records them; `--resume` without `--threads` computes on two again and ends where
    the uninterrupted two-thread run ends; `--resume --threads 1` is refused in one line."""
    if usable_cores() < 2:
        pytest.skip("needs two cores")
    flags = {"data_dir": small_dir, "log": lambda _msg: None, "optimizer": "adam", "lr": 0.003, "threads": 2}
    full = train.run(model_dir=tmp_path / "full", epochs=2, **flags)
    cut = tmp_path / "cut"
    train.run(model_dir=cut, epochs=1, **flags)
    assert _checkpoint(cut)["threads"] == 2
    threads.use(1)  # as a new process starts: the default count
    resumed = train.run(model_dir=cut, epochs=2, resume=True, data_dir=small_dir, log=lambda _msg: None)
    assert threads.chosen() == 2 and _checkpoint(cut)["threads"] == 2
    assert [m["test_cost"] for m in resumed] == [m["test_cost"] for m in full]
    with pytest.raises(RecsysError, match=r"trained with --threads 2 \(not 1: the rounding depends on it\)"):
        train.run(model_dir=cut, epochs=3, resume=True, threads=1, data_dir=small_dir, log=lambda _msg: None)
    proc = run_cli("recsys.train", "--model-dir", str(cut), "--resume", "--epochs", "3", "--threads", "1")
    assert_one_line_error(proc, "--threads 2 (not 1")
    assert _checkpoint(cut)["epoch"] == 2


def test_the_default_is_one_thread(small_dir, tmp_path):
    train.run(model_dir=tmp_path / "m", epochs=1, data_dir=small_dir, log=lambda _msg: None)
    assert threads.chosen() == 1 and _checkpoint(tmp_path / "m")["threads"] == 1
