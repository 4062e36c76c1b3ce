"""Ratings through the service into the ratings database: tokens, bad input, lists that change at once, a
server killed mid-load, two servers on one file, and retraining that reads the database."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, free_port, infer_json, need_ml100k, run_cli, start_server

pytest.importorskip("fastapi", reason="the serve extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from recsys import Recommender  # noqa: E402
from recsys.modeldir import ModelDir  # noqa: E402
from recsys.serve import create_app  # noqa: E402

TOKEN = "t0ken-for-the-tests-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def served(u1_models, ratings_db):
    """A retrieval model served with a fresh ratings database (SQLite, PostgreSQL) and a write token: (client,
    `rows(sql)` reading the database)."""
    db, rows = ratings_db
    with TestClient(create_app(u1_models[0], reload_interval=0, ratings_db=db, write_token=TOKEN)) as c:
        yield c, rows


def _ids(answer: dict) -> list[int]:
    return [m["movie_id"] for m in answer["recommendations"]]


def test_a_stored_rating_changes_the_next_list_of_a_history_model(served, u1_models):
    c, rows = served
    before = c.get("/api/users/1/recommendations?k=20").json()
    top = _ids(before)[0]
    r = c.post("/api/ratings", json={"user_id": 1, "movie_id": top, "rating": 5}, headers=AUTH)
    assert r.status_code == 201 and r.json()["seq"] == 1 and r.json()["replaced"] is False
    assert r.json()["list_changes"].startswith("now")
    after = c.get("/api/users/1/recommendations?k=20").json()
    assert top not in _ids(after)
    # the user's vector moved: by hand, the tower over the training history plus the stored movie
    md = ModelDir.load(u1_models[0])
    feeds = md.tables.user_features(np.array([1])) | {"history": md.history_of([1], [(md.movie_row(top), 5.0)])}
    moved = md.user_vector(feeds)[0]
    assert not np.allclose(moved, md.arrays["user_vectors"][1])
    cosines = [m["cosine"] for m in after["recommendations"]]
    assert cosines == pytest.approx([float(md.catalogue_vectors[md.movie_ids.tolist().index(m)] @ moved)
                                     for m in _ids(after)], abs=1e-5)  # fmt: skip
    # the same rating again, then a re-rating: one row per (user, movie), the latest counts
    assert c.post("/api/ratings", json={"user_id": 1, "movie_id": top, "rating": 5}, headers=AUTH).json()["replaced"]
    c.post("/api/ratings", json={"user_id": 1, "movie_id": top, "rating": 2}, headers=AUTH)
    stored = c.get("/api/users/1/ratings").json()["ratings"]
    assert [(s["movie_id"], s["rating"], s["seq"]) for s in stored] == [(top, 2.0, 3)]
    assert rows("SELECT user_id, movie_id, rating FROM ratings") == [(1, top, 2.0)]


def test_a_new_user_rates_and_gets_lists_that_read_the_ratings(served):
    c, _ = served
    r = c.post("/api/users", json={"gender": "F", "age": 30, "job": 4}, headers=AUTH)
    assert r.status_code == 201 and r.json() == {"user_id": 944, "gender": "F", "age": 30, "job": 4}  # ml-100k: 1..943
    assert c.post("/api/users", json={"gender": "M", "age": 40, "job": 1}, headers=AUTH).json()["user_id"] == 945
    assert c.post("/api/ratings", json={"user_id": 944, "movie_id": 50, "rating": 5}, headers=AUTH).status_code == 201
    mine = c.get("/api/users/944/recommendations?k=10").json()
    cold = c.get("/api/recommendations", params={"gender": "F", "age": 30, "job": 4, "k": 10}).json()
    named = c.post("/api/recommend", json={"gender": "F", "age": 30, "job": 4, "rated": [[50, 5]], "k": 10}).json()
    assert _ids(mine) == _ids(named) != _ids(cold) and 50 not in _ids(mine)
    assert c.get("/api/users/944/ratings").json()["new_user"] is True
    assert c.get("/api/users/946/recommendations").status_code == 404


def test_deleting_a_stored_rating_changes_the_list_at_once(served, u1_models):
    c, rows = served
    before = c.get("/api/users/1/recommendations?k=20").json()
    archive = {r["movie_id"] for r in c.get("/api/users/1").json()["ratings"]}  # training and test ratings
    top, second = [m for m in _ids(before) if m not in archive][:2]
    for movie in (top, second):
        assert (
            c.post("/api/ratings", json={"user_id": 1, "movie_id": movie, "rating": 5}, headers=AUTH).status_code == 201
        )
    assert top not in _ids(c.get("/api/users/1/recommendations?k=20").json())
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = c.delete(f"/api/users/1/ratings/{top}", headers=headers)
        assert r.status_code == 401 and list(r.json()) == ["error"] and r.headers["www-authenticate"] == "Bearer"
    assert len(rows("SELECT * FROM ratings")) == 2
    r = c.delete(f"/api/users/1/ratings/{top}", headers=AUTH)
    assert r.status_code == 204 and r.content == b""
    assert rows("SELECT user_id, movie_id FROM ratings") == [(1, second)]
    assert [s["movie_id"] for s in c.get("/api/users/1/ratings").json()["ratings"]] == [second]
    left = Recommender.load(u1_models[0]).recommend(1, 20, rated=[(second, 5)])  # the one stored rating left
    assert c.get("/api/users/1/recommendations?k=20").json() == left and top in _ids(left)
    # deleting all of them gives back the list of no stored rating, exactly
    assert c.delete("/api/users/1/ratings", headers=AUTH).status_code == 204
    assert rows("SELECT * FROM ratings") == [] and c.get("/api/users/1/ratings").json()["ratings"] == []
    assert c.get("/api/users/1/recommendations?k=20").json() == before
    assert c.delete("/api/users/1/ratings", headers=AUTH).status_code == 204  # none left: still done
    # what cannot be deleted: a rating not stored, one of the archive (read-only), unknown ids
    for url, status, needle in (
        (f"/api/users/1/ratings/{top}", 404, "no stored rating"),
        (f"/api/users/1/ratings/{min(archive)}", 409, "read-only"),
        ("/api/users/1/ratings/99999", 404, "unknown movie id 99999"),
        ("/api/users/99999/ratings/1", 404, "unknown user id 99999"),
        ("/api/users/99999/ratings", 404, "unknown user id 99999"),
        ("/api/users/1/ratings/x", 422, "movie"),
    ):
        r = c.delete(url, headers=AUTH)
        assert r.status_code == status and list(r.json()) == ["error"] and needle in r.json()["error"], (url, r.text)
        assert "\n" not in r.text
    with TestClient(create_app(u1_models[0], reload_interval=0)) as plain:  # no ratings database: no writes
        assert plain.delete("/api/users/1/ratings/1", headers=AUTH).status_code == 403


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"user_id": 99999, "movie_id": 1, "rating": 4}, 404, "unknown user id 99999"),
        ({"user_id": 1, "movie_id": 99999, "rating": 4}, 404, "unknown movie id 99999"),
        ({"user_id": 1, "movie_id": 1, "rating": 6}, 422, "outside the data's scale 1..5"),
        ({"user_id": 1, "movie_id": 1, "rating": 3.5}, 422, "not one of the data's ratings"),
        ({"user_id": 1, "movie_id": 1, "rating": True}, 422, "rating: Input should be a valid number"),
        ({"user_id": 1, "movie_id": 1, "rating": "4"}, 422, "rating: Input should be a valid number"),
        ({"user_id": 1, "movie_id": 1}, 422, "rating: Field required"),
        ({"user_id": 1, "movie_id": 1, "rating": 4, "at": 0}, 422, "at: Extra inputs are not permitted"),
        ({"user_id": 2**64, "movie_id": 1, "rating": 4}, 422, "user_id: a whole number within"),
        ({"user_id": True, "movie_id": 1, "rating": 4}, 422, "user_id: Input should be a valid integer"),
    ],
)
def test_bad_ratings_get_a_4xx_with_one_line_and_store_nothing(served, body, status, needle):
    c, rows = served
    r = c.post("/api/ratings", json=body, headers=AUTH)
    assert r.status_code == status and needle in r.json()["error"] and "\n" not in r.text
    assert rows("SELECT COUNT(*) FROM ratings") == [(0,)]


def test_nan_a_body_that_is_not_json_and_tokens(served, u1_models, tmp_path):
    c, _ = served
    raw = {"content-type": "application/json"} | AUTH
    r = c.post("/api/ratings", content=b'{"user_id": 1, "movie_id": 1, "rating": NaN}', headers=raw)
    assert r.status_code == 422 and "rating must be a number" in r.json()["error"]
    r = c.post("/api/ratings", content=b"five stars", headers=raw)
    assert r.status_code == 422 and "malformed JSON body" in r.json()["error"]
    good = {"user_id": 1, "movie_id": 1, "rating": 4}
    missing = c.post("/api/ratings", json=good)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in missing.json()["error"]
    wrong = c.post("/api/ratings", json=good, headers={"Authorization": "Bearer " + TOKEN[:-1]})
    assert wrong.status_code == 401 and wrong.json() == {"error": "wrong write token"}
    assert c.post("/api/users", json={"gender": "X", "age": 30, "job": 4}, headers=AUTH).status_code == 422
    assert c.post("/api/users", json={"gender": "F", "age": 0, "job": 4}, headers=AUTH).status_code == 422
    # no token configured, or no database: 403, saying how to enable writes; reads stay open
    for kwargs in ({"ratings_db": tmp_path / "other.db"}, {}):
        with TestClient(create_app(u1_models[0], reload_interval=0, **kwargs)) as plain:
            r = plain.post("/api/ratings", json=good, headers=AUTH)
            assert r.status_code == 403 and "--write-token-file" in r.json()["error"]
            assert plain.get("/api/users/1/recommendations").status_code == 200


def test_the_rating_model_says_its_list_changes_after_retraining(u1_models, tmp_path):
    app = create_app(u1_models[1], reload_interval=0, ratings_db=tmp_path / "r.db", write_token=TOKEN)
    with TestClient(app) as c:
        top = _ids(c.get("/api/users/1/recommendations?k=5").json())[0]
        r = c.post("/api/ratings", json={"user_id": 1, "movie_id": top, "rating": 4}, headers=AUTH)
        assert r.status_code == 201 and r.json()["list_changes"].startswith("after retraining")
        assert top not in _ids(c.get("/api/users/1/recommendations?k=5").json())


def test_a_file_that_is_no_ratings_database_is_one_error_and_left_untouched(u1_models, tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("not a database\n")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE things (x)")
    data = ["--dataset", "ml-100k", "--split", "u1", "--data-dir", str(need_ml100k())]
    for path, needle in ((text, "is not a SQLite database"), (other, "not a recsys ratings database")):
        before = path.read_bytes()
        proc = run_cli("recsys.serve", "--model-dir", str(u1_models[0]), "--ratings-db", str(path), "--port", "1")
        assert_one_line_error(proc, needle)
        proc = run_cli("recsys.train", *data, "--epochs", "1", "--model-dir", str(tmp_path / "m"),
                       "--ratings-db", str(path))  # fmt: skip
        assert_one_line_error(proc, needle)
        assert path.read_bytes() == before
    assert not (tmp_path / "m").exists()
    proc = run_cli("recsys.serve", "--model-dir", str(u1_models[0]), "--ratings-db", str(tmp_path / "x.db"),
                   "--host", "0.0.0.0")  # fmt: skip
    assert_one_line_error(proc, "needs a write token")
    assert not (tmp_path / "x.db").exists()


def _start(model, db, port: int, token_file) -> subprocess.Popen:
    return start_server("--model-dir", str(model), "--ratings-db", str(db), "--write-token-file", str(token_file),
                        "--reload-interval", "0", port=port)  # fmt: skip


def _post(port: int, body: dict) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/ratings", json.dumps(body).encode(),
                                 AUTH | {"content-type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_nothing_acknowledged_is_lost_when_the_server_is_killed(u1_models, ratings_db, tmp_path):
    """Four writers (one in five of their ratings off the scale) and two readers against a server that is
    SIGKILLed mid-load; restarted on the same database, every 201 is there exactly once, no 4xx is."""
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    db, port = ratings_db[0], free_port()
    server = _start(u1_models[0], db, port, token)
    acked, refused, lock, stop = {}, set(), threading.Lock(), threading.Event()

    def writer(w: int) -> None:
        for i in range(400):  # each (user, movie) once: user 1 + w, movies 1..400
            if stop.is_set():
                return
            body = {"user_id": 1 + w, "movie_id": 1 + i, "rating": 9 if i % 5 == 4 else 1 + i % 5}
            try:
                status = _post(port, body)
            except (OSError, http.client.HTTPException):  # cut off by the kill: may land either way
                return
            with lock:
                (acked.__setitem__((body["user_id"], body["movie_id"]), body["rating"]) if status == 201
                 else refused.add((body["user_id"], body["movie_id"])))  # fmt: skip

    def reader() -> None:
        while not stop.is_set():
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/users/1/recommendations?k=10", timeout=10).read()
            except (OSError, http.client.HTTPException):  # a read cut off by the kill
                return

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(acked) >= 150 and refused
    server = _start(u1_models[0], db, port, token)  # the same file, after the kill
    try:
        stored = {}
        for user in range(1, 5):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/users/{user}/ratings", timeout=10) as r:
                for row in json.load(r)["ratings"]:
                    assert (user, row["movie_id"]) not in stored  # once
                    stored[(user, row["movie_id"])] = row["rating"]
        assert all(stored.get(pair) == rating for pair, rating in acked.items())
        assert not refused & stored.keys()
        assert _post(port, {"user_id": 1, "movie_id": 1000, "rating": 3}) == 201  # it takes ratings again
    finally:
        server.kill()
        server.wait(timeout=30)


def test_training_reads_the_database_while_a_server_writes_it(u1_models, ratings_db, tmp_path):
    """A server keeps taking ratings while `train --ratings-db` reads the same database: no write fails or
    waits as long as the busy timeout, and the model dir records a whole prefix of the rows (up to a seq)."""
    from recsys.data.store import BUSY_TIMEOUT

    db, rows = ratings_db
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    port = free_port()
    server = _start(u1_models[0], db, port, token)
    answers, stop = [], threading.Event()

    def writer() -> None:
        for i in range(5000):
            if stop.is_set():
                return
            start = time.monotonic()
            status = _post(port, {"user_id": 1 + i % 4, "movie_id": 1 + i // 4, "rating": 1 + i % 5})
            answers.append((status, time.monotonic() - start))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(answers) < 20 and thread.is_alive():
            time.sleep(0.05)
        data = ["--dataset", "ml-100k", "--split", "u1", "--data-dir", str(need_ml100k())]
        proc = run_cli("recsys.train", *data, "--objective", "retrieval", "--epochs", "1", "--max-batches", "5",
                       "--model-dir", str(tmp_path / "m"), "--ratings-db", db)  # fmt: skip
        during = len(answers)
    finally:
        stop.set()
        thread.join(timeout=60)
        server.kill()
        server.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert len(answers) > during > 20 and {a for a, _ in answers} == {201}
    assert max(t for _, t in answers) < BUSY_TIMEOUT
    read = ModelDir.load(tmp_path / "m").meta["settings"]["ratings_db_read"]
    assert 20 <= read["high_water"] < len(answers) and read["ratings"] == read["high_water"]  # no re-ratings
    assert rows("SELECT COUNT(*) FROM ratings") == [(len(answers),)]


def test_training_refuses_a_password_in_a_database_url(tmp_path):
    """A model dir records `--ratings-db`: a password belongs in PGPASSWORD or ~/.pgpass, not in the URL."""
    proc = run_cli("recsys.train", "--model-dir", str(tmp_path / "m"), "--ratings-db",
                   "postgresql://me:secret@127.0.0.1:1/db")  # fmt: skip
    assert_one_line_error(proc, "PGPASSWORD")
    assert "secret" not in proc.stderr and not (tmp_path / "m").exists()


def test_two_servers_share_one_database(u1_models, ratings_db):
    """Two servers (replicas) write one database at once: every write lands, in one seq order, and each
    server reads the other's rows."""
    db, rows = ratings_db
    apps = [create_app(u1_models[0], reload_interval=0, ratings_db=db, write_token=TOKEN) for _ in range(2)]
    with TestClient(apps[0]) as a, TestClient(apps[1]) as b:
        errors = []

        def write(c, user):
            for movie in range(1, 101):
                r = c.post("/api/ratings", json={"user_id": user, "movie_id": movie, "rating": 4}, headers=AUTH)
                if r.status_code != 201:
                    errors.append(r.text)

        threads = [threading.Thread(target=write, args=(c, u)) for c, u in ((a, 1), (b, 2), (a, 3), (b, 4))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors
        # each server reads what the other wrote
        assert len(a.get("/api/users/2/ratings").json()["ratings"]) == 100
        assert len(b.get("/api/users/1/ratings").json()["ratings"]) == 100
        assert [r[0] for r in rows("SELECT seq FROM ratings ORDER BY seq")] == list(range(1, 401))


def test_a_second_app_in_one_process_never_hides_the_first_ones_writes(u1_models, tmp_path):
    """Two apps on one SQLite file in one process (the first one's connections still open), and another
    process opening and closing the file between writes: every write the apps acknowledge is what a third
    process reads at once, and stays after the apps stop (nothing is written where no one else looks)."""
    db = tmp_path / "ratings.db"
    peek = (
        "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT COUNT(*) FROM ratings').fetchone()[0])"
    )

    def others_see() -> int:  # a connection of another process, opened and closed (as `train --ratings-db` does)
        return int(subprocess.run([sys.executable, "-c", peek, str(db)], capture_output=True, text=True).stdout)

    with TestClient(create_app(u1_models[0], reload_interval=0, ratings_db=db, write_token=TOKEN)) as first:
        assert (
            first.post("/api/ratings", json={"user_id": 1, "movie_id": 1, "rating": 2}, headers=AUTH).status_code == 201
        )
        with TestClient(create_app(u1_models[0], reload_interval=0, ratings_db=db, write_token=TOKEN)) as second:
            for n, (c, movie) in enumerate(((second, 2), (first, 3), (second, 4), (first, 1)), 2):
                r = c.post("/api/ratings", json={"user_id": 1, "movie_id": movie, "rating": 3}, headers=AUTH)
                assert r.status_code == 201
                assert others_see() == min(n, 4), n  # the last one re-rates movie 1: still 4 rows
    assert others_see() == 4
    assert sorted(m for (m,) in sqlite3.connect(db).execute("SELECT movie_id FROM ratings")) == [1, 2, 3, 4]


def _retrain(db: Path | str, tmp_path: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """One retrieval epoch on ml-100k u1 that reads the ratings database `db`, into tmp_path/retrained."""
    model = tmp_path / "retrained"
    data = ["--dataset", "ml-100k", "--split", "u1", "--data-dir", str(need_ml100k())]
    proc = run_cli("recsys.train", *data, "--objective", "retrieval", "--epochs", "1", "--model-dir", str(model),
                   "--ratings-db", str(db))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return model, proc


def test_retraining_reads_the_database_and_the_new_user_is_known(u1_models, ratings_db, tmp_path):
    db = ratings_db[0]
    app = create_app(u1_models[0], reload_interval=0, ratings_db=db, write_token=TOKEN)
    with TestClient(app) as c:
        new = c.post("/api/users", json={"gender": "F", "age": 30, "job": 4}, headers=AUTH).json()["user_id"]
        for movie, stars in ((50, 5), (181, 4), (172, 5)):
            c.post("/api/ratings", json={"user_id": new, "movie_id": movie, "rating": stars}, headers=AUTH)
        c.post("/api/ratings", json={"user_id": 1, "movie_id": 1, "rating": 1}, headers=AUTH)  # a training pair
        c.post("/api/ratings", json={"user_id": 1, "movie_id": 6, "rating": 5}, headers=AUTH)  # a u1 test pair
    model, proc = _retrain(db, tmp_path)
    assert "4 stored ratings (up to seq 5) and 1 new users" in proc.stdout
    assert "1 archive ratings replaced" in proc.stdout and "1 left out" in proc.stdout
    read = ModelDir.load(model).meta["settings"]["ratings_db_read"]
    assert read["high_water"] == 5 and read["ratings"] == 5 and len(read["sha256"]) == 64
    answer = infer_json("--model-dir", str(model), "--user", str(new), "--top-k", "5")
    assert answer["user_id"] == new and len(answer["recommendations"]) == 5
    assert not {50, 181, 172} & set(_ids(answer))
    md = ModelDir.load(model)
    assert sorted(md.ratings_of(new)[0].tolist()) == [50, 172, 181] and not md.ratings_of(new)[2].any()
    user1 = md.ratings_of(1)
    assert 1.0 == user1[1][list(user1[0]).index(1)]  # the stored rating replaced the archive's
    assert list(user1[0]).count(6) == 1 and user1[2][list(user1[0]).index(6)]  # the test rating untouched
    # a resumed run reads the rows it recorded (later users and ratings aside), or refuses once they changed
    with TestClient(create_app(u1_models[0], reload_interval=0, ratings_db=db, write_token=TOKEN)) as c:
        c.post("/api/users", json={"gender": "M", "age": 40, "job": 1}, headers=AUTH)
        c.post("/api/ratings", json={"user_id": 2, "movie_id": 3, "rating": 4}, headers=AUTH)
        resumed = run_cli("recsys.train", "--model-dir", str(model), "--resume", "--epochs", "2")
        assert resumed.returncode == 0, resumed.stderr
        assert "4 stored ratings (up to seq 5) and 1 new users" in resumed.stdout
    with TestClient(create_app(u1_models[0], reload_interval=0, ratings_db=db, write_token=TOKEN)) as c:
        again = c.post("/api/ratings", json={"user_id": new, "movie_id": 50, "rating": 3}, headers=AUTH)
        assert again.json()["replaced"]
    proc = run_cli("recsys.train", "--model-dir", str(model), "--resume", "--epochs", "3")
    assert_one_line_error(proc, "no longer holds the rows this run read")


def test_retraining_never_reads_deleted_ratings(u1_models, tmp_path):
    db = tmp_path / "ratings.db"
    with TestClient(create_app(u1_models[0], reload_interval=0, ratings_db=db, write_token=TOKEN)) as c:
        new = c.post("/api/users", json={"gender": "F", "age": 30, "job": 4}, headers=AUTH).json()["user_id"]
        for movie in (50, 181, 172):
            c.post("/api/ratings", json={"user_id": new, "movie_id": movie, "rating": 5}, headers=AUTH)
        c.post("/api/ratings", json={"user_id": 2, "movie_id": 3, "rating": 4}, headers=AUTH)
        assert c.delete(f"/api/users/{new}/ratings/181", headers=AUTH).status_code == 204
        assert c.delete("/api/users/2/ratings", headers=AUTH).status_code == 204
    model, proc = _retrain(db, tmp_path)
    assert "2 stored ratings (up to seq 3) and 1 new users" in proc.stdout
    md = ModelDir.load(model)
    assert sorted(md.ratings_of(new)[0].tolist()) == [50, 172]
    assert 3 not in md.ratings_of(2)[0].tolist() and md.meta["settings"]["ratings_db_read"]["ratings"] == 2


def test_the_readmes_loop_runs_as_written(u1_models, tmp_path):
    """The block marked `runnable: ratings-in` (docs/guides/serving.md), run by bash in a folder holding a
    retrieval model of ml-100k u1."""
    import shutil

    from conftest import SHARED
    from docblocks import block as marked

    block = marked("ratings-in").text
    shutil.copytree(u1_models[0], tmp_path / "retrieval.model")
    if shutil.which("curl") is None:
        pytest.skip("no curl here")
    with socket.socket() as s:  # the block's port 8000 must be free here
        if s.connect_ex(("127.0.0.1", 8000)) == 0:
            pytest.skip("port 8000 is taken on this machine")
    path = f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"  # `python` is this one
    env = {**os.environ, "RECSYS_DATA_HOME": str(SHARED), "PATH": path}
    script = "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + block  # no server left if a step fails
    proc = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"user_id":944' in proc.stdout.replace(" ", "") and "Top 10 movies for user id 944" in proc.stdout
    rows = sqlite3.connect(tmp_path / "ratings.db").execute("SELECT user_id, movie_id, rating FROM ratings")
    assert rows.fetchall() == [(944, 50, 5.0)]
