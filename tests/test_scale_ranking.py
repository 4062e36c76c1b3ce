"""The chapter's two stages on data far above a users x movies table: 100,000 users x 40,000 movies (a bool
table of them would take 4 GB), every process capped below that. Slow (about five minutes on 2 cores): it runs
in `make bench`, not in `make test`."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

from recsys import synthetic

USERS, MOVIES, RATINGS = 100_000, 40_000, 2_000_000
CAP = 3 << 30  # bytes of data segment and private mappings per process: below USERS x MOVIES


def _capped(*args: str) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_DATA, (CAP, CAP))

    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=1800, preexec_fn=limit)


@pytest.mark.slow
def test_two_stages_train_and_serve_without_a_users_by_movies_table(tmp_path):
    assert USERS * MOVIES > CAP
    synthetic.write_csv(tmp_path / "data", "ml-32m", RATINGS, USERS, MOVIES, seed=1, zipped=True)
    data = ["--dataset", "ml-32m", "--data-dir", str(tmp_path / "data")]
    retrieval, ranking = tmp_path / "retrieval", tmp_path / "ranking"
    proc = _capped("recsys.train", *data, "--objective", "retrieval", "--epochs", "1", "--max-batches", "300",
                   "--model-dir", str(retrieval))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _capped("recsys.train", *data, "--objective", "ranking", "--candidates-from", str(retrieval),
                   "--epochs", "1", "--max-batches", "50", "--model-dir", str(ranking))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for user in ("1", str(USERS)):
        proc = _capped("recsys.infer", "--model-dir", str(retrieval), "--rerank", str(ranking), "--user", user,
                       "--top-k", "10", "--json")  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        doc = json.loads(proc.stdout)
        assert doc["stages"] == ["retrieval", "ranking"] and len(doc["recommendations"]) == 10
        from recsys import Recommender

        rated = {r["movie_id"] for r in Recommender.load(retrieval).user(int(user))["ratings"] if r["split"] == "train"}
        assert not rated & {r["movie_id"] for r in doc["recommendations"]}
