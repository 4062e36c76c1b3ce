"""MovieLens 100K (the real archive beside the repo): feature mapping, shipped splits, and evaluate vs baselines."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from conftest import ML100K_ZIP, assert_one_line_error, need_ml100k, run_cli

from recsys import movielens as ml

# the ml-1m README's age ranges, written out independently of the reader
AGE_RANGES = [(0, 17, 1), (18, 24, 18), (25, 34, 25), (35, 44, 35), (45, 49, 45), (50, 55, 50), (56, 200, 56)]


@pytest.fixture(scope="module")
def shared():
    return need_ml100k()


def _member(name: str) -> list[str]:
    with zipfile.ZipFile(ML100K_ZIP) as z:
        return z.read(f"ml-100k/{name}").decode("latin-1").splitlines()


def test_user_1_and_movie_1_map_to_chapter_features(shared):
    users, movies = ml.user_info(shared, dataset="ml-100k"), ml.movie_info(shared, dataset="ml-100k")
    assert users[1].value() == [1, 0, 1, 19]  # 24-year-old man -> age bucket 18; technician = job 19
    assert str(users[1]) == "<UserInfo id(1), gender(M), age(18), job(19)>"
    assert ml.read_meta("ml-100k", shared).jobs[19] == "technician"
    assert movies[1].title == "Toy Story " and movies[1].categories == ["Animation", "Children's", "Comedy"]
    words = {i: w for w, i in ml.get_movie_title_dict(shared, dataset="ml-100k").items()}
    cats = {i: c for c, i in ml.movie_categories(shared, dataset="ml-100k").items()}
    mid, cat_ids, title_ids = movies[1].value()
    assert mid == 1 and cat_ids == [3, 4, 5] and [cats[i] for i in cat_ids] == movies[1].categories
    assert [words[i] for i in title_ids] == ["toy", "story"]
    assert len(cats) == 19 and cats[0] == "unknown"


def test_every_age_lands_in_the_ml1m_bucket(shared):
    users = ml.user_info(shared, dataset="ml-100k")
    for line in _member("u.user"):
        uid, age = (int(x) for x in line.split("|")[:2])
        bucket = next(b for lo, hi, b in AGE_RANGES if lo <= age <= hi)
        assert ml.age_table[users[uid].age] == bucket, (uid, age)


@pytest.mark.parametrize(
    "split, n_train, n_test", [("u1", 80_000, 20_000), ("u5", 80_000, 20_000), ("ua", 90_570, 9_430)]
)
def test_shipped_split_sizes(shared, split, n_train, n_test):
    data = ml.load("ml-100k", shared, split)
    assert (int((~data.is_test).sum()), int(data.is_test.sum())) == (n_train, n_test)
    first_test = _member(f"{split}.test")[0].split("\t")
    j = np.flatnonzero(data.is_test)[0]
    assert [data.user[j], data.movie[j], data.stars[j]] == [int(x) for x in first_test[:3]]
    assert sum(1 for _ in ml.test(shared, dataset="ml-100k", split=split)()) == n_test


def test_random_split_is_the_chapter_rule_over_u_data(shared):
    lines = _member("u.data")
    np.random.seed(0)
    is_test = np.array([np.random.random() < 0.1 for _ in lines])
    data = ml.load("ml-100k", shared, "random")
    np.testing.assert_array_equal(data.is_test, is_test)
    first_train = lines[int(np.argmin(is_test))].split("\t")
    sample = next(ml.train(shared, dataset="ml-100k")())
    assert [sample[0], sample[4], sample[-1][0]] == [
        int(first_train[0]),
        int(first_train[1]),
        int(first_train[2]) * 2 - 5,
    ]


@pytest.fixture(scope="module")
def ml100k_model(shared, tmp_path_factory):
    model = tmp_path_factory.mktemp("m100k") / "model"
    args = ["--dataset", "ml-100k", "--split", "u1", "--data-dir", str(shared), "--model-dir", str(model)]
    proc = run_cli("recsys.train", *args, "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    return model


def test_evaluate_reports_the_model_and_baselines(ml100k_model):
    proc = run_cli("recsys.evaluate", "--model-dir", str(ml100k_model), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["dataset"], doc["split"], doc["n_train"], doc["n_test"]) == ("ml-100k", "u1", 80_000, 20_000)
    rows = {r["model"].split(" (")[0]: r for r in doc["rows"]}
    assert set(rows) == {"recsys model", "global mean", "user + movie biases", "matrix factorisation"}
    assert rows["user + movie biases"]["rmse"] < rows["global mean"]["rmse"]
    assert rows["matrix factorisation"]["rmse"] < rows["global mean"]["rmse"]
    assert rows["recsys model"]["rmse"] < rows["global mean"]["rmse"]
    for r in rows.values():
        assert r["rmse"] ** 2 <= r["cost"] / 4 + 1e-6  # clipping to 1..5 stars can only help
    metrics = json.loads((ml100k_model / "metrics.json").read_text())
    assert rows["recsys model"]["cost"] == pytest.approx(metrics[-1]["test_cost"], rel=1e-4)
    text = run_cli("recsys.evaluate", "--model-dir", str(ml100k_model)).stdout
    assert text.splitlines()[0] == "ml-100k split u1: 80,000 training, 20,000 test ratings"


def test_infer_on_an_ml100k_model(ml100k_model):
    proc = run_cli("recsys.infer", "--model-dir", str(ml100k_model), "--user", "1", "--movie", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('Predict Rating of user id 1 on movie "Toy Story" is ')
    assert 'Actual Rating of user id 1 on movie "Toy Story" is 5.' in proc.stdout


def test_evaluate_bad_inputs(ml100k_model, shared, tmp_path):
    assert_one_line_error(run_cli("recsys.evaluate", "--model-dir", str(tmp_path / "none")), "train first")
    proc = run_cli("recsys.evaluate", "--model-dir", str(ml100k_model), "--split", "u9")
    assert_one_line_error(proc, "ml-100k has no split 'u9'")
    (tmp_path / "empty").mkdir()
    empty = ["--data-dir", str(tmp_path / "empty"), "--model-dir", str(tmp_path / "m")]
    proc = run_cli("recsys.train", "--dataset", "ml-100k", "--split", "u1", *empty)
    assert_one_line_error(proc, "could not download ml-100k")
