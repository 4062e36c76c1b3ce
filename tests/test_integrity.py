"""A model dir that never lies: damaged files, one trainer at a time, readers during saves, failed saves."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from recsys import evaluate, infer, movielens, train
from recsys.modeldir import ModelDir
from recsys.modeldir import save as modelsave
from recsys.topn import registry, stages

COMMANDS = {
    "predict": ("infer", ["--user", "1", "--movie", "5"]),
    "top-k": ("infer", ["--user", "1", "--top-k", "5"]),
    "similar": ("infer", ["--similar-to", "5", "--top-k", "5"]),
    "new user": ("infer", ["--gender", "F", "--age", "25", "--job", "4", "--top-k", "5"]),
    "evaluate": ("evaluate", []),
    "resume": ("train", ["--resume", "--epochs", "1"]),
}
DAMAGES = ("delete", "truncate to zero", "truncate to half", "flip a middle byte")


def _run(kind: str, model: Path, flags: list[str], data_dir: Path) -> tuple[int, str, str]:
    """A CLI's main in this process: (exit code, stdout, stderr); any exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    main = {"infer": infer.main, "evaluate": evaluate.main, "train": train.main}[kind]
    argv = ["--model-dir", str(model), *flags] + (["--data-dir", str(data_dir)] if kind != "infer" else [])
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "delete":
        path.unlink()
    elif how == "truncate to zero":
        path.write_bytes(b"")
    elif how == "truncate to half":
        path.write_bytes(data[: len(data) // 2])
    else:
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])


def test_every_damaged_file_is_an_error_or_changes_nothing(one_epoch, small_dir, tmp_path):
    names = sorted(p.name for p in one_epoch.iterdir())
    assert {"manifest.json", "meta.json", "arrays.npz", "inference.pdiparams", "checkpoint.npz"} <= set(names)
    work = tmp_path / "model"
    shutil.copytree(one_epoch, work)
    intact = {c: _run(kind, work, flags, small_dir) for c, (kind, flags) in COMMANDS.items()}
    assert all(code == 0 for code, _, _ in intact.values()), intact
    cases = errors = 0
    for name in names:
        for how in DAMAGES:
            shutil.rmtree(work)
            shutil.copytree(one_epoch, work)
            _damage(work / name, how)
            for command, (kind, flags) in COMMANDS.items():
                code, out, err = _run(kind, work, flags, small_dir)
                cases += 1
                where = f"{name}, {how}, {command}"
                if code == 0:  # the damaged file was not needed: the very same answer
                    assert out == intact[command][1], where
                else:
                    errors += 1
                    assert code == 2 and (out == "" or kind == "train"), (where, code, out, err)  # train: its data line
                    lines = [ln for ln in err.splitlines() if not ln.startswith("notice:")]
                    assert len(lines) == 1 and lines[0].startswith("error: "), (where, err)
                    assert "nan" not in lines[0].lower().split(), (where, err)
    assert cases == len(names) * len(DAMAGES) * len(COMMANDS) and errors > cases // 2
    print(f"{cases} fault cases, {errors} refused")


@pytest.mark.parametrize(
    "name, how, needle",
    [
        ("arrays.npz", "truncate to half", "arrays.npz (size"),
        ("inference.pdiparams", "delete", "inference.pdiparams (missing)"),
        ("inference.pdiparams", "truncate to half", "inference.pdiparams (size"),
        ("meta.json", "flip a middle byte", "meta.json (checksum mismatch)"),
    ],
)
def test_the_reported_damages_through_the_cli(one_epoch, tmp_path, name, how, needle):
    work = tmp_path / "model"
    shutil.copytree(one_epoch, work)
    _damage(work / name, how)
    proc = run_cli("recsys.infer", "--model-dir", str(work), "--user", "1", "--movie", "5")
    assert_one_line_error(proc, f"model dir {work} is damaged: {needle}", "train again")


def test_a_model_dir_from_before_the_manifest_loads_with_a_notice(one_epoch, tmp_path):
    work = tmp_path / "old"
    shutil.copytree(one_epoch, work)
    meta = json.loads((work / "meta.json").read_text())
    del meta["manifest"]
    (work / "meta.json").write_text(json.dumps(meta))
    (work / "manifest.json").unlink()
    proc = run_cli("recsys.infer", "--model-dir", str(work), "--user", "1", "--top-k", "3")
    assert proc.returncode == 0 and proc.stderr.startswith(f"notice: model dir {work} has no manifest"), proc.stderr
    assert len(proc.stdout.splitlines()) == 4


