"""The README's first command, `make demo`: offline on a synthetic archive, on the archive `recsys.synthetic` writes
by default and on ml-100k;
and the small things a newcomer meets first: flags infer takes from the model dir, the rated movies it names,
error lines that name the flag and value at fault, the help of --split."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ML1M_META, ROOT, assert_one_line_error, need_ml100k, run_cli

from recsys import synthetic

VENV = Path(sys.prefix)


def _make_demo(tmp_path: Path, *variables: str) -> str:
    stamp = VENV / ".installed"
    if not stamp.exists() or stamp.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime:
        pytest.skip(f"{VENV} is not the venv `make install` keeps up to date: `make demo` would install again")
    model = tmp_path / "demo.model"
    cmd = ["make", "-s", "-f", str(ROOT / "Makefile"), "demo", f"VENV={VENV}", f"MODEL_DIR={model}", "EPOCHS=1"]
    proc = subprocess.run([*cmd, *variables], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (model / "manifest.json").exists()
    return proc.stdout


def test_make_demo_without_a_network_says_so_and_runs_on_synthetic_data(tmp_path):
    """No ml-1m anywhere and downloads going to a closed port: one line says so, the demo trains on the synthetic
    archive in DEMO_DATA (written there beforehand, small, so the test is quick) and ends with the chapter's
    prediction for user 1."""
    data = tmp_path / "demo-data"
    synthetic.write_ml1m(data, 10_000, seed=2, meta_dir=ML1M_META if ML1M_META.is_dir() else None)
    assert os.environ["RECSYS_MIRROR"].startswith("http://127.0.0.1:9/")  # conftest: downloads fail at once
    out = _make_demo(tmp_path, f"DEMO_DATA={data}", f"DEMO_META={ML1M_META}")
    lines = out.splitlines()
    assert lines[0] == (
        f"ml-1m could not be downloaded: the demo runs on a synthetic archive in ml-1m's layout in {data}/ "
        f"({'the real movies and users of ' + str(ML1M_META) + ', ' if ML1M_META.is_dir() else ''}invented ratings): "
        "every number below is synthetic"
    )
    assert f"ml-1m from {data / 'ml-1m.zip'}: " in out and "EpochID 1, BatchID " in out
    last = [line for line in lines if not line.startswith(" ")][-1]
    assert last.startswith('Predict Rating of user id 1 on movie "') and " is " in last, lines[-3:]


def test_make_demo_on_the_default_synthetic_archive(tmp_path):
    made = run_cli("recsys.synthetic", str(tmp_path / "data"))  # defaults: ml-1m's 1,000,209 ratings and sizes
    assert made.returncode == 0, made.stderr
    out = _make_demo(tmp_path, f"DATA_DIR={tmp_path / 'data'}")
    assert "EpochID 1, BatchID 3908, Train Loss" in out  # a model to serve: all 1,000,209 ratings, batches of 256
    assert "the all split trains on every rating: no test split" in out
    assert 'Predict Rating of user id 1 on movie "' in out and "Top 10 movies for user id 1 not rated (" in out


def test_make_demo_on_ml100k(tmp_path):
    out = _make_demo(tmp_path, "DATASET=ml-100k", f"DATA_DIR={need_ml100k()}")
    assert "ml-100k from " in out and "EpochID 1, BatchID 391, Train Loss" in out  # all 100,000 ratings
    assert 'Predict Rating of user id 1 on movie "Milk Money" is' in out  # ml-100k's movie 783
    assert "Top 10 movies for user id 1 not rated (" in out


def test_infer_checks_the_data_flags_against_the_model_dir(trained):
    ok = run_cli("recsys.infer", "--model-dir", str(trained), "--dataset", "ml-1m", "--user", "1", "--top-k", "3")
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("recsys.infer", "--model-dir", str(trained), "--dataset", "ml-100k", "--user", "1", "--top-k", "3")
    assert_one_line_error(
        bad, "--dataset ml-100k:", "was trained on ml-1m split random", "a model dir records its data"
    )


def test_a_new_users_rated_movies_are_named_with_their_titles(small_dir, tmp_path):
    model = tmp_path / "retrieval"
    proc = run_cli("recsys.train", "--data-dir", str(small_dir), "--model-dir", str(model), "--objective",
                   "retrieval", "--epochs", "1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    from recsys import Recommender

    titles = [Recommender.load(model).movie(m)["title"] for m in (5, 17)]
    args = ["--model-dir", str(model), "--gender", "F", "--age", "25", "--job", "4", "--rated", "5:5,17:3"]
    proc = run_cli("recsys.infer", *args, "--top-k", "3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == f"rated, in ml-1m's ids: 5 {titles[0]} (5 stars); 17 {titles[1]} (3 stars)"
    assert proc.stdout.startswith("Top 3 movies for a new user (F, age 25–34, job 4: college/grad student) ")


@pytest.mark.parametrize(
    "module, args, needle",
    [
        ("recsys.serve", ["--port", "99999"], "--port must be 1..65535, got 99999"),
        ("recsys.serve", ["--candidates", "0"], "--candidates must be at least 1, got 0"),
        ("recsys.serve", ["--reload-interval", "-1"], "--reload-interval must not be negative, got -1.0"),
        ("recsys.evaluate", ["--relevant", "9"], "--relevant must be 1..5, got 9"),
        ("recsys.evaluate", ["--ease-lambda", "0"], "--ease-lambda must be positive, got 0.0"),
        ("recsys.evaluate", ["--ease-lambda", "inf"], "--ease-lambda must be positive, got inf"),
        ("recsys.train", ["--max-batches", "-3"], "--max-batches must be 0 or more, got -3"),
        ("recsys.train", ["--cold-start-rate", "2"], "--cold-start-rate must be in [0, 1), got 2.0"),
        ("recsys.train", ["--objective", "retrieval", "--temperature", "0"],
         "--temperature must be positive, got 0.0"),
        ("recsys.train", ["--objective", "retrieval", "--holdout", "1"], "--holdout must be in [0, 1), got 1.0"),
        ("recsys.train", ["--objective", "retrieval", "--item-share", "1"], "--item-share must be in [0, 1), got 1.0"),
        ("recsys.train", ["--objective", "retrieval", "--item-share", "-0.2"],
         "--item-share must be in [0, 1), got -0.2"),
        ("recsys.train", ["--objective", "retrieval", "--item-share", "nan"],
         "--item-share must be in [0, 1), got nan"),
        ("recsys.train", ["--objective", "retrieval", "--item-share", "x"], "--item-share: invalid float value: 'x'"),
        ("recsys.train", ["--objective", "retrieval", "--item-neighbours", "0"],
         "--item-neighbours must be at least 1, got 0"),
        ("recsys.train", ["--objective", "ranking", "--candidates-from", "x", "--hard-negatives", "2"],
         "--hard-negatives must be in [0, 1], got 2.0"),
        ("recsys.train", ["--objective", "ranking", "--candidates-from", "x", "--item-neighbours", "0"],
         "--item-neighbours must be at least 1, got 0"),
    ],
)  # fmt: skip
def test_a_flag_error_names_the_flag_and_its_value(module, args, needle):
    assert_one_line_error(run_cli(module, *args), needle)


def test_split_help_names_every_split():
    out = run_cli("recsys.train", "--help").stdout
    assert "random: the chapter's 10% rule; temporal:" in " ".join(out.split())
