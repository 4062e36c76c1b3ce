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
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, assert_one_line_error, free_port, infer_json, run_cli

pytest.importorskip("fastapi", reason="the serve extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from recsys.serve import create_app  # noqa: E402
from recsys.topn import reasons  # noqa: E402


@pytest.fixture(scope="module")
def client(u1_models):
    retrieval, rating = u1_models
    app = create_app(retrieval, rating, reload_interval=0)
    with TestClient(app) as c:
        yield c


def test_every_endpoint_answers_as_the_cli(client, u1_models):
    retrieval, rating = u1_models
    pair = ["--model-dir", str(retrieval), "--rerank", str(rating)]
    assert client.get("/api/users/1/recommendations?k=10").json() == infer_json(*pair, "--user", "1", "--top-k", "10")
    new = client.get("/api/recommendations", params={"gender": "F", "age": 25, "job": 4, "k": 5}).json()
    assert new == infer_json(*pair, "--gender", "F", "--age", "25", "--job", "4", "--top-k", "5")
    assert client.post("/api/recommend", json={"user_id": 1, "k": 10}).json()["recommendations"] == (
        client.get("/api/users/1/recommendations").json()["recommendations"])  # fmt: skip
    similar = client.get("/api/movies/50/similar?k=7").json()
    assert similar == infer_json("--model-dir", str(retrieval), "--similar-to", "50", "--top-k", "7")
    predicted = client.get("/api/predict?user=1&movie=20").json()
    assert predicted == infer_json("--model-dir", str(rating), "--user", "1", "--movie", "20")
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
    docs = client.get("/docs").text
    assert "swagger-ui-bundle.js" in docs and "cdn" not in docs and "https://" not in docs
    assert client.get("/redoc").status_code == 404  # ReDoc would fetch its logo off the machine
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
        ("get", "/api/users/abc/recommendations", None, 422, "user: an id is whole digits"),
        ("get", "/api/recommendations?gender=F&age=0&job=4", None, 422, "age must be a number of years, 1..120"),
        ("get", "/api/recommendations?gender=F&age=25&job=99", None, 422, "job must be 0..20 for ml-100k, got 99"),
        ("get", "/api/recommendations?gender=X&age=25&job=4", None, 422, "gender: String should match"),
        ("get", "/api/recommendations?gender=F", None, 422, "age: Field required"),
        ("post", "/api/recommend", b"{not json", 422, "malformed JSON body"),
        ("post", "/api/recommend", b'{"user_id": 1, "gender": "F"}', 422, "not both"),
        ("post", "/api/recommend", b'{"k": 3}', 422, "give user_id, or all of gender, age and job"),
        ("post", "/api/recommend", b'{"user_id": true}', 422, "user_id: Input should be a valid integer"),
        ("post", "/api/recommend", b'{"user_id": 1, "k": 2.5}', 422, "k: Input should be a valid integer"),
        ("post", "/api/recommend", b'{"gender": "F", "age": 25, "job": false}', 422, "job: Input should be a valid"),
        ("get", "/api/nothing", None, 404, "Not Found"),
    ],
)
def test_bad_requests_get_a_4xx_and_one_line(client, method, url, body, status, needle):
    headers = {"content-type": "application/json"}
    r = client.get(url) if method == "get" else client.post(url, content=body, headers=headers)
    assert r.status_code == status, r.text
    doc = r.json()
    assert list(doc) == ["error"] and needle in doc["error"] and "\n" not in doc["error"]
    assert "--" not in doc["error"]  # the API's own parameters, never a CLI flag


def test_a_post_without_a_json_content_type_is_told_so(client):
    for headers, got in (({}, "none"), ({"content-type": "text/plain"}, "text/plain")):
        r = client.post("/api/recommend", content=b'{"user_id": 1}', headers=headers)
        want = f"send a JSON body with the header content-type: application/json (got {got})"
        assert r.status_code == 415 and r.json() == {"error": want}, r.text


