"""Shared fixtures: synthetic archives in the ml-1m layout, the real metadata beside the repo, a trained model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys import synthetic

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECSYS_SHARED_DATA") or ROOT.parent / "shared" / "data")
ML1M_META = SHARED / "ml-1m"
ML100K_ZIP = SHARED / "ml-100k.zip"
# the chapter's first training sample, and the rating its infer step reports
HEAD = ("1::1193::5::978300760", "1::783::4::978300761")


def need_ml1m_meta() -> Path:
    if not (ML1M_META / "movies.dat").is_file():
        pytest.skip(f"real ml-1m movies.dat/users.dat not found in {ML1M_META} (set RECSYS_SHARED_DATA)")
    return ML1M_META


def need_ml100k() -> Path:
    if not ML100K_ZIP.is_file():
        pytest.skip(f"real ml-100k.zip not found in {SHARED} (set RECSYS_SHARED_DATA)")
    return SHARED


@pytest.fixture(autouse=True, scope="session")
def _isolated(tmp_path_factory):
    """No test reads ~/.cache or reaches the internet: data home is a temp dir, downloads go to a closed port."""
    os.environ["RECSYS_DATA_HOME"] = str(tmp_path_factory.mktemp("data-home"))
    os.environ["RECSYS_MIRROR"] = "http://127.0.0.1:9/closed"


@pytest.fixture(scope="session")
def real_meta_dir(tmp_path_factory) -> Path:
    """ml-1m layout: real movies.dat/users.dat, 60k synthetic ratings opening with the chapter's lines."""
    out = tmp_path_factory.mktemp("ml1m-real-meta")
    synthetic.write_ml1m(out, 60_000, seed=1, meta_dir=need_ml1m_meta(), head=HEAD)
    return out


@pytest.fixture(scope="session")
def small_dir(tmp_path_factory) -> Path:
    """ml-1m layout, invented metadata (400 movies, 600 users), 40k ratings; needs nothing beside the repo."""
    out = tmp_path_factory.mktemp("ml1m-small")
    synthetic.write_ml1m(out, 40_000, seed=2)
    return out


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m ...` the way a user would, capturing text output."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=900,
    )


def infer_json(*args: str) -> dict:
    """`python -m recsys.infer ... --json`, which must succeed, as its object."""
    proc = run_cli("recsys.infer", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr, proc.stderr
    last = err.splitlines()[-1]
    assert last.startswith("error:") or "error:" in last, err
    for n in needles:
        assert n in last, (n, last)


@pytest.fixture(scope="session")
def trained(small_dir, tmp_path_factory) -> Path:
    """A model dir trained briefly on the small archive through the CLI."""
    model = tmp_path_factory.mktemp("model") / "recommender_system.inference.model"
    proc = run_cli(
        "recsys.train", "--data-dir", str(small_dir), "--model-dir", str(model), "--epochs", "2", "--eval-every", "50"
    )
    assert proc.returncode == 0, proc.stderr
    return model


@pytest.fixture(scope="session")
def u1_models(tmp_path_factory) -> tuple[Path, Path]:
    """A short retrieval training and a one-epoch rating model, both on ml-100k u1."""
    data = str(need_ml100k())
    out = tmp_path_factory.mktemp("u1")
    flags = ["--dataset", "ml-100k", "--split", "u1", "--data-dir", data]
    proc = run_cli("recsys.train", *flags, "--model-dir", str(out / "retrieval"), "--objective", "retrieval",
                   "--epochs", "3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("recsys.train", *flags, "--model-dir", str(out / "rating"), "--epochs", "1")
    assert proc.returncode == 0, proc.stderr
    return out / "retrieval", out / "rating"


@pytest.fixture
def http_dir(tmp_path):
    """A loopback HTTP server over a temp folder; yields (folder, base URL)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
