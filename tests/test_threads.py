"""The training math's thread counts: the defaults' numbers on ml-100k u1, `--threads`, the phases with large
products (`recsys.threads.phase`), and what `--resume` keeps."""

from __future__ import annotations

import json

import pytest
import threadpoolctl
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


@pytest.fixture(scope="module", params=["measured", "all cores"])
def u1_runs(request, tmp_path_factory) -> tuple[dict, dict]:
    """One epoch of each objective on ml-100k u1 with the default thread counts: (last metrics, top-10 lists of
    users 1-3) by objective. The large products' count is what this machine's measurement picks, or all cores
    (what a quiet machine picks): the numbers must not depend on it."""
    if request.param == "all cores" and usable_cores() < 2:
        pytest.skip("needs two cores")
    threads.set_wide(None if request.param == "measured" else usable_cores())
    request.addfinalizer(lambda: threads.set_wide(None))
    out = tmp_path_factory.mktemp("golden")
    flags = {"dataset": "ml-100k", "split": "u1", "data_dir": need_ml100k(), "log": lambda _msg: None, "epochs": 1}
    metrics = {
        "rating": train.run(objective="rating", model_dir=out / "rating", **flags)[-1],
        "retrieval": train.run(objective="retrieval", model_dir=out / "retrieval", **flags)[-1],
        "ranking": train.run(objective="ranking", model_dir=out / "ranking", candidates_from=out / "retrieval",
                             max_batches=20, pair_features="basic", **flags)[-1],
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


def test_a_phase_runs_on_its_count_and_restores_the_one_before():
    """`phase(n)` sets BLAS to n and gives back the count before; a phase without a count inside another keeps
    the outer one; outside any, it takes `wide()`."""
    if usable_cores() < 2:
        pytest.skip("needs two cores")

    def blas() -> set[int]:
        return {lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"}

    threads.use(1)
    threads.set_wide(2)
    try:
        with threads.phase() as outer:
            assert outer == threads.chosen() == 2 and blas() == {2}
            with threads.phase(1):
                assert threads.chosen() == 1 and blas() == {1}
            with threads.phase() as inner:
                assert inner == threads.chosen() == 2
        assert threads.chosen() == 1 and blas() == {1}
    finally:
        threads.set_wide(None)
    assert threads.measure() in (1, usable_cores())


def _spy_evaluate(monkeypatch, task) -> list[int]:
    """The thread count each evaluation of `task` (a task class) computed on."""
    seen = []
    original = task.evaluate

    def evaluate(self, *args, **kwargs):
        seen.append(threads.chosen())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(task, "evaluate", evaluate)
    return seen


def test_the_phase_count_is_recorded_and_resume_keeps_it(small_dir, tmp_path, monkeypatch):
    """A default run records one thread for its steps and the measured count for its evaluation; resumed in a
    process that measures another, it evaluates on the recorded count and ends where the uninterrupted run
    ends; the CLI's `--resume` keeps it too."""
    if usable_cores() < 2:
        pytest.skip("needs two cores")
    from recsys.training.rating import RatingTask

    seen = _spy_evaluate(monkeypatch, RatingTask)
    flags = {"data_dir": small_dir, "log": lambda _msg: None, "optimizer": "adam", "lr": 0.003}
    try:
        threads.set_wide(2)
        full = train.run(model_dir=tmp_path / "full", epochs=2, **flags)
        cut = tmp_path / "cut"
        train.run(model_dir=cut, epochs=1, **flags)
        assert {k: _checkpoint(cut)[k] for k in ("threads", "phase_threads")} == {"threads": 1, "phase_threads": 2}
        assert seen == [2, 2, 2] and threads.chosen() == 1
        threads.set_wide(1)  # as a process whose measurement picks one thread
        resumed = train.run(model_dir=cut, epochs=2, resume=True, data_dir=small_dir, log=lambda _msg: None)
    finally:
        threads.set_wide(None)
    assert seen[3:] == [2] and _checkpoint(cut)["phase_threads"] == 2
    assert [m["test_cost"] for m in resumed] == [m["test_cost"] for m in full]
    proc = run_cli("recsys.train", "--model-dir", str(cut), "--resume", "--epochs", "3")
    assert proc.returncode == 0, proc.stderr
    assert {k: _checkpoint(cut)[k] for k in ("epoch", "threads", "phase_threads")} == {
        "epoch": 3,
        "threads": 1,
        "phase_threads": 2,
    }


def test_threads_given_are_every_phase_count(small_dir, tmp_path):
    if usable_cores() < 2:
        pytest.skip("needs two cores")
    threads.set_wide(1)  # what was measured does not count where --threads is given
    try:
        train.run(model_dir=tmp_path / "m", epochs=1, threads=2, data_dir=small_dir, log=lambda _msg: None)
    finally:
        threads.set_wide(None)
    recorded = _checkpoint(tmp_path / "m")
    assert (recorded["threads"], recorded["phase_threads"]) == (2, 2)


def test_lists_of_many_users_after_training_run_on_the_large_products_count(small_dir, tmp_path, monkeypatch):
    """Training leaves the process on one thread; a library caller's `recommend_many` computes on `wide()` and
    gives the count back."""
    if usable_cores() < 2:
        pytest.skip("needs two cores")
    train.run(model_dir=tmp_path / "m", objective="retrieval", epochs=1, data_dir=small_dir, log=lambda _msg: None)
    assert threads.chosen() == 1
    seen = []
    ranker = Recommender.ranker

    def spy(self, pools=None):
        rank = ranker(self, pools)

        def counted(*args, **kwargs):
            blas = {lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"}
            seen.append((threads.chosen(), blas))
            return rank(*args, **kwargs)

        return counted

    monkeypatch.setattr(Recommender, "ranker", spy)
    rec = Recommender.load(tmp_path / "m")
    threads.set_wide(2)
    try:
        lists = rec.recommend_many([1, 2, 3], k=5, chunk=2)
    finally:
        threads.set_wide(None)
    assert seen == [(2, {2}), (2, {2})] and len(lists) == 3 and all(len(x) == 5 for x in lists)
    assert threads.chosen() == 1