def test_ages_in_years_and_the_two_stage_rule_for_large_k(client, u1_models):
    new = client.get("/api/recommendations", params={"gender": "F", "age": 30, "job": 4, "k": 5}).json()
    bucket = client.get("/api/recommendations", params={"gender": "F", "age": 25, "job": 4, "k": 5}).json()
    assert new["recommendations"] == bucket["recommendations"]
    assert new["user"] == {"gender": "F", "age": 30, "age_group": "25–34", "job": 4}
    assert client.get("/api/users/1").json()["age_group"] == "18–24"  # ml-100k user 1 is 24
    meta = client.get("/api/meta").json()
    assert meta["age_groups"] == ["Under 18", "18–24", "25–34", "35–44", "45–49", "50–55", "56+"]
    # k above --candidates (100): the server and the CLI both rerank the retrieval top k
    retrieval, rating = u1_models
    pair = ["--model-dir", str(retrieval), "--rerank", str(rating), "--user", "1"]
    wide = client.get("/api/users/1/recommendations?k=200").json()
    assert wide == infer_json(*pair, "--top-k", "200") and wide["candidates"] == 200
    assert sorted(r["retrieval_rank"] for r in wide["recommendations"]) == list(range(1, 201))
    narrow = client.get("/api/users/1/recommendations?k=5").json()
    assert narrow == infer_json(*pair, "--top-k", "5") and narrow["candidates"] == 100


def test_the_server_logs_one_line_per_request_at_the_level_given(u1_models):
    retrieval, _ = u1_models
    for level, lines in (("info", 2), ("warning", 0)):
        port = free_port()
        cmd = ["recsys.serve", "--model-dir", str(retrieval), "--port", str(port), "--log-level", level]
        server = subprocess.Popen([sys.executable, "-m", *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)  # fmt: skip
        try:
            assert server.stdout.readline().startswith("serving ")
            _wait_for(port)
            for path in ("/api/users/1/recommendations?k=3", "/api/users/99999"):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30).read()
                except urllib.error.HTTPError as e:
                    assert e.code == 404
        finally:
            server.terminate()
            out = server.communicate(timeout=30)[0]
        logged = [ln for ln in out.splitlines() if '"GET /api/' in ln]
        assert len(logged) == lines, out
        if lines:
            assert '/api/users/1/recommendations?k=3 HTTP/1.1" 200' in logged[0] and '" 404' in logged[1]


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


def _wait_for(port: int) -> None:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name) and shutil.which("chromedriver"):
            return shutil.which(name)
    return None


