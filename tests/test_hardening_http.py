"""The service against a hostile or careless client: bounded bodies that never stall other requests, the write
token before the body, the server's own faults as 5xx, private long tokens, strict ids, HEAD and OPTIONS, no
Host reflection, security headers, no absolute paths, idle connections closed, and titles kept whole."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import assert_one_line_error, free_port, run_cli, start_server

pytest.importorskip("fastapi", reason="the serve extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from recsys.serve import create_app  # noqa: E402

TOKEN = "hardening-t0ken-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """A retrieval model and a ranking network on its candidates, on 30 movies of own data (one titled
    `javascript:alert(3)`, one `Beta (12)`): trained in seconds."""
    out = tmp_path_factory.mktemp("tiny")
    data = out / "data"
    data.mkdir()
    rng = random.Random(0)
    movies = ["1,javascript:alert(3),Comedy", "2,Alpha (1999),Drama", "3,Beta (12),Action"]
    movies += [f"{m},Movie {m} (2000),Drama" for m in range(4, 31)]
    pairs = [(u, m) for u in range(1, 21) for m in rng.sample(range(1, 31), 8)]
    (data / "movies.csv").write_text("movieId,title,genres\n" + "\n".join(movies) + "\n")
    (data / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(
        f"{u},{m},{rng.randint(1, 5)},{100 + i}" for i, (u, m) in enumerate(pairs)) + "\n")  # fmt: skip
    flags = ["--data-dir", str(data), "--dataset", "csv", "--epochs", "1", "--batch-size", "8"]
    for name, extra in (("retrieval", []), ("ranking", ["--candidates-from", str(out / "retrieval")])):
        proc = run_cli("recsys.train", *flags, "--model-dir", str(out / name), "--objective", name, *extra)
        assert proc.returncode == 0, proc.stderr
    return out / "retrieval", out / "ranking"


@pytest.fixture
def client(tiny, tmp_path):
    app = create_app(tiny[0], tiny[1], reload_interval=0, ratings_db=tmp_path / "r.db", write_token=TOKEN)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _one_line(r, status: int, needle: str = "") -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    doc = r.json()
    assert list(doc) == ["error"] and needle in doc["error"] and "\n" not in doc["error"], doc
    return doc


def _raw(port: int, head: str, body: bytes = b"", timeout: float = 10) -> tuple[bytes, float]:
    """Send a request's head and the start of its body on a socket; the answer's first bytes and the seconds
    they took."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        start = time.monotonic()
        s.sendall(head.encode() + b"\r\n\r\n" + body)
        return _answer(s), time.monotonic() - start


def _answer(s: socket.socket) -> bytes:
    """One whole HTTP answer (head and its Content-Length of body) read from the socket."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < int(
        re.search(rb"content-length: (\d+)", data.lower())[1]
    ):
        data += s.recv(65536)
    return data


def _chunked_until_answered(port: int, path: str, piece: bytes, limit: int) -> tuple[bytes, float]:
    """A chunked body (no Content-Length), sent piece by piece until the server answers (or `limit` bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        start = time.monotonic()
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                  "transfer-encoding: chunked\r\n\r\n".encode())  # fmt: skip
        sent = 0
        while sent < limit and not select.select([s], [], [], 0)[0]:
            try:
                s.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):  # answered and closed between the select and the send
                break
            sent += len(piece)
        return _answer(s), time.monotonic() - start


def test_a_large_body_never_stalls_a_small_request(tiny):
    """Bodies over the bound (declared or chunked) are a 413 before they are read, `rated` over its bound a 422
    before any pair is read; meanwhile a small GET on another connection keeps its pace."""
    port = free_port()
    server = start_server("--model-dir", str(tiny[0]), "--reload-interval", "0", port=port)
    delays, stop = [], threading.Event()

    def small() -> None:
        while not stop.is_set():
            start = time.monotonic()
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/movies/2", timeout=30).read()
            delays.append(time.monotonic() - start)

    thread = threading.Thread(target=small)
    try:
        thread.start()
        time.sleep(0.3)
        big = b'{"rated": [' + b"[1, 5], " * 1_000_000 + b"[1, 5]]}"  # 8 MB, a million pairs
        head = (
            f"POST /api/recommend HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {len(big)}"
        )
        answer, declared = _raw(port, head, big[:65536])
        assert answer.startswith(b"HTTP/1.1 413 ") and b"over this server's bound of 65536 bytes" in answer
        answer, chunked = _chunked_until_answered(port, "/api/recommend", b"[1, 5], " * 8192, 8_000_000)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        under = b'{"rated": [' + b"[1, 5], " * 8000 + b"[1, 5]]}"  # 64 kB: under the body bound
        head = (
            f"POST /api/recommend HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {len(under)}"
        )
        answer, pairs = _raw(port, head, under)
        assert answer.startswith(b"HTTP/1.1 422 ") and b"at most 1000 [movie id, stars] pairs, got 8001" in answer
        assert b"[1, 5], [1, 5]" not in answer  # never echoed back
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(timeout=60)
        server.terminate()
        server.wait(timeout=30)
    print(f"413 declared {declared:.3f} s, 413 chunked {chunked:.3f} s, 422 rated {pairs:.3f} s; "
          f"small GETs: {len(delays)}, slowest {max(delays):.3f} s")  # fmt: skip
    assert max(declared, chunked, pairs) < 2 and len(delays) > 5 and max(delays) < 1


