"""The HTTP service: every endpoint against the infer CLI, bad requests, a model swapped while serving,
and the web page in a real browser."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, assert_one_line_error, run_cli

pytest.importorskip("fastapi", reason="the serve extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from recsys.serve import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(u1_models):
    retrieval, rating = u1_models
    app = create_app(retrieval, rating, reload_interval=0)
    with TestClient(app) as c:
        yield c


def _cli_json(*args: str) -> dict:
    proc = run_cli("recsys.infer", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_every_endpoint_answers_as_the_cli(client, u1_models):
    retrieval, rating = u1_models
    pair = ["--model-dir", str(retrieval), "--rerank", str(rating)]
    assert client.get("/api/users/1/recommendations?k=10").json() == _cli_json(*pair, "--user", "1", "--top-k", "10")
    new = client.get("/api/recommendations", params={"gender": "F", "age": 25, "job": 4, "k": 5}).json()
    assert new == _cli_json(*pair, "--gender", "F", "--age", "25", "--job", "4", "--top-k", "5")
    assert client.post("/api/recommend", json={"user_id": 1, "k": 10}).json()["recommendations"] == (
        client.get("/api/users/1/recommendations").json()["recommendations"])  # fmt: skip
    similar = client.get("/api/movies/50/similar?k=7").json()
    assert similar == _cli_json("--model-dir", str(retrieval), "--similar-to", "50", "--top-k", "7")
    predicted = client.get("/api/predict?user=1&movie=20").json()
    assert predicted == _cli_json("--model-dir", str(rating), "--user", "1", "--movie", "20")
    assert predicted["actual_rating"] == 4  # u1.base: user 1 gave movie 20 four stars
    history = client.get("/api/users/1").json()
    assert history["gender"] == "M" and history["age"] == 18 and history["job"] == "technician"
    assert len(history["ratings"]) == 272 and sum(r["split"] == "test" for r in history["ratings"]) == 137
    assert [r["stars"] for r in history["ratings"]] == sorted((r["stars"] for r in history["ratings"]), reverse=True)
    movie = client.get("/api/movies/1").json()
    assert movie == {"movie_id": 1, "title": "Toy Story", "genres": ["Animation", "Children's", "Comedy"],
                     "ratings": 452, "mean_stars": pytest.approx(3.8783, abs=1e-4)}  # fmt: skip
    health = client.get("/api/health").json()
    assert health["model"]["objective"] == "retrieval" and health["rerank"]["objective"] == "rating"
    assert health["model"]["dataset"] == "ml-100k" and health["model"]["split"] == "u1" and health["model"]["paddle"]
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/api/health", "/api/predict"}
    page = client.get("/")
    assert page.status_code == 200 and "<title>recsys" in page.text and "http" not in page.text.split("<script>")[1]


@pytest.mark.parametrize(
    "method, url, body, status, needle",
    [
        ("get", "/api/users/99999/recommendations", None, 404, "unknown user id 99999"),
        ("get", "/api/movies/99999/similar", None, 404, "unknown movie id 99999"),
        ("get", "/api/movies/99999", None, 404, "unknown movie id 99999"),
        ("get", "/api/predict?user=1&movie=99999", None, 404, "unknown movie id 99999"),
        ("get", "/api/users/1/recommendations?k=0", None, 422, "k: Input should be greater than or equal to 1"),
        ("get", "/api/users/1/recommendations?k=abc", None, 422, "k: Input should be a valid integer"),
        ("get", "/api/users/abc/recommendations", None, 422, "user: Input should be a valid integer"),
        ("get", "/api/recommendations?gender=F&age=26&job=4", None, 422, "age must be one of 1, 18, 25"),
        ("get", "/api/recommendations?gender=F&age=25&job=99", None, 422, "must be 0..20"),
        ("get", "/api/recommendations?gender=X&age=25&job=4", None, 422, "gender: String should match"),
        ("get", "/api/recommendations?gender=F", None, 422, "age: Field required"),
        ("post", "/api/recommend", b"{not json", 422, "malformed JSON body"),
        ("post", "/api/recommend", b'{"user_id": 1, "gender": "F"}', 422, "not both"),
        ("post", "/api/recommend", b'{"k": 3}', 422, "give user_id, or all of gender, age and job"),
        ("get", "/api/nothing", None, 404, "Not Found"),
    ],
)
def test_bad_requests_get_a_4xx_and_one_line(client, method, url, body, status, needle):
    headers = {"content-type": "application/json"}
    r = client.get(url) if method == "get" else client.post(url, content=body, headers=headers)
    assert r.status_code == status, r.text
    doc = r.json()
    assert list(doc) == ["error"] and needle in doc["error"] and "\n" not in doc["error"]


def test_serve_cli_bad_inputs(tmp_path, u1_models):
    assert_one_line_error(run_cli("recsys.serve", "--model-dir", str(tmp_path / "none")), "no trained model")
    retrieval, _ = u1_models
    proc = run_cli("recsys.serve", "--model-dir", str(retrieval), "--rerank", str(retrieval))
    assert_one_line_error(proc, "--rerank needs a rating or ranking model")
    assert_one_line_error(run_cli("recsys.serve", "--port", "0"), "--port must be 1..65535")


def test_a_model_swapped_by_training_is_picked_up_and_no_request_fails(small_dir, tmp_path):
    model = tmp_path / "served"
    flags = ["--data-dir", str(small_dir), "--model-dir", str(model), "--batch-size", "4096"]
    assert run_cli("recsys.train", *flags, "--epochs", "1").returncode == 0
    app = create_app(model, reload_interval=0.2)
    failures, answers = [], set()
    with TestClient(app) as c:
        first = c.get("/api/health").json()["model"]["settings"]["epochs"]
        trainer = subprocess.Popen([sys.executable, "-m", "recsys.train", *flags, "--epochs", "6", "--seed", "1"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        stop = time.time() + 120
        while time.time() < stop:
            r = c.get("/api/users/3/recommendations?k=5")
            if r.status_code != 200:
                failures.append(r.text)
            answers.add(json.dumps(r.json()["recommendations"]))
            if trainer.poll() is not None and len(answers) > 1:
                time.sleep(0.5)
                break
        trainer.wait()
        app.state.holder.check()
        last = c.get("/api/health").json()["model"]["settings"]
        app.state.holder.close()
    assert not failures and first == 1 and last["epochs"] == 6 and last["seed"] == 1
    assert len(answers) > 1  # the answers switched to the newer saves


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name) and shutil.which("chromedriver"):
            return shutil.which(name)
    return None


def test_the_page_in_a_real_browser(u1_models, tmp_path):
    binary = _browser()
    if binary is None:
        pytest.skip("no Chromium and chromedriver here (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    retrieval, rating = u1_models
    port = _free_port()
    cmd = ["recsys.serve", "--model-dir", str(retrieval), "--rerank", str(rating), "--port", str(port)]
    server = subprocess.Popen([sys.executable, "-m", *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = None
    try:
        server.stdout.readline()  # "serving ..." once the models are loaded
        url = f"http://127.0.0.1:{port}/"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)
        driver.get(url)
        WebDriverWait(driver, 30).until(lambda d: "ml-100k" in d.find_element(By.ID, "model").text)
        box = driver.find_element(By.ID, "user")
        box.clear()
        box.send_keys("1")
        driver.find_element(By.ID, "show").click()
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#recs li")) == 10)
        titles = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#recs li .movie")]
        want = _cli_json("--model-dir", str(retrieval), "--rerank", str(rating), "--user", "1", "--top-k", "10")
        assert titles == [r["title"] for r in want["recommendations"]]
        assert "retrieval #" in driver.find_element(By.ID, "recs").text
        driver.find_elements(By.CSS_SELECTOR, "#recs li .movie")[0].click()
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#similar li")) == 10)
        artefacts = Path(os.environ.get("RECSYS_ARTIFACTS", ROOT / "test-artifacts"))
        artefacts.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(artefacts / "serve-page.png"))
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
