"""Own CSV data end to end: sparse user and movie ids, half stars and users.csv features through train, infer and
the HTTP service. The CSV folders are written here; expected values are worked out by hand from them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

pytest.importorskip("fastapi", reason="the serve extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from recsys.serve import create_app  # noqa: E402

# (user, movie, stars): user 900 rated but is absent from users.csv
RATINGS = [
    (7, 5, 4), (7, 99999, 3.5), (7, 300, 2), (7, 12, 5),
    (1000000, 5, 5), (1000000, 99999, 3.5), (1000000, 12, 1.5),
    (42, 300, 4.5), (42, 12, 3), (42, 777, 0.5),
    (3, 5, 2.5), (3, 777, 4), (3, 300, 3), (3, 1234567, 4),
    (15, 99999, 5), (15, 777, 4), (15, 12, 2), (15, 1234567, 3.5),
    (900, 5, 1), (900, 300, 4), (900, 777, 3.5), (900, 1234567, 2),
]  # fmt: skip
MOVIES = (
    "movieId,title,genres\n"
    "5,Alpha (1999),Comedy|Drama\n"
    "12,Beta (2001),Action\n"
    '300,"Gamma, The (1995)",Drama\n'
    "777,Delta (2010),(no genres listed)\n"
    "99999,Epsilon (2020),Comedy|Action\n"
    "1234567,Zeta (2021),Drama\n"
)
USERS = "userId,country,Gender\n7,DE,F\n1000000,FR,M\n42,DE,\n3,US,F\n15,FR,M\n"
CATALOGUE = {5, 12, 300, 777, 99999, 1234567}
USER_IDS = [3, 7, 15, 42, 900, 1000000]
GENRES = ["Action", "Comedy", "Drama"]  # the catalogue's, sorted ("(no genres listed)" is none)
FEATURES = {"country": ["", "DE", "FR", "US"], "gender": ["", "F", "M"]}  # "" (unknown) first, then sorted


def _write(folder: Path, users: bool) -> Path:
    folder.mkdir(parents=True)
    lines = [f"{u},{m},{s},{100 + i}" for i, (u, m, s) in enumerate(RATINGS)]
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(lines) + "\n")
    (folder / "movies.csv").write_text(MOVIES)
    if users:
        (folder / "users.csv").write_text(USERS)
    return folder


def _train(data: Path, model: Path, *flags: str) -> Path:
    proc = run_cli("recsys.train", "--data-dir", str(data), "--model-dir", str(model), "--epochs", "1",
                   "--batch-size", "8", *flags)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return model


@pytest.fixture(scope="module")
def own_model(tmp_path_factory) -> Path:
    """A rating model on the `csv` layout with users.csv (features country and gender)."""
    out = tmp_path_factory.mktemp("own")
    return _train(_write(out / "data", users=True), out / "model", "--dataset", "csv")


@pytest.fixture(scope="module")
def latest_model(tmp_path_factory) -> Path:
    """A retrieval model (it reads histories) on the ml-latest-small layout: no user features."""
    out = tmp_path_factory.mktemp("latest")
    _write(out / "data" / "ml-latest-small", users=False)
    return _train(out / "data", out / "model", "--dataset", "ml-latest-small", "--objective", "retrieval")


def _infer(model: Path, *args: str) -> str:
    proc = run_cli("recsys.infer", "--model-dir", str(model), *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _json(model: Path, *args: str) -> dict:
    return json.loads(_infer(model, *args, "--json"))


def _client(model: Path) -> TestClient:
    return TestClient(create_app(model, reload_interval=0))


def _one_line_4xx(r, status: int, needle: str) -> None:
    assert r.status_code == status, r.text
    doc = r.json()
    assert list(doc) == ["error"] and needle in doc["error"] and "\n" not in doc["error"], doc
    assert "--" not in doc["error"]


def _ids(doc: dict, key: str = "recommendations") -> list[int]:
    return [r["movie_id"] for r in doc[key]]


def _id_column(lines: list[str]) -> list[int]:
    """The movie ids of a text list, checked to be numbered 1.. and right-aligned in a column 7 wide (the widest
    id, 1234567) followed by two blanks."""
    assert [line[:5] for line in lines] == [f"{i:3d}. " for i in range(1, len(lines) + 1)], lines
    assert all(line[12:14] == "  " and line[5:12].strip().isdigit() for line in lines), lines
    return [int(line[5:12]) for line in lines]


def test_own_ids_and_half_stars_from_train_through_infer_to_the_service(own_model):
    text = _infer(own_model, "--user", "1000000", "--movie", "99999")
    assert 'Actual Rating of user id 1000000 on movie "Epsilon" is 3.5.' in text
    predicted = _json(own_model, "--user", "1000000", "--movie", "99999")
    assert predicted["user_id"] == 1000000 and predicted["movie_id"] == 99999 and predicted["actual_rating"] == 3.5
    assert predicted["stars"] == pytest.approx((predicted["score"] + 5) / 2)

    top = _json(own_model, "--user", "1000000", "--top-k", "10")
    similar = _json(own_model, "--similar-to", "99999", "--top-k", "10")
    assert set(_ids(similar, "similar")) == CATALOGUE - {99999} and similar["movie_id"] == 99999
    with _client(own_model) as c:
        history = c.get("/api/users/1000000").json()
        assert history["features"] == {"country": "FR", "gender": "M"}
        assert [(r["movie_id"], r["stars"]) for r in history["ratings"]] == [(5, 5), (99999, 3.5), (12, 1.5)]
        trained = {r["movie_id"] for r in history["ratings"] if r["split"] == "train"}
        assert set(_ids(top)) == CATALOGUE - trained and 1234567 in _ids(top)  # every movie not rated in training
        assert c.get("/api/users/1000000/recommendations?k=10").json() == top
        assert c.post("/api/recommend", json={"user_id": 1000000, "k": 10}).json() == top
        assert c.get("/api/movies/99999/similar?k=10").json() == similar
        assert c.get("/api/predict?user=1000000&movie=99999").json() == predicted
        # user 900 rated three movies but is not in users.csv: every feature unknown
        assert c.get("/api/users/900").json()["features"] == {"country": "", "gender": ""}
        assert c.get("/api/movies/99999").json() == {
            "movie_id": 99999,
            "title": "Epsilon",
            "genres": ["Comedy", "Action"],
            "ratings": 3,
            "mean_stars": 4.0,
        }  # fmt: skip  (3.5, 3.5, 5)
        assert c.get("/api/meta").json() == {"users": USER_IDS, "features": FEATURES, "genres": GENRES}
        _one_line_4xx(c.get("/api/users/8"), 404, "unknown user id 8; csv has no such user (6 users, ids 3..1000000)")
        _one_line_4xx(c.get("/api/movies/4"), 404, "unknown movie id 4")
        _one_line_4xx(c.get("/api/predict?user=7&movie=13"), 404, "unknown movie id 13")

    # the text form: the same ids in the same order, in a column as wide as the widest id (1234567: 7 digits)
    lines = _infer(own_model, "--user", "1000000", "--top-k", "10").splitlines()
    assert lines[0].startswith(f"Top {len(top['recommendations'])} movies for user id 1000000")
    assert _id_column(lines[1:]) == _ids(top)
    lines = _infer(own_model, "--similar-to", "99999", "--top-k", "10").splitlines()
    assert _id_column(lines[1:]) == _ids(similar, "similar")


def test_users_csv_columns_become_the_user_tower_and_a_new_users_features(own_model):
    with np.load(own_model / "params.npz") as params:
        embeddings = {k: params[k].shape[0] for k in params.files if re.match(r"user_tower\.\w+_emb\.weight$", k)}
    # one embedding per users.csv column, a row per value plus the unknown "" (the user id: 6 users + unknown)
    assert embeddings == {"user_tower.user_emb.weight": 7, "user_tower.country_emb.weight": 4,
                          "user_tower.gender_emb.weight": 3}  # fmt: skip
    with np.load(own_model / "arrays.npz") as arrays:
        cold, movies = arrays["cold_vectors"], arrays["movie_vectors"]
    assert cold.shape[:2] == (4, 3)  # every (country, gender) pair
    de, fr = cold[1, 0], cold[2, 0]  # country DE (index 1) / FR (2), gender unknown (0)
    assert np.abs(de - fr).max() > 1e-4

    docs = {c: _json(own_model, "--feature", f"country={c}", "--top-k", "10") for c in ("DE", "FR")}
    # movie rows follow the own ids ascending from row 1: 5, 12, 300, 777, 99999, 1234567
    row = {m: i + 1 for i, m in enumerate(sorted(CATALOGUE))}
    for country, vector in (("DE", de), ("FR", fr)):
        doc = docs[country]
        assert doc["user"] == {"country": country} and set(_ids(doc)) == CATALOGUE
        for r in doc["recommendations"]:
            assert r["score"] == pytest.approx(5 * float(movies[row[r["movie_id"]]] @ vector), abs=1e-5)
    assert [r["score"] for r in docs["DE"]["recommendations"]] != [r["score"] for r in docs["FR"]["recommendations"]]
    one = _json(own_model, "--feature", "country=DE", "--movie", "99999")
    assert one["user"] == {"country": "DE"} and "actual_rating" not in one
    assert one["score"] == pytest.approx(5 * float(movies[row[99999]] @ de), abs=1e-4)  # the inference program
    text = _infer(own_model, "--feature", "country=DE", "--feature", "gender=F", "--top-k", "3")
    assert text.startswith("Top 3 movies for a new user (country=DE, gender=F) (score in 2*stars-5):")

    with _client(own_model) as c:
        assert c.post("/api/recommend", json={"features": {"country": "DE"}, "k": 10}).json() == docs["DE"]
        bad = {"features": {"region": "DE"}}
        _one_line_4xx(c.post("/api/recommend", json=bad), 422, "csv has no user feature 'region'")
        bad = {"features": {"country": "XX"}}
        _one_line_4xx(c.post("/api/recommend", json=bad), 422, "country 'XX' is not a value of csv's country")
        _one_line_4xx(c.post("/api/recommend", json={"gender": "F", "age": 25, "job": 1}), 422,
                      'not the chapter\'s gender, age and job: POST /api/recommend with {"features"')  # fmt: skip
        _one_line_4xx(c.get("/api/recommendations?gender=F&age=25&job=1"), 422, "csv users have the features")
        _one_line_4xx(c.post("/api/recommend", json={"features": {"country": "DE"}, "rated": [[5, 4]]}), 422,
                      "has no history input")  # fmt: skip

    for args, needle in (
        (["--feature", "region=DE"], "csv has no user feature 'region'; its features: country, gender"),
        (["--feature", "country=XX"], "country 'XX' is not a value of csv's country: DE, FR, US"),
        (["--feature", "country"], "--feature takes NAME=VALUE"),
        (["--gender", "F", "--age", "25", "--job", "1"], "csv users have the features country, gender"),
        (["--feature", "country=DE", "--rated", "5:4"], "has no history input"),
    ):
        proc = run_cli("recsys.infer", "--model-dir", str(own_model), *args, "--top-k", "3")
        assert_one_line_error(proc, needle)


def test_ml_latest_layout_a_new_user_known_only_by_rated_movies(latest_model):
    doc = _json(latest_model, "--rated", "5:3.5,12:4", "--top-k", "10")
    assert doc["user"] == {} and doc["rated"] == [[5, 3.5], [12, 4]] and doc["stages"] == ["retrieval"]
    assert set(_ids(doc)) == CATALOGUE - {5, 12}  # what they rated is not recommended back
    text = _infer(latest_model, "--rated", "5:3.5,12:4", "--top-k", "10")
    assert text.startswith("Top 4 movies for a new user (no features) (retrieval model, by cosine + item-item score")
    assert _id_column(text.splitlines()[1:]) == _ids(doc)
    known = _json(latest_model, "--user", "42", "--top-k", "10")
    with _client(latest_model) as c:
        assert c.post("/api/recommend", json={"rated": [[5, 3.5], [12, 4]], "k": 10}).json() == doc
        nothing = c.post("/api/recommend", json={"k": 10}).json()  # no features, no ratings: the unknown user
        assert set(_ids(nothing)) == CATALOGUE
        cosine = {r["movie_id"]: r["cosine"] for r in nothing["recommendations"]}
        assert any(abs(r["cosine"] - cosine[r["movie_id"]]) > 1e-4 for r in doc["recommendations"])
        history = c.get("/api/users/42").json()
        assert history["features"] == {}
        assert [(r["movie_id"], r["stars"]) for r in history["ratings"]] == [(300, 4.5), (12, 3), (777, 0.5)]
        trained = {r["movie_id"] for r in history["ratings"] if r["split"] == "train"}
        assert set(_ids(known)) == CATALOGUE - trained
        assert c.get("/api/users/42/recommendations?k=10").json() == known
        assert c.get("/api/movies/777").json()["mean_stars"] == pytest.approx((0.5 + 4 + 4 + 3.5) / 4)
        assert c.get("/api/meta").json() == {"users": USER_IDS, "features": {}, "genres": GENRES}
        _one_line_4xx(c.post("/api/recommend", json={"rated": [[5, 3.25]]}), 422,
                      "rating 3.25 of movie 5 is not one of the data's ratings 0.5, 1, ..., 5")  # fmt: skip
        _one_line_4xx(c.post("/api/recommend", json={"rated": [[4, 3]]}), 404, "rated movie 4 is unknown")
        _one_line_4xx(c.post("/api/recommend", json={"features": {"country": "DE"}}), 422,
                      "ml-latest-small has no user features (got 'country')")  # fmt: skip
        _one_line_4xx(c.get("/api/recommendations?gender=F&age=25&job=1"), 422,
                      'has no user features (no gender, age or job): a new user is known by the movies they rated: '
                      'POST /api/recommend with {"rated"')  # fmt: skip
        r = c.get("/api/predict?user=42&movie=5")  # how to start the server: names its command-line flag
        assert r.status_code == 404 and r.json()["error"].startswith("no rating model is served"), r.text

    for args, needle in (
        (
            ["--gender", "F", "--age", "25", "--job", "1"],
            "ml-latest-small has no user features (no gender, age or job)",
        ),
        (["--gender", "F", "--rated", "5:4"], "ml-latest-small has no user features"),
        (["--feature", "country=DE"], "ml-latest-small has no user features (got 'country')"),
        (["--rated", "5:3.25"], "rating 3.25 of movie 5 is not one of the data's ratings 0.5, 1, ..., 5"),
        (["--rated", "5:0"], "outside the data's scale 0.5..5"),
        (["--rated", "4:3"], "rated movie 4 is unknown"),
    ):
        proc = run_cli("recsys.infer", "--model-dir", str(latest_model), *args, "--top-k", "3")
        assert_one_line_error(proc, needle)
    assert_one_line_error(run_cli("recsys.infer", "--model-dir", str(latest_model), "--user", "42", "--movie", "5"),
                          "is a retrieval model")  # fmt: skip