def test_writes_check_the_token_before_the_body(tiny, tmp_path):
    """A 100 MB body declared without a token is a 401 at once (nothing read); an invalid body without a token
    is a 401, never a 422 that describes the schema."""
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    port = free_port()
    server = start_server("--model-dir", str(tiny[0]), "--ratings-db", str(tmp_path / "r.db"), "--write-token-file",
                          str(token), "--reload-interval", "0", port=port)  # fmt: skip
    try:
        head = "POST /api/ratings HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100000000"
        answer, took = _raw(port, head, b'{"user_id": ')
        assert answer.startswith(b"HTTP/1.1 401 ") and took < 2, answer[:300]
        head = head.replace("100000000", "100000000\r\nAuthorization: Bearer " + TOKEN)
        answer, took = _raw(port, head, b'{"user_id": ')
        assert answer.startswith(b"HTTP/1.1 413 ") and took < 2, answer[:300]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_no_token_no_schema_and_no_token_in_the_url(client):
    _one_line(client.post("/api/ratings", json={"nothing": "valid"}), 401, "Authorization: Bearer")
    _one_line(client.post("/api/users", content=b"{not json", headers=JSON), 401, "Authorization: Bearer")
    r = client.post(f"/api/ratings?token={TOKEN}", json={"user_id": 1, "movie_id": 2, "rating": 4})
    _one_line(r, 401, "never in the URL")
    assert client.post("/api/ratings", json={"user_id": 1, "movie_id": 2, "rating": 4}, headers=AUTH).status_code == 201


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/recommend", b'{"user_id": 1, "user_id": 2}'),
        ("/api/ratings", b'{"user_id": 1, "movie_id": 2, "rating": 1, "rating": 5}'),
        ("/api/recommend", b'{"rated": [[2, 5]], "rated": [[3, 1]]}'),
    ],
)
def test_a_key_given_twice_is_refused(client, path, body):
    doc = _one_line(client.post(path, content=body, headers=JSON | AUTH), 422, "malformed JSON body: the key")
    assert "is given twice" in doc["error"]
    assert client.get("/api/users/1/ratings").json()["ratings"] == []


@pytest.mark.parametrize("spelled", ["1_0", "+1", "%201", "1%20", "1e3", "%D9%A1", "0x1", "1.0", "9" * 20, "1e308"])
def test_ids_in_paths_are_plain_digits(client, spelled):
    doc = _one_line(client.get(f"/api/users/{spelled}"), 422, "user: an id is whole digits")
    assert len(doc["error"]) < 80  # a 309-digit number is never echoed
    _one_line(client.get(f"/api/users/{spelled}/recommendations"), 422, "user: an id is whole digits")
    _one_line(client.get(f"/api/predict?user=1&movie={spelled}"), 422, "movie: an id is whole digits")


def test_an_id_past_64_bits_in_a_body_is_not_echoed(client):
    for value in (b"1e308", str(2**64).encode()):
        r = client.post("/api/recommend", content=b'{"user_id": ' + value + b"}", headers=JSON)
        assert len(_one_line(r, 422, "user_id: a whole number within")["error"]) < 80


def test_the_servers_own_faults_are_5xx(client, tmp_path):
    """A damaged ratings database is a 503, an unexpected failure a 500, one line each; they are documented."""
    store = client.app.state.writes.store
    for movie in range(1, 31):
        for user in range(1, 21):
            store.rate(user, movie, 3)
    store.close(every_thread=True)  # the WAL is checkpointed into the file, no page is cached
    db = tmp_path / "r.db"
    size = db.stat().st_size
    with open(db, "r+b") as f:  # 8 KiB of garbage in its middle
        f.seek(size // 2 // 4096 * 4096)
        f.write(os.urandom(8192))
    statuses = {client.get(f"/api/users/{u}/ratings").status_code for u in range(1, 21)}
    assert 503 in statuses and statuses <= {200, 503}, statuses
    _one_line(next(r for u in range(1, 21) if (r := client.get(f"/api/users/{u}/ratings")).status_code == 503), 503,
              "ratings database")  # fmt: skip
    rec = client.app.state.holder.current
    rec.similar = lambda *a: 1 / 0
    _one_line(client.get("/api/movies/2/similar"), 500, "the server failed on this request: ZeroDivisionError")
    rec.similar = lambda *a: (_ for _ in ()).throw(MemoryError())
    _one_line(client.get("/api/movies/2/similar"), 503, "the server cannot answer now: MemoryError")
    doc = client.get("/openapi.json").json()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert {"500", "503"} <= op["responses"].keys(), (path, method)
            assert ("413" in op["responses"]) == ("requestBody" in op), (path, method)


def test_head_options_redirects_and_headers(client):
    head = client.head("/api/movies/2")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(client.get("/api/movies/2").content)
    options = client.options("/api/users/1")
    assert options.status_code == 204 and options.headers["allow"] == "GET, HEAD, OPTIONS"
    assert client.options("/api/ratings").headers["allow"] == "OPTIONS, POST"
    assert client.options("/api/nothing").status_code == 404
    # a trailing slash is read as none: no redirect that would carry the Host header
    slash = client.get("/api/movies/2/", headers={"host": "evil.example"}, follow_redirects=False)
    assert slash.status_code == 200 and "location" not in slash.headers and "evil" not in slash.text
    for r in (client.get("/"), client.get("/api/health"), client.get("/docs"), client.get("/api/nothing")):
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer" and "frame-ancestors 'none'" in r.headers[
            "content-security-policy"]  # fmt: skip


