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


def test_notebook_runs_top_to_bottom(real_meta_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_NB_DATA_DIR", str(real_meta_dir))
    monkeypatch.setenv("RECSYS_NB_EPOCHS", "1")
    monkeypatch.setenv("RECSYS_NB_MAX_BATCHES", "60")
    monkeypatch.setenv("RECSYS_NB_EVAL_EVERY", "20")
    monkeypatch.setenv("RECSYS_NB_MODEL_DIR", str(tmp_path / "model"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert "<MovieInfo id(1), title(Toy Story ), categories(['Animation', \"Children's\", 'Comedy'])>" in text
    assert "User 1 rates Movie 1193 with Score [5.0]" in text
    assert "EpochID 1, BatchID 60, Test Loss" in text
    assert 'Predict Rating of user id 1 on movie "Hunchback of Notre Dame, The" is' in text
    assert 'Actual Rating of user id 1 on movie "Hunchback of Notre Dame, The" is 4.' in text
    assert " 1. " in text and "10. " in text  # the top-10 list
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 3  # data pictures, the cost curve, the PCA of movie vectors
    assert (tmp_path / "model" / "inference.json").exists()