def test_non_finite_vectors_are_an_error_not_a_ranking(one_epoch, tmp_path):
    work = tmp_path / "nan"
    shutil.copytree(one_epoch, work)
    with np.load(work / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["user_vectors"][1] = np.nan
    np.savez(work / "arrays.npz", **arrays)
    (work / "manifest.json").unlink()
    modelsave.write_manifest(work)  # a consistent dir that holds NaN: the check is on the numbers themselves
    proc = run_cli("recsys.infer", "--model-dir", str(work), "--user", "1", "--top-k", "3")
    assert_one_line_error(proc, "non-finite user_vectors")


def _wait_for_lock(model: Path, pid: int, timeout: float = 60) -> None:
    lock = model.with_name(f".{model.name}.lock")
    end = time.time() + timeout
    while time.time() < end:
        if lock.exists() and lock.read_text().strip() == str(pid):
            return
        time.sleep(0.05)
    raise AssertionError("the first trainer never took the lock")


def test_one_trainer_per_model_dir_and_a_dead_ones_lock_is_taken(small_dir, tmp_path):
    model = tmp_path / "m"
    flags = ["--data-dir", str(small_dir), "--model-dir", str(model)]
    first = subprocess.Popen([sys.executable, "-m", "recsys.train", *flags, "--epochs", "50"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_for_lock(model, first.pid)
        t = time.time()
        second = run_cli("recsys.train", *flags, "--epochs", "1")
        assert_one_line_error(second, f"is being trained by process {first.pid}")
        assert time.time() - t < 30
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    third = run_cli("recsys.train", *flags, "--epochs", "1")
    assert third.returncode == 0, third.stderr
    assert ModelDir.load(model).meta["settings"]["epochs"] == 1


def test_readers_never_fail_or_mix_two_saves_while_training_saves(small_dir, tmp_path):
    model = tmp_path / "m"
    flags = ["--data-dir", str(small_dir), "--model-dir", str(model), "--batch-size", "8192", "--save-every-epoch"]
    assert run_cli("recsys.train", *flags, "--epochs", "1").returncode == 0
    trainer = subprocess.Popen([sys.executable, "-m", "recsys.train", *flags, "--epochs", "200"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    seen, reads = set(), 0
    try:
        end = time.time() + 12
        while time.time() < end and trainer.poll() is None:
            md = ModelDir.load(model)
            user = 1 + reads % 50
            recs = registry.first_stage(md).scored(user, 5)  # (movie, 5 cos, cos)
            # the predictor and the tower vectors must come from the same save
            got = stages.predict(md, user, [m for m, _, _ in recs])
            np.testing.assert_allclose(got, [s for _, s, _ in recs], atol=1e-4)
            seen.add(md.meta["saved"] + str(len(json.loads(md.files.read("metrics.json")))))
            reads += 1
    finally:
        trainer.kill()
        trainer.wait()
    assert reads > 10 and len(seen) > 2, (reads, seen)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_save_that_runs_out_of_space_keeps_the_previous_model(one_epoch, small_dir, tmp_path, monkeypatch, capsys):
    model = tmp_path / "m"
    shutil.copytree(one_epoch, model)
    before = _digest(model)

    def full_disk(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / f".m.{os.getpid()}.tmp" / "metrics.json"))

    monkeypatch.setattr(modelsave, "write_metrics", full_disk)
    code = train.main(["--data-dir", str(small_dir), "--model-dir", str(model), "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"error: could not save the model dir {model}: No space left on device")
    assert "keeps the last good model" in err[-1]
    assert _digest(model) == before
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_an_unwritable_model_dir_is_refused_before_training(small_dir, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    proc = run_cli("recsys.train", "--data-dir", str(small_dir), "--model-dir", str(tmp_path / "file" / "m"))
    assert_one_line_error(proc, "cannot write the model dir")
    assert "EpochID" not in proc.stdout + proc.stderr


def test_legacy_ir_flag_is_refused_before_the_first_batch(small_dir, tmp_path):
    t = time.time()
    proc = run_cli("recsys.train", "--data-dir", str(small_dir), "--model-dir", str(tmp_path / "m"),
                   env={"FLAGS_enable_pir_api": "0"})  # fmt: skip
    assert_one_line_error(proc, "FLAGS_enable_pir_api=0 is set", "unset FLAGS_enable_pir_api")
    assert not (tmp_path / "m").exists() and time.time() - t < 60


def test_a_damaged_reader_cache_is_rebuilt(small_dir, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(small_dir, folder, ignore=shutil.ignore_patterns("*.npz"))
    fresh = movielens.load(data_dir=folder)
    (cache,) = folder.glob("*.npz")
    for how in ("flip a middle byte", "truncate to half", "truncate to zero"):
        _damage(cache, how)
        again = movielens.load(data_dir=folder)
        for col in ("user", "movie", "stars", "is_test"):
            np.testing.assert_array_equal(getattr(again, col), getattr(fresh, col), err_msg=how)
        with np.load(cache) as z:  # rewritten whole
            assert z["rows"].shape == (len(fresh.user), 3)
