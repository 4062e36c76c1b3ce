"""Reasons: each recommended movie names the rated movies it is there because of, with their shares, in Python,
on the CLI and over HTTP; a user with no history is told so; bad values are one error."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_one_line_error, infer_json, run_cli

from recsys import Recommender
from recsys.errors import RecsysError
from recsys.modeldir import ModelDir
from recsys.topn import reasons


def _check(answer: dict, named: set[int]) -> int:
    """Every movie's reasons name only movies in `named`, each share in [0, 1] and their sum at most 1; the
    number of movies with at least one reason."""
    given = 0
    for movie in answer["recommendations"]:
        because = movie["because"]
        assert len(because) <= reasons.TOP
        assert {b["movie_id"] for b in because} <= named
        assert all(0 <= b["share"] <= 1 for b in because) and sum(b["share"] for b in because) <= 1
        assert [b["share"] for b in because] == sorted((b["share"] for b in because), reverse=True)
        assert bool(because) != ("reason" in movie)
        given += bool(because)
    return given


def _by_hand(md: ModelDir, user: int, movie: int) -> dict[int, float]:
    """Each training-history movie's share of `movie`'s score for `user`, from dense arrays (the module's
    formula written out)."""
    rated, _, is_test = md.ratings_of(user)
    rated = np.sort(rated[~is_test])
    vectors = md.arrays["movie_vectors"].astype(np.float64)
    near = np.maximum(vectors[rated] @ vectors[movie], 0)
    cosine = max(float(vectors[movie] @ md.arrays["user_vectors"][user].astype(np.float64)), 0)
    cols = np.searchsorted(md.movie_ids, rated)
    w = md.item_item_by_row.toarray()[cols, np.searchsorted(md.movie_ids, movie)].astype(np.float64)
    c = cosine * near / near.sum() + md.first_stage_beta * np.maximum(w, 0)
    return {int(m): float(x / c.sum()) for m, x in zip(rated, c)}


def test_reasons_name_rated_movies_with_their_shares(u1_models):
    rec = Recommender.load(u1_models[0])
    md = rec.model
    assert md.first_stage_beta > 0  # the item-item weights take part
    plain = rec.recommend(1, k=10)
    answer = rec.recommend(1, k=10, explain=True)
    assert [m["movie_id"] for m in answer["recommendations"]] == [m["movie_id"] for m in plain["recommendations"]]
    rated, _, is_test = md.ratings_of(1)
    assert _check(answer, set(rated[~is_test].tolist())) == 10
    first = answer["recommendations"][0]
    shares = _by_hand(md, 1, first["movie_id"])
    top = sorted(shares, key=lambda m: (-shares[m], m))[:3]
    assert [b["movie_id"] for b in first["because"]] == top
    assert [b["share"] for b in first["because"]] == pytest.approx([shares[m] for m in top], abs=1e-6)
    assert first["because"][0]["title"] == md.title(top[0])
    # a stored rating is history too: it may be named, and it is never listed
    stored = rec.recommend(1, k=10, rated=[(first["movie_id"], 5)], explain=True)
    assert _check(stored, set(rated[~is_test].tolist()) | {first["movie_id"]}) == 10


def test_a_new_user_is_explained_by_the_movies_they_named_or_told_they_have_none(u1_models):
    rec = Recommender.load(*u1_models)  # two stages: the retrieval model's reasons
    named = rec.recommend_new(5, gender="F", age=25, job=4, rated=[(50, 5), (181, 4)], strict=False, explain=True)
    assert _check(named, {50, 181}) == 5
    for who in (rec.recommend_new(5, gender="F", age=25, job=4, explain=True),):
        assert all(m["because"] == [] and m["reason"] == reasons.NO_HISTORY for m in who["recommendations"])
    one = Recommender.load(u1_models[0]).recommend_new(3, gender="M", age=40, job=1, rated=[(50, 5)], explain=True)
    assert all([b["movie_id"] for b in m["because"]] in ([50], []) for m in one["recommendations"])
    assert all(b["share"] == 1.0 for m in one["recommendations"] for b in m["because"])  # the only rated movie
    for bad in ("yes", 1, None):
        with pytest.raises(RecsysError, match="explain must be true or false"):
            rec.recommend(1, 3, explain=bad)


def test_infer_explains_in_text_and_json_and_refuses_explain_without_a_list(u1_models):
    retrieval = str(u1_models[0])
    answer = infer_json("--model-dir", retrieval, "--user", "1", "--top-k", "3", "--explain")
    assert _check(answer, set(range(1, 2000))) == 3
    proc = run_cli("recsys.infer", "--model-dir", retrieval, "--user", "1", "--top-k", "3", "--explain")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    first = answer["recommendations"][0]["because"][0]
    assert lines[2].startswith(f'     because you rated "{first["title"]}" ({first["share"]:.0%})')
    proc = run_cli("recsys.infer", "--model-dir", retrieval, "--gender", "F", "--age", "25", "--job", "4",
                   "--top-k", "2", "--explain")  # fmt: skip
    assert proc.stdout.splitlines()[2] == f"     {reasons.NO_HISTORY}"
    for extra in (["--similar-to", "1"], ["--user", "1", "--movie", "1"], ["--user", "1"]):
        assert_one_line_error(run_cli("recsys.infer", "--model-dir", retrieval, *extra, "--explain"), "--explain")


def test_explain_over_http(u1_models):
    from fastapi.testclient import TestClient

    from recsys.serve import create_app

    rec = Recommender.load(*u1_models)
    rated, _, is_test = rec.model.ratings_of(1)
    with TestClient(create_app(*u1_models, reload_interval=0)) as c:
        answer = c.get("/api/users/1/recommendations?k=4&explain=true").json()
        assert answer == rec.recommend(1, 4, explain=True) and _check(answer, set(rated[~is_test].tolist())) == 4
        assert "because" not in c.get("/api/users/1/recommendations?k=4").json()["recommendations"][0]
        new = c.get("/api/recommendations?gender=F&age=25&job=4&k=2&explain=true").json()
        assert new["recommendations"][0]["reason"] == reasons.NO_HISTORY
        body = c.post("/api/recommend", json={"user_id": 1, "k": 4, "explain": True}).json()
        assert body == answer
        for bad in (
            "/api/users/1/recommendations?explain=maybe",
            "/api/recommendations?gender=F&age=25&job=4&explain=2",
        ):
            r = c.get(bad)
            assert r.status_code == 422 and list(r.json()) == ["error"] and "explain" in r.json()["error"]
        r = c.post("/api/recommend", json={"user_id": 1, "explain": "yes"})
        assert r.status_code == 422 and "explain" in r.json()["error"]
