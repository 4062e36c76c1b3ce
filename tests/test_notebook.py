"""The walkthrough notebook runs top to bottom on a small archive, and is stored without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

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
    assert "chapter model (stars)" in text and "retrieval alone (cosine)" in text and "two stages" in text
    assert "two-stage: retrieval top 200 -> ranking network" in text and "EASE (lambda 500)" in text
    assert "recall@200 of the candidates" in text


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