def test_the_page_and_the_docs_in_a_real_browser(u1_models, monkeypatch):
    """The page opens with user 1's lists, keeps its state in the URL (back, forward, reload), clears its
    lists on an empty user id; the page and /docs load nothing from off the machine (Chromium here cannot
    resolve any other host)."""
    binary = _browser()
    if binary is None:
        pytest.skip("no Chromium and chromedriver here (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    monkeypatch.setenv("SE_AVOID_STATS", "true")  # Selenium Manager never runs (the driver's path is given)
    monkeypatch.setenv("SE_OFFLINE", "true")
    retrieval, rating = u1_models
    pair = ["--model-dir", str(retrieval), "--rerank", str(rating)]
    port = free_port()
    cmd = ["recsys.serve", *pair, "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen([sys.executable, "-m", *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-default-apps", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):  # fmt: skip
        options.add_argument(flag)
    driver = None
    base = f"http://127.0.0.1:{port}/"

    def wait(condition, seconds: float = 30):
        WebDriverWait(driver, seconds).until(lambda d: condition())

    def titles(where: str = "recs") -> list[str]:
        return texts(f"#{where} li .movie")

    def heading() -> str:
        return driver.find_element(By.ID, "history-title").text

    def want(*who: str) -> list[str]:
        return [r["title"] for r in infer_json(*pair, *who, "--top-k", "10")["recommendations"]]

    def texts(selector: str) -> list[str]:  # read in one script: the list may be redrawn between two lookups
        return driver.execute_script(f"return [...document.querySelectorAll('{selector}')].map((e) => e.textContent)")

    def served(query: str) -> dict:
        with urllib.request.urlopen(f"{base}api/users/1/recommendations?{query}", timeout=30) as r:
            return json.load(r)

    def all_local() -> list[str]:
        names = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
        return [n for n in names if not n.startswith(base)]

    try:
        server.stdout.readline()  # "serving ..." once the models are loaded
        _wait_for(port)
        driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
        driver.get(base)  # no click: the lists of the pre-filled user 1
        wait(lambda: len(titles()) == 10)
        assert titles() == want("--user", "1") and "retrieval #" in driver.find_element(By.ID, "recs").text
        assert heading() == "Rated by user 1 (M, 18–24, technician): 272"
        # reasons under each movie, as infer --explain gives them
        explained = infer_json(*pair, "--user", "1", "--top-k", "10", "--explain")["recommendations"]
        assert texts("#recs li .because") == [
            "because you rated " + ", ".join(b["title"] for b in r["because"]) for r in explained
        ]
        # the rated movies: the latest five, then all of them; the (test) marks of an evaluation split explained
        assert len(texts("#history li")) == 5 and driver.find_element(By.ID, "show-all").text == "show all 272"
        driver.find_element(By.ID, "show-all").click()
        assert len(texts("#history li")) == 272 and driver.find_element(By.ID, "show-all").text == "show fewer"
        assert any(t.endswith("(test)") for t in texts("#history li .stars"))
        assert driver.find_element(By.ID, "test-note").is_displayed()
        driver.find_element(By.ID, "show-all").click()
        assert len(texts("#history li")) == 5
        # long titles and right-to-left text keep to their box; a favicon from the page itself
        title = driver.find_element(By.CSS_SELECTOR, "#recs li .movie")
        assert title.get_attribute("dir") == "auto"
        assert title.value_of_css_property("overflow-wrap") == "anywhere"
        assert title.value_of_css_property("unicode-bidi") == "plaintext"
        icon = driver.execute_script("return document.querySelector('link[rel=icon]').href")
        assert icon.startswith("data:image/svg+xml,")
        # filters: into the URL, and the list is the server's answer to them
        driver.find_element(By.CSS_SELECTOR, "#filters summary").click()
        Select(driver.find_element(By.ID, "genres")).select_by_visible_text("Comedy")
        driver.find_element(By.ID, "year-from").send_keys("1990")
        driver.find_element(By.ID, "year-to").send_keys("1999")
        driver.find_element(By.ID, "apply-filters").click()
        wait(lambda: "genres=Comedy" in driver.current_url)
        assert driver.current_url == base + "?user=1&genres=Comedy&years=1990-1999"
        filtered = served("k=10&genres=Comedy&years=1990-1999")
        wait(lambda: titles() == [r["title"] for r in filtered["recommendations"]])
        assert driver.find_element(By.ID, "filter-summary").text == "(2 set)"
        driver.find_element(By.ID, "year-to").clear()
        driver.find_element(By.ID, "apply-filters").click()
        wait(lambda: driver.find_element(By.ID, "error").text.startswith("give both years"))
        unfiltered = want("--user", "1")
        driver.find_element(By.ID, "clear-filters").click()
        wait(lambda: driver.current_url == base + "?user=1" and titles() == unfiltered)
        ages = [o.text for o in Select(driver.find_element(By.ID, "age")).options]
        assert ages == ["Under 18", "18–24", "25–34", "35–44", "45–49", "50–55", "56+"]
        driver.find_elements(By.CSS_SELECTOR, "#recs li .movie")[0].click()
        wait(lambda: len(titles("similar")) == 10)
        assert driver.current_url.endswith("similar=" + driver.find_elements(By.CSS_SELECTOR, "#recs li .movie")[0]
                                           .get_attribute("data-movie-id"))  # fmt: skip
        artefacts = Path(os.environ.get("RECSYS_ARTIFACTS", ROOT / "test-artifacts"))
        artefacts.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(artefacts / "serve-page.png"))
        box = driver.find_element(By.ID, "user")
        box.clear()
        box.send_keys("2")
        driver.find_element(By.ID, "show").click()
        wait(lambda: heading().startswith("Rated by user 2 "))
        assert driver.current_url == base + "?user=2" and titles() == want("--user", "2")
        assert titles("similar") == []  # the new state has no similar list
        driver.back()
        wait(lambda: heading().startswith("Rated by user 1 ") and len(titles("similar")) == 10)
        assert titles() == want("--user", "1")
        driver.forward()
        wait(lambda: heading().startswith("Rated by user 2 "))
        driver.refresh()
        wait(lambda: heading().startswith("Rated by user 2 ") and len(titles()) == 10)
        assert titles() == want("--user", "2")
        box = driver.find_element(By.ID, "user")
        box.clear()
        driver.find_element(By.ID, "show").click()
        wait(lambda: driver.find_element(By.ID, "error").text == "enter a user id")
        assert titles() == [] and driver.find_elements(By.CSS_SELECTOR, "#history li") == []
        Select(driver.find_element(By.ID, "gender")).select_by_visible_text("F")
        Select(driver.find_element(By.ID, "age")).select_by_visible_text("25–34")
        Select(driver.find_element(By.ID, "job")).select_by_value("4")
        driver.find_element(By.ID, "show-new").click()
        wait(lambda: heading() == "A new user has no ratings" and len(titles()) == 10)
        assert driver.current_url == base + "?gender=F&age=25&job=4"
        assert titles() == want("--gender", "F", "--age", "25", "--job", "4")
        assert driver.find_element(By.ID, "user").get_attribute("value") == ""  # no user id of before
        assert set(texts("#recs li .because")) == {reasons.NO_HISTORY}
        assert all_local() == []
        driver.get(base + "docs")
        wait(lambda: "recsys" in driver.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text)
        wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, ".opblock")) >= 8)
        assert all_local() == []
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)


