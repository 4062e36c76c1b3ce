"""The OpenAPI schema is the contract: a schema-based fuzzer (schemathesis, every check) against a loopback
server of two stages with a ratings database, bounded in examples and time, finds no failure; and the
schema says by hand what the served data takes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, start_server

pytest.importorskip("fastapi", reason="the serve extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from recsys.serve import create_app  # noqa: E402

TOKEN = "fuzz-t0ken-0123456789"


def test_the_schema_holds_the_constraints_the_server_enforces(u1_models, tmp_path):
    retrieval, rating = u1_models
    app = create_app(retrieval, rating, 0, ratings_db=tmp_path / "r.db", write_token=TOKEN)
    with TestClient(app) as c:
        doc = c.get("/openapi.json").json()
        schemas = doc["components"]["schemas"]
        stars = schemas["Rating"]["properties"]["rating"]
        assert {"minimum": 1, "maximum": 5, "multipleOf": 1}.items() <= stars.items()
        assert schemas["NewUser"]["required"] == ["gender", "age", "job"]
        assert schemas["NewUser"]["properties"]["job"] == {"type": "integer", "minimum": 0, "maximum": 20}
        known, new = schemas["Who"]["oneOf"]
        assert known["required"] == ["user_id"] and new["required"] == ["gender", "age", "job"]
        assert known["properties"]["gender"] == {"type": "null"} and new["properties"]["user_id"] == {"type": "null"}
        # each documented status is one the server answers, with the one-line body
        assert c.get("/api/movies/99999").status_code == 404
        assert "404" in doc["paths"]["/api/movies/{movie}"]["get"]["responses"]
        assert schemas["Error"]["required"] == ["error"]
        assert c.post("/api/recommend", json={}).status_code == 422  # neither form of the oneOf
        assert c.post("/api/recommend", json={"user_id": 1, "k": 2.0}).status_code == 200  # 2.0 is JSON's 2
        r = c.request("TRACE", "/api/users/1")
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, OPTIONS"
        assert doc["paths"]["/api/ratings"]["post"]["security"] == [{"bearer": []}]


def test_a_schema_fuzzer_finds_no_failure(u1_models, tmp_path):
    """Every schemathesis check, both valid and invalid data, for at most 30 s against 127.0.0.1, but
    `use_after_free`: `DELETE /api/users/{id}/ratings` empties a user's stored ratings, and the user and the
    (empty) list are still there to read, as tests/test_feedback.py holds."""
    st = Path(sys.executable).with_name("st")  # schemathesis's command, beside this Python
    if not st.is_file():
        pytest.skip("schemathesis is not installed (the dev extra brings it)")
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    retrieval, rating = u1_models
    port = free_port()
    args = ["--model-dir", str(retrieval), "--rerank", str(rating), "--ratings-db", str(tmp_path / "r.db"),
            "--write-token-file", str(token), "--reload-interval", "0"]  # fmt: skip
    server = start_server(*args, port=port)
    try:
        cmd = [str(st), "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", "all", "--exclude-checks",
                   "use_after_free", "--max-examples", "25",
               "--max-time", "30", "--seed", "1", "--workers", "1", "--generation-database", "none", "--no-color",
               "--header", f"Authorization: Bearer {TOKEN}", "--request-timeout", "10"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    finally:
        server.terminate()
        server.wait(30)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", out)
    assert cases and int(cases[1]) >= 500 and cases[1] == cases[2], out[-3000:]
    assert "Tested: 14" in out, out[-3000:]  # every operation of the schema
