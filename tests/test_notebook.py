"""The walkthrough notebook runs top to bottom on a small archive, and is stored without outputs."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from pathlib import Path

import nbformat
import numpy as np
from nbclient import NotebookClient

from recsys import synthetic

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "recommender_system.ipynb"


def _text(cell) -> str:
    return "".join(
        o.get("text", "") + "".join(o.get("data", {}).get("text/plain", "")) for o in cell.get("outputs", [])
    )


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def _execute(tmp_path, monkeypatch, **env) -> tuple[str, int]:
    """Run the notebook with RECSYS_NB_* settings; return its text output and how many pictures it drew."""
    for key, value in {"MODEL_DIR": str(tmp_path / "model"), "EPOCHS": "1", **env}.items():
        monkeypatch.setenv(f"RECSYS_NB_{key}", value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    return "\n".join(map(_text, code)), sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)


def test_notebook_runs_top_to_bottom(real_meta_dir, tmp_path, monkeypatch):
    model = str(tmp_path / "recommender_system.inference.model")  # the default name: long table labels
    text, images = _execute(
        tmp_path, monkeypatch, DATA_DIR=str(real_meta_dir), MAX_BATCHES="60", EVAL_EVERY="20", MODEL_DIR=model
    )
    assert "<MovieInfo id(1), title(Toy Story ), categories(['Animation', \"Children's\", 'Comedy'])>" in text
    assert "User 1 rates Movie 1193 with Score [5.0]" in text
    assert "EpochID 1, BatchID 60, Test Loss" in text
    assert 'Predict Rating of user id 1 on movie "Hunchback of Notre Dame, The" is' in text
    assert 'Actual Rating of user id 1 on movie "Hunchback of Notre Dame, The" is 4.' in text
    assert " 1. " in text and "10. " in text  # the top-10 list
    assert images >= 3  # data pictures, the cost curve, the PCA of movie vectors
    assert (tmp_path / "recommender_system.inference.model" / "inference.json").exists()
    assert "\nretrieval (recommender_system.inference.model.retrieval) " in text  # the whole label
    assert "coloured genres: Drama, " in text  # the most common first genre of the real movies.dat
    assert "chapter model (stars)" in text and "retrieval alone (first stage)" in text and "two stages" in text
    assert "two-stage: retrieval top 200 -> ranking network" in text and "EASE (lambda 500)" in text
    assert "recall@200 of the candidates" in text
    # the ratings loop: a stored rating, a new user (6,040 users in ml-1m), retraining that read both
    assert "'seq': 1, 'replaced': False" in text and "new user 6041 rated" in text
    assert "retrained on {'path': " in text and "'ratings': 4, 'users': 1}" in text


def test_notebook_runs_on_ml100k(tmp_path, monkeypatch):
    from conftest import need_ml100k

    env = {"DATASET": "ml-100k", "SPLIT": "u1", "DATA_DIR": str(need_ml100k()), "MAX_BATCHES": "40"}
    text, images = _execute(tmp_path, monkeypatch, **env)
    assert "<UserInfo id(1), gender(M), age(18), job(19)>" in text
    assert "User 1 rates Movie 1 with Score [5.0]" in text  # u1.base opens with 1 1 5
    assert "80,000 train, 20,000 test" in text
    assert 'Predict Rating of user id 1 on movie "Milk Money" is' in text
    assert images >= 3
    assert "456 test users with a rating of 4+ stars" in text  # u1's evaluation users


def test_notebook_runs_on_ml_latest_small(tmp_path, monkeypatch):
    """A synthetic ml-latest-small zip: half stars, sparse movie ids without the chapter's 783, no user features.
    The example user and movie come from the data: the user of the first rating line and the last movie they
    rated in the chapter's test split (seed 0, one draw per line), read here from the files themselves."""
    data = tmp_path / "data"
    archive = synthetic.write_csv(data, "ml-latest-small", n_ratings=6000, n_users=120, n_movies=400, seed=5,
                                  zipped=True)  # fmt: skip
    with zipfile.ZipFile(archive) as z:
        ratings = [line.split(",") for line in z.read("ml-latest-small/ratings.csv").decode().splitlines()[1:]]
        movies = dict(row[:2] for row in csv.reader(io.StringIO(z.read("ml-latest-small/movies.csv").decode())))
    assert "783" not in movies and len(ratings) == 6000
    is_test = np.random.RandomState(0).random_sample(len(ratings)) < 0.1
    first = ratings[int(np.argmin(is_test))]  # the first training line
    user = ratings[0][0]
    held_out = [r for r, t in zip(ratings, is_test) if r[0] == user and t]
    movie, rating = held_out[-1][1], held_out[-1][2]
    title = re.sub(r"\(\d+\)$", "", movies[movie]).strip()  # the chapter's rule: the trailing (year) goes
    assert (user, movie, rating, title) == ("1", "6339", "4.5", "Blue World")  # a half star, as the data gave it

    text, images = _execute(
        tmp_path, monkeypatch, DATASET="ml-latest-small", DATA_DIR=str(data), MAX_BATCHES="40", EVAL_EVERY="20"
    )
    n_test = int(is_test.sum())
    assert f"6,000 ratings: {6000 - n_test:,} train, {n_test:,} test" in text
    assert f"row 1 is movie id {min(int(m) for m in movies if m != 'movieId')}: <MovieInfo id(1), " in text
    assert "row 1 is user id 1, user features: none" in text
    assert "120 users (ids 1..120), 400 movies" in text
    assert f"User {first[0]} rates Movie {first[1]} with Score [{float(first[2]) * 2 - 5}]" in text
    assert 'example: user id 1, movie id 6339 "Blue World"' in text
    assert 'Predict Rating of user id 1 on movie "Blue World" is ' in text
    assert 'Actual Rating of user id 1 on movie "Blue World" is 4.5.' in text
    assert " 1. " in text and "10. " in text and "[id " in text  # the top-10 list, with own movie ids
    assert "two-stage: retrieval top 200 -> ranking network" in text and "test users with a rating of 4+ stars" in text
    assert images >= 3
    assert (tmp_path / "model" / "inference.json").exists()
