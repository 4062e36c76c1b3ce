"""The first stage's faiss index against exact search: the same lists, never a rated movie, never a short list,
and a model dir whose saved index is missing or damaged says so."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import assert_one_line_error, run_cli

from recsys import Recommender, RecsysError, synthetic
from recsys.modeldir import ModelDir, index
from recsys.topn import first_stage, nearest


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("dense_seen", [nearest.DENSE_SEEN, 1])  # rated movies from a dense table, or by keys
def test_index_lists_equal_exact_lists_and_skip_every_rated_movie(monkeypatch, dense_seen):
    monkeypatch.setattr(nearest, "DENSE_SEEN", dense_seen)
    rng = np.random.RandomState(0)
    vectors, queries = _unit(rng.randn(5000, 16)), _unit(rng.randn(6, 16))
    seen = np.zeros((6, 5000), bool)
    seen[1, rng.choice(5000, 200, replace=False)] = True  # asks the index for 256 and drops the rated
    seen[2, np.argsort(-(vectors @ queries[2]))[:50]] = True  # the 50 nearest are all rated
    seen[3, :] = True
    seen[3, [7, 4000, 123]] = False  # rated all but three: the list is those three, then nothing
    seen[4, 2500:] = True  # half the catalogue: answered exactly, never short
    ix = index.build(vectors)
    got, values = nearest.top_k(ix, vectors, queries, seen, 10)
    want, want_values = nearest.top_k(None, vectors, queries, seen, 10)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(values, want_values, atol=1e-6)
    expected_three = sorted([7, 4000, 123], key=lambda c: -float(vectors[c] @ queries[3]))
    assert got[3, :3].tolist() == expected_three and (got[3, 3:] == -1).all()
    for row in range(6):
        listed = got[row][got[row] >= 0]
        assert not seen[row, listed].any()
        assert len(listed) == min(10, int((~seen[row]).sum()))
    with pytest.raises(RecsysError, match="search must be one of auto, exact, faiss"):
        nearest.uses_index("fast", 10)


def test_a_pool_keeps_every_unrated_movie_its_search_returned():
    """The index is asked for k plus the rated movies, rounded up to a power of two: a pool keeps every unrated
    one of those, best first, beyond the k (the first stage's pools), then -1."""
    rng = np.random.RandomState(4)
    vectors, queries = _unit(rng.randn(5000, 16)), _unit(rng.randn(2, 16))
    seen = np.zeros((2, 5000), bool)
    nearest_first = np.argsort(-(queries @ vectors.T), axis=1)
    seen[0, nearest_first[0, [0, 2, 4]]] = True  # asks for 16 (10 + 3): 13 unrated
    seen[1, nearest_first[1, :80:2]] = True  # asks for 64 (10 + 40), of which 32 rated: 32 unrated
    cols = nearest.pool(index.build(vectors), vectors, queries, seen, 10)
    assert cols.shape == (2, 64)
    for row, n in ((0, 13), (1, 32)):
        want = [c for c in nearest_first[row, : 16 if row == 0 else 64] if not seen[row, c]]
        assert len(want) == n and cols[row, :n].tolist() == want and (cols[row, n:] == -1).all()


def test_first_stage_lists_by_hand_and_through_the_index(monkeypatch):
    """The first stage's score, cosine + beta * (history @ W), computed here in numpy: exact search gives its
    best unrated columns, and the index (the cosine's top 2k and the item-item top 2k, then the bound) gives
    the same lists, rated movies never among them, even for a user who rated all but three."""
    rng = np.random.RandomState(1)
    vectors, queries = _unit(rng.randn(3000, 16)), _unit(rng.randn(5, 16))
    seen = np.zeros((5, 3000), bool)
    seen[0, rng.choice(3000, 40, replace=False)] = True
    seen[1, np.argsort(-(vectors @ queries[1]))[:60]] = True  # the 60 nearest are all rated
    seen[2, :] = True
    seen[2, [7, 2000, 123]] = False  # all but three rated: those three, then nothing
    seen[3, 1500:] = True
    w = sp.random(3000, 3000, density=0.01, random_state=2, format="csr", dtype=np.float32)
    w.data -= 0.3  # weights of either sign
    stage = first_stage.FirstStage.of(w, 0.8)
    score = queries @ vectors.T + 0.8 * (seen.astype(np.float64) @ w.toarray())
    got, values = first_stage.top_k(stage, None, vectors, queries, seen, 10)
    for row in range(5):
        s = np.where(seen[row], -np.inf, score[row])
        want = np.lexsort((np.arange(3000), -s))[: min(10, int((~seen[row]).sum()))]
        assert got[row][got[row] >= 0].tolist() == want.tolist()
        np.testing.assert_allclose(values[row][: len(want)], s[want], atol=1e-5)
    assert (got[2, 3:] == -1).all()
    ix = index.build(vectors)
    faiss_got, faiss_values = first_stage.top_k(stage, ix, vectors, queries, sp.csr_matrix(seen), 10)
    np.testing.assert_array_equal(faiss_got, got)
    np.testing.assert_allclose(faiss_values, values, atol=1e-5)
    monkeypatch.setattr(first_stage, "ROWS_PER_THREAD", 1)  # the rows split between three threads: 2, 2 and 1
    monkeypatch.setattr(first_stage.threads, "chosen", lambda: 3)
    split = first_stage.top_k(stage, ix, vectors, queries, sp.csr_matrix(seen), 10)
    np.testing.assert_array_equal(split[0], got)
    np.testing.assert_array_equal(split[1], faiss_values)
    monkeypatch.setattr(first_stage.threads, "chosen", lambda: 1)  # one thread chosen: no pool at all
    monkeypatch.setattr(first_stage, "ThreadPoolExecutor", None)
    np.testing.assert_array_equal(first_stage.top_k(stage, ix, vectors, queries, sp.csr_matrix(seen), 10)[0], got)
    assert first_stage.top_k(first_stage.FirstStage.of(w, 0.0), ix, vectors, queries, seen, 10)[0].tolist() == (
        nearest.top_k(ix, vectors, queries, seen, 10)[0].tolist()
    )


def test_faiss_lists_equal_exact_lists_on_ml100k(u1_models):
    retrieval, _ = u1_models
    exact, faiss = (Recommender.load(retrieval, search=s) for s in ("exact", "faiss"))
    users = exact.users
    assert len(exact.model.movie_ids) < index.SAVED_FROM and not exact.model.meta["index"]  # built when asked
    assert faiss.recommend_many(users, k=10) == exact.recommend_many(users, k=10)
    got, want = (r.recommend(1, k=200)["recommendations"] for r in (faiss, exact))
    assert [r["movie_id"] for r in got] == [r["movie_id"] for r in want]
    np.testing.assert_allclose([r["cosine"] for r in got], [r["cosine"] for r in want], atol=1e-6)
    rated = {r["movie_id"] for r in exact.user(1)["ratings"] if r["split"] == "train"}
    assert len(got) == 200 and not rated & {r["movie_id"] for r in got}
    got, want = (r.similar(50, k=10)["similar"] for r in (faiss, exact))
    assert [r["movie_id"] for r in got] == [r["movie_id"] for r in want]
    with pytest.raises(RecsysError, match="search must be one of"):
        Recommender.load(retrieval, search="approximate")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A retrieval model of a catalogue large enough for its dir to hold the faiss index."""
    out = tmp_path_factory.mktemp("indexed")
    synthetic.write_csv(out / "data", "ml-32m", 30_000, 1_500, index.SAVED_FROM, seed=3, zipped=True)
    model = out / "retrieval"
    proc = run_cli("recsys.train", "--dataset", "ml-32m", "--data-dir", str(out / "data"), "--objective",
                   "retrieval", "--epochs", "1", "--max-batches", "5", "--model-dir", str(model))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return model


def test_a_large_catalogue_saves_its_index_and_serves_through_it(indexed):
    md = ModelDir.load(indexed)
    assert md.meta["index"]["file"] == index.FILE and md.meta["index"]["movies"] == len(md.movie_ids)
    assert (indexed / index.FILE).exists()
    assert md.movie_index.ntotal == len(md.movie_ids)
    lists = [json.loads(run_cli("recsys.infer", "--model-dir", str(indexed), "--user", "2", "--top-k", "10",
                                "--json", *flag).stdout)["recommendations"] for flag in ((), ("--exact",))]  # fmt: skip
    assert [r["movie_id"] for r in lists[0]] == [r["movie_id"] for r in lists[1]] and len(lists[0]) == 10


@pytest.mark.parametrize("harm", ["damaged", "missing"])
def test_a_damaged_or_missing_index_is_one_error_line(indexed, tmp_path, harm):
    import shutil

    model = tmp_path / "retrieval"
    shutil.copytree(indexed, model)
    path = model / index.FILE
    if harm == "missing":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    proc = run_cli("recsys.infer", "--model-dir", str(model), "--user", "2", "--top-k", "10")
    why = "missing" if harm == "missing" else "checksum mismatch"
    assert_one_line_error(proc, f"model dir {model} is damaged: {index.FILE} ({why})")
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before  # nothing touched
