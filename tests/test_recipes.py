"""Recipe options (off by default), checkpoints that survive a kill, and --resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from recsys import movielens, train
from recsys.modeldir import ModelDir
from recsys.rating.metrics import scores
from recsys.train import split_indices


def _run(small_dir, model, *flags):
    args = train.parse_args(["--data-dir", str(small_dir), "--model-dir", str(model), *flags])
    return train.train(args, movielens.load(data_dir=small_dir), log=lambda _: None)[1]


def test_validation_slice_is_carved_from_the_training_split(small_dir):
    data = movielens.load(data_dir=small_dir)
    tr, val, te = split_indices(data, 0.1, seed=0)
    assert not set(val) & set(te) and not set(val) & set(tr)
    assert sorted(np.concatenate([tr, val])) == np.flatnonzero(~data.is_test).tolist()
    assert abs(len(val) - 0.1 * (~data.is_test).sum()) <= 1


def test_saved_model_is_the_best_validation_epoch(small_dir, tmp_path):
    model = tmp_path / "m"
    metrics = _run(small_dir, model, "--optimizer", "adam", "--lr", "0.003", "--epochs", "4", "--val-ratio", "0.1")
    assert all("val_cost" in m for m in metrics)
    best = min(metrics, key=lambda m: m["val_cost"])
    data = movielens.load(data_dir=small_dir)
    _, val, _ = split_indices(data, 0.1, seed=0)
    md = ModelDir.load(model)
    got = md.predictor(md.tables.features(data.user[val], data.movie[val]))[:, 0]
    assert scores(got, data.label[val, 0])["cost"] == pytest.approx(best["val_cost"], rel=1e-4)


def test_patience_stops_when_validation_stops_improving(small_dir, tmp_path):
    metrics = _run(small_dir, tmp_path / "m", "--lr", "0.6", "--epochs", "8", "--val-ratio", "0.1", "--patience", "1")
    costs = [m["val_cost"] for m in metrics]
    if len(metrics) < 8:  # stopped: the last epoch did not beat the best before it
        assert costs[-1] >= min(costs[:-1])
    else:  # ran to the end: then every epoch but possibly the last improved
        assert all(b < a for a, b in zip(costs[:-2], costs[1:-1]))


def test_cosine_schedule_and_l2_penalty(small_dir, tmp_path):
    _run(small_dir, tmp_path / "cos", "--epochs", "3", "--lr-schedule", "cosine", "--weight-decay", "0.001")
    state = json.loads((tmp_path / "cos" / "checkpoint.json").read_text())
    assert state["lr"] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 2 / 3)), rel=1e-6)
    plain = _run(small_dir, tmp_path / "plain", "--epochs", "1")
    decayed = json.loads((tmp_path / "cos" / "metrics.json").read_text())
    assert decayed[0]["train_cost"] != plain[0]["train_cost"]


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--optimizer", "adam", "--weight-decay", "0.1"], "add --no-sparse"),
        (["--patience", "2"], "--patience needs a validation slice"),
        (["--val-ratio", "1.5"], "--val-ratio must be in [0, 1), got 1.5"),
    ],
)
def test_bad_recipe_flags(small_dir, tmp_path, flags, needle):
    proc = run_cli("recsys.train", "--data-dir", str(small_dir), "--model-dir", str(tmp_path / "m"), *flags)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr


def test_resume_after_a_short_run_reaches_the_uninterrupted_costs(small_dir, tmp_path):
    full = _run(small_dir, tmp_path / "full", "--epochs", "3", "--optimizer", "adam", "--lr", "0.003")
    cut = tmp_path / "cut"
    _run(small_dir, cut, "--epochs", "3", "--optimizer", "adam", "--lr", "0.003", "--max-batches", "200")
    assert json.loads((cut / "checkpoint.json").read_text())["epoch"] == 1  # 200 batches end inside epoch 2
    resumed = _run(small_dir, cut, "--epochs", "3", "--optimizer", "adam", "--lr", "0.003", "--resume")
    assert [m["test_cost"] for m in resumed] == [m["test_cost"] for m in full]
    assert [m["train_cost"] for m in resumed] == [m["train_cost"] for m in full]


def test_short_runs_save_at_their_end_and_save_every_epoch_saves_each(small_dir, tmp_path):
    """Each epoch that saved carries its save time: a run of seconds saves only at its end; --save-every-epoch
    saves after each epoch."""
    quick = _run(small_dir, tmp_path / "quick", "--epochs", "3")
    assert [("save_seconds" in m) for m in quick] == [False, False, True]
    every = _run(small_dir, tmp_path / "every", "--epochs", "3", "--save-every-epoch")
    assert [("save_seconds" in m) for m in every] == [True, True, True]


def test_resume_refuses_other_settings_and_missing_checkpoints(small_dir, tmp_path, trained):
    base = ["--data-dir", str(small_dir), "--model-dir", str(trained)]
    assert_one_line_error(run_cli("recsys.train", *base, "--epochs", "2", "--lr", "0.1", "--resume"), "--lr 0.2")
    proc = run_cli("recsys.train", *base, "--epochs", "2", "--eval-every", "50", "--resume")
    assert proc.returncode == 0 and "training already finished at epoch 2" in proc.stderr + proc.stdout
    empty = ["--data-dir", str(small_dir), "--model-dir", str(tmp_path / "none"), "--resume"]
    assert_one_line_error(run_cli("recsys.train", *empty), "nothing to resume", "start again without --resume")


def _digests(folder):
    import hashlib

    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_sigkill_mid_epoch_then_resume(small_dir, tmp_path):
    """Kill training while it runs its second epoch: the model dir stays whole, the data untouched, and
    --resume ends where an uninterrupted run ends."""
    model = tmp_path / "model"
    archive_before = _digests(small_dir)
    flags = ["--data-dir", str(small_dir), "--model-dir", str(model), "--epochs", "3", "--batch-size", "64",
             "--save-every-epoch"]  # fmt: skip
    cmd = [sys.executable, "-m", "recsys.train", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while not (model / "checkpoint.json").exists():  # the first epoch's model dir is complete
            assert time.time() < deadline and proc.poll() is None, proc.stdout.read()
            time.sleep(0.05)
        time.sleep(0.1)  # inside epoch 2 (its training here takes a few tenths of a second)
        assert proc.poll() is None, "training finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    md = ModelDir.load(model)  # loads: never half-written
    assert json.loads((model / "checkpoint.json").read_text())["epoch"] == 1
    # no temp dir left beside it: only the lock and the dir the last save replaced
    assert {p.name for p in tmp_path.iterdir()} - {".model.lock", ".model.previous"} == {"model"}
    assert _digests(small_dir) == archive_before
    assert md.predictor(md.tables.features(np.array([1]), np.array([1]))).shape == (1, 1)
    resumed = run_cli("recsys.train", *flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    full = _run(small_dir, tmp_path / "full", "--epochs", "3", "--batch-size", "64")
    got = json.loads((model / "metrics.json").read_text())
    assert [m["test_cost"] for m in got] == pytest.approx([m["test_cost"] for m in full], abs=0)


def test_resume_is_bit_exact_beside_a_process_that_keeps_every_core_busy(small_dir, tmp_path):
    """A run cut short and resumed while other processes spin on every core (each stops by itself within two
    minutes) ends with the costs of an uninterrupted run on a quiet machine. The child processes inherit the
    OMP_NUM_THREADS=1 that importing Paddle sets here, so this also holds the thread count to the checkpoint."""
    flags = ["--epochs", "2", "--batch-size", "64", "--optimizer", "adam", "--lr", "0.003"]
    full = _run(small_dir, tmp_path / "full", *flags)
    spin = "import time\nend = time.time() + 120\nwhile time.time() < end: pass"
    burners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(max(2, len(os.sched_getaffinity(0))))]
    try:
        base = ["--data-dir", str(small_dir), "--model-dir", str(tmp_path / "cut"), *flags]
        cut = run_cli("recsys.train", *base, "--max-batches", "700")
        assert cut.returncode == 0, cut.stderr
        assert json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["epoch"] == 1
        resumed = run_cli("recsys.train", *base, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert all(b.poll() is None for b in burners), "the neighbours stopped before the runs ended"
    finally:
        for b in burners:
            b.kill()
            b.wait()
    got = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert [m["test_cost"] for m in got] == [m["test_cost"] for m in full]
    assert [m["train_cost"] for m in got] == [m["train_cost"] for m in full]
