"""Shared fixtures: synthetic archives in the ml-1m layout, the real metadata beside the repo, a trained model."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
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


def free_port() -> int:
    """A loopback port that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 120) -> dict:
    """GET `url`'s JSON, asking again until a server that is still starting answers (or `timeout` s pass)."""
    end = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            if time.time() > end:
                raise
            time.sleep(0.2)


def start_server(*args: str, port: int, timeout: float = 120) -> subprocess.Popen:
    """`python -m recsys.serve ARGS --port PORT` (quiet), once `/api/health` answers."""
    cmd = [sys.executable, "-m", "recsys.serve", *args, "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5).read()
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise AssertionError(f"the server did not start: {' '.join(cmd)}")


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
def one_epoch(small_dir, tmp_path_factory) -> Path:
    """One epoch of the chapter's model on the small archive, trained once: tests copy it before they spoil it."""
    model = tmp_path_factory.mktemp("one-epoch") / "model"
    proc = run_cli("recsys.train", "--data-dir", str(small_dir), "--model-dir", str(model), "--epochs", "1")
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


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server of this machine (Debian's `postgresql` package), started for the tests on a loopback
    port in a temp folder and stopped after them: its URL without a database. Skips, saying why, without the
    psycopg driver or the server's programs."""
    pytest.importorskip("psycopg", reason="no psycopg driver here (the dev extra brings it)")
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[::-1]), None)
    if found is None:
        pytest.skip("no PostgreSQL server here (Debian: apt-get install postgresql)")
    bin_dir, run_as = Path(found).resolve().parent, []
    root = Path(tempfile.mkdtemp(prefix="recsys-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the package's own user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True)  # fmt: skip
    options = f"-k {root} -h 127.0.0.1 -p {port}"
    subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w",
                    "start"], check=True, capture_output=True)  # fmt: skip
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def ratings_db(request, tmp_path):
    """A new, empty ratings database of each kind: (`--ratings-db` value, `rows(sql)` reading it directly)."""
    if request.param == "sqlite":
        import sqlite3

        path = tmp_path / "ratings.db"
        return str(path), lambda sql: sqlite3.connect(path).execute(sql).fetchall()
    import psycopg

    server = request.getfixturevalue("postgres_server")
    name = f"recsys_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    url = f"{server}/{name}"

    def rows(sql):
        with psycopg.connect(url) as con:
            return [tuple(r) for r in con.execute(sql).fetchall()]

    return url, rows