def test_rating_a_movie_on_the_page_changes_its_list(u1_models, monkeypatch, tmp_path):
    """With a ratings database and a token, the page's stars rate a movie of the list (the token typed in once),
    the list moves on at once, and the rating is stored."""
    binary = _browser()
    if binary is None:
        pytest.skip("no Chromium and chromedriver here (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("SE_AVOID_STATS", "true")
    monkeypatch.setenv("SE_OFFLINE", "true")
    port, db = free_port(), tmp_path / "ratings.db"
    cmd = ["recsys.serve", "--model-dir", str(u1_models[0]), "--port", str(port), "--log-level", "warning",
           "--ratings-db", str(db)]  # fmt: skip
    server = subprocess.Popen([sys.executable, "-m", *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**os.environ, "RECSYS_WRITE_TOKEN": "page-token-0123456789"})  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
                 "--disable-background-networking",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):  # fmt: skip
        options.add_argument(flag)
    driver = None

    def movie_ids() -> list[str]:  # read in one script: the list may be redrawn between two element lookups
        script = "return [...document.querySelectorAll('#recs li .movie')].map((e) => e.dataset.movieId)"
        return driver.execute_script(script)

    try:
        server.stdout.readline()
        _wait_for(port)
        driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
        driver.get(f"http://127.0.0.1:{port}/?user=1")
        WebDriverWait(driver, 30).until(lambda d: len(movie_ids()) == 10)
        before = movie_ids()
        driver.find_element(By.ID, "token").send_keys("page-token-0123456789")
        driver.find_elements(By.CSS_SELECTOR, "#recs li .rate button")[4].click()  # five stars for the first
        WebDriverWait(driver, 30).until(lambda d: movie_ids() and movie_ids()[0] != before[0])
        assert before[0] not in movie_ids() and movie_ids()[:9] != before[:9]
        assert "(rated here)" in driver.find_element(By.ID, "history").text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/users/1/ratings", timeout=10) as r:
            assert [(x["movie_id"], x["rating"]) for x in json.load(r)["ratings"]] == [(int(before[0]), 5.0)]
        driver.find_element(By.ID, "token").clear()
        driver.find_element(By.ID, "token").send_keys("wrong")
        driver.find_elements(By.CSS_SELECTOR, "#recs li .rate button")[0].click()
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "error").text == "wrong write token")
        # the stored rating's ✕ deletes it: the list is the one before it again
        driver.find_element(By.ID, "token").clear()
        driver.find_element(By.ID, "token").send_keys("page-token-0123456789")
        driver.find_element(By.CSS_SELECTOR, "#history li .delete").click()
        WebDriverWait(driver, 30).until(lambda d: movie_ids() == before)
        assert "(rated here)" not in driver.find_element(By.ID, "history").text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/users/1/ratings", timeout=10) as r:
            assert json.load(r)["ratings"] == []
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.communicate(timeout=30)