def test_the_pages_policy_allows_its_own_inline_script_and_style_only(client):
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
    for tag in ("script", "style"):
        blocks = re.findall(rf"<{tag}(?:\s[^>]*)?>(.*?)</{tag}>", page.text, re.S)
        assert blocks
        for block in blocks:
            digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp
    # nothing else inline that the policy would block: no event-handler or style attributes, no other scripts
    assert not re.search(r"<[^>]+\s(on[a-z]+|style)\s*=", page.text)
    assert "javascript:" not in page.text


def test_health_shows_dir_names_not_paths(client, tiny):
    doc = client.get("/api/health").json()
    assert doc["model"]["path"] == "retrieval" and doc["rerank"]["path"] == "ranking"
    assert str(tiny[0].parent) not in json.dumps(doc)


def test_predict_on_a_ranking_server_says_what_it_needs(client):
    doc = _one_line(client.get("/api/predict?user=1&movie=2"), 404, "no rating model is served")
    assert "start the server with --rerank" not in doc["error"]
    assert "a retrieval model (retrieval) and a ranking model (ranking)" in doc["error"]
    assert "a rating model (train --objective rating) given as --rerank" in doc["error"]


def test_titles_keep_trailing_digits_that_are_no_year(client):
    assert client.get("/api/movies/1").json()["title"] == "javascript:alert(3)"
    assert client.get("/api/movies/3").json()["title"] == "Beta (12)"
    assert client.get("/api/movies/2").json()["title"] == "Alpha"


def test_the_token_file_must_be_private_long_and_ascii(tiny, tmp_path):
    model = ["--model-dir", str(tiny[0]), "--port", "1"]
    token = tmp_path / "token"
    for text, mode, needle in (
        (TOKEN, 0o644, "is readable by others (mode 0644): chmod 600"),
        (TOKEN, 0o640, "is readable by others (mode 0640)"),
        ("short-token", 0o600, "holds a token of 11 characters; use at least 16"),
        ("tökén-tökén-tökén-tökén", 0o600, "must be printable ASCII"),
    ):
        token.write_text(text + "\n")
        token.chmod(mode)
        assert_one_line_error(run_cli("recsys.serve", *model, "--write-token-file", str(token)), needle)
    proc = run_cli("recsys.serve", *model, env={"RECSYS_WRITE_TOKEN": "short"})
    assert_one_line_error(proc, "$RECSYS_WRITE_TOKEN holds a token of 5 characters")
    for flag, value in (("--max-body-bytes", "0"), ("--idle-timeout", "0")):
        assert_one_line_error(run_cli("recsys.serve", *model, flag, value), f"{flag} must be")


def test_the_start_line_the_access_log_and_idle_connections(tiny, tmp_path):
    """The start-up line names both models; a token in a query string never reaches the access log; an idle
    keep-alive connection is closed after --idle-timeout."""
    port = free_port()
    cmd = [sys.executable, "-m", "recsys.serve", "--model-dir", str(tiny[0]), "--rerank", str(tiny[1]), "--port",
           str(port), "--reload-interval", "0", "--idle-timeout", "1"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = server.stdout.readline()
        assert f"{tiny[0]} (retrieval) reranked by {tiny[1]} (ranking)" in first, first
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health?k=3&token={TOKEN}", timeout=5).read()
                break
            except OSError:
                time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _answer(s).startswith(b"HTTP/1.1 200 ")
            start = time.monotonic()
            while s.recv(65536):  # b"": the server closed the idle connection
                pass
            idle = time.monotonic() - start
        assert 0.5 < idle < 5, idle
    finally:
        server.terminate()
        out = server.communicate(timeout=30)[0]
    assert TOKEN not in out and "/api/health?k=3&token=[redacted]" in out, out
