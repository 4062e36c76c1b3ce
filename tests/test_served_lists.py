"""Served lists: a model trained on every rating (`--split all`), lists that never hold a movie the user rated
(`exclude_rated`), and the filters (genres, release years, movie ids), through `Recommender`, `infer` and HTTP."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
from conftest import assert_one_line_error, infer_json, run_cli
from fastapi.testclient import TestClient

from recsys import Recommender, RecsysError, movielens, topn, train
from recsys.service.api import create_app

QUIET = {"log": lambda _msg: None}
K = 10


@pytest.fixture(scope="module")
def models(small_dir, tmp_path_factory) -> dict[str, Path]:
    """One-epoch models of the small archive: on every rating (retrieval, its ranking network, a rating model
    with a validation slice) and on the random split (retrieval)."""
    out = tmp_path_factory.mktemp("served")
    lines: list[str] = []
    train.run(data_dir=small_dir, split="all", objective="retrieval", model_dir=out / "all", epochs=1, **QUIET)
    train.run(data_dir=small_dir, split="all", objective="ranking", model_dir=out / "all-ranking", epochs=1,
              candidates_from=out / "all", **QUIET)  # fmt: skip
    train.run(data_dir=small_dir, split="all", model_dir=out / "all-rating", epochs=1, val_ratio=0.1, log=lines.append)
    (out / "all-rating.log").write_text("\n".join(lines))
    train.run(data_dir=small_dir, split="random", objective="retrieval", model_dir=out / "random", epochs=1, **QUIET)
    train.run(data_dir=small_dir, split="random", objective="ranking", model_dir=out / "random-ranking", epochs=1,
              candidates_from=out / "random", **QUIET)  # fmt: skip
    return {name: out / name for name in ("all", "all-ranking", "all-rating", "random", "random-ranking")}


def _ids(doc: dict) -> list[int]:
    return [r["movie_id"] for r in doc["recommendations"]]


def _rated(rec: Recommender, user: int) -> set[int]:
    """Every movie the user rated in the model's data, both splits."""
    return {int(rec.model.own_movie(int(m))) for m in rec.model.ratings_of(rec.user_row(user))[0]}


def _tested(rec: Recommender, user: int) -> set[int]:
    movies, _, is_test = rec.model.ratings_of(rec.user_row(user))
    return {int(rec.model.own_movie(int(m))) for m in movies[is_test]}


def test_split_all_trains_on_every_rating_and_has_nothing_to_evaluate(models, small_dir):
    data = movielens.load("ml-1m", small_dir, "all")
    assert len(data.user) == 40_000 and not data.is_test.any()
    rec = Recommender.load(models["all-rating"])
    assert rec.model.meta["split"] == "all"
    assert sum(len(rec.model.ratings_of(r)[0]) for r in range(len(rec.model.arrays["rated_indptr"]) - 1)) == 40_000
    assert not rec.model.arrays["rated_is_test"].any()
    lines = (models["all"].parent / "all-rating.log").read_text().splitlines()
    assert lines[0].startswith("Train Loss:") and "no test split" in lines[0]
    assert re.match(r"EpochID 1, BatchID \d+, Train Loss [\d.]+  \(train [\d.]+, validation [\d.]+, no test", lines[1])
    assert not any("Test Loss" in line or "test cost" in line for line in lines), lines
    assert_one_line_error(run_cli("recsys.evaluate", "--model-dir", str(models["all"])), "--split all", "no test split")
    with pytest.raises(RecsysError, match="no test split"):
        rec.evaluate(data)
    proc = run_cli("recsys.evaluate", "--model-dir", str(models["random"]), "--split", "all")
    assert_one_line_error(proc, "the all split has no test ratings to evaluate on")


@pytest.mark.parametrize("kind", ["all", "all two stages", "random", "random two stages"])
def test_no_served_list_holds_a_movie_the_user_rated(models, kind):
    """Every user, through Python (one by one and in a batch) and HTTP; the CLI for the users whose lists
    leaving out the training split alone hold a test rating (an evaluation split's) or for the first three."""
    split = kind.split()[0]
    model, rerank = models[split], models[f"{split}-ranking"] if "two" in kind else None
    rec = Recommender.load(model, rerank)
    users = rec.users
    many = rec.recommend_many(users, K)
    flags = ["--model-dir", str(model)] + ([] if rerank is None else ["--rerank", str(rerank)])
    leaky = []
    with TestClient(create_app(model, rerank, reload_interval=0)) as c:
        for user, listed in zip(users, many):
            rated = _rated(rec, user)
            doc = rec.recommend(user, K)
            assert len(_ids(doc)) == K and not rated & set(_ids(doc)), user
            assert listed == _ids(doc)
            assert c.get(f"/api/users/{user}/recommendations?k={K}").json() == doc
            if user % 20 == 0:  # the JSON request: the same list
                assert c.post("/api/recommend", json={"user_id": user, "k": K}).json() == doc
            if rated & set(_ids(rec.recommend(user, K, exclude_rated="train"))):
                leaky.append(user)
    assert bool(leaky) == (split == "random")  # the evaluation's lists hold test ratings
    for user in (leaky or users)[:3]:
        shown = infer_json(*flags, "--user", str(user), "--top-k", str(K))
        assert shown == rec.recommend(user, K) and not _rated(rec, user) & set(_ids(shown))


def test_exclude_rated_train_is_what_evaluate_ranks(models, small_dir):
    """The evaluation's lists (each test user's, from the top-N code path) are `exclude_rated="train"`'s,
    in Python, the CLI and HTTP; the served list is that list with the user's test ratings left out."""
    rec = Recommender.load(models["random"])
    data = movielens.load("ml-1m", small_dir, "random")
    ranking = topn.Interactions.build(rec.model.movie_ids, data.user, data.movie, data.stars, data.is_test)
    ranked, rank = [], rec.ranker()

    def spy(users, seen, k):
        lists = rank(users, seen, k)
        ranked.extend(zip(users.tolist(), lists.tolist()))
        return lists

    assert topn.evaluate(spy, ranking, K) == rec.evaluate(data, K)
    evaluated = {int(rec.model.own_user(u)): [rec.model.own_movie(int(rec.model.movie_ids[c])) for c in cols]
                 for u, cols in ranked}  # fmt: skip
    users = sorted(evaluated)
    assert rec.recommend_many(users, K, exclude_rated="train") == [evaluated[u] for u in users]
    with TestClient(create_app(models["random"], reload_interval=0)) as c:
        for user in users[:50]:
            doc = rec.recommend(user, K, exclude_rated="train")
            assert _ids(doc) == evaluated[user]
            assert c.get(f"/api/users/{user}/recommendations?k={K}&exclude_rated=train").json() == doc
            assert c.post("/api/recommend", json={"user_id": user, "k": K, "exclude_rated": "train"}).json() == doc
            tested = _tested(rec, user)
            deeper = _ids(rec.recommend(user, K + len(tested), exclude_rated="train"))
            assert _ids(rec.recommend(user, K)) == [m for m in deeper if m not in tested][:K]
    user = users[0]
    shown = infer_json("--model-dir", str(models["random"]), "--user", str(user), "--top-k", str(K),
                       "--exclude-rated", "train")  # fmt: skip
    assert _ids(shown) == evaluated[user]


def test_a_known_users_stored_ratings_are_never_listed(models, tmp_path):
    """A stored rating of the top movie leaves every list of the user, GET and POST alike, either exclude_rated."""
    token = {"Authorization": "Bearer t0ken"}
    app = create_app(models["random"], reload_interval=0, ratings_db=tmp_path / "r.db", write_token="t0ken")
    with TestClient(app) as c:
        top = _ids(c.get("/api/users/4/recommendations?k=5").json())[0]
        rated = c.post("/api/ratings", json={"user_id": 4, "movie_id": top, "rating": 2}, headers=token)
        assert rated.status_code == 201, rated.text
        for which in ("all", "train"):
            got = c.get(f"/api/users/4/recommendations?k=5&exclude_rated={which}").json()
            assert top not in _ids(got) and len(_ids(got)) == 5
            assert c.post("/api/recommend", json={"user_id": 4, "k": 5, "exclude_rated": which}).json() == got


def _movies_dat(small_dir: Path) -> dict[int, tuple[int | None, set[str]]]:
    """Each movie id's release year and genres, read from the archive's movies.dat by hand."""
    with zipfile.ZipFile(small_dir / "ml-1m.zip") as z:
        text = z.read("ml-1m/movies.dat").decode("latin-1")
    out = {}
    for line in text.splitlines():
        mid, title, genres = line.split("::")
        year = re.search(r"\((\d{4})\)\s*$", title)
        out[int(mid)] = (int(year.group(1)) if year else None, set(genres.split("|")))
    return out


@pytest.mark.parametrize("kind", ["one stage", "faiss", "two stages"])
def test_filtered_lists_pass_and_are_k_long(models, small_dir, kind):
    """Every listed movie passes; the list is the unfiltered ranking's first k that pass (one stage), k long;
    excluding the first stage's whole top (its best candidates) still gives k, found deeper."""
    rerank = models["all-ranking"] if kind == "two stages" else None
    rec = Recommender.load(models["all"], rerank, search="faiss" if kind == "faiss" else "auto")
    movies, n = _movies_dat(small_dir), len(rec.model.movie_ids)
    for user in rec.users[:40]:
        full = _ids(rec.recommend(user, n))  # every movie the user did not rate, best first
        top = full[:50] if rerank is None else [r["movie_id"] for r in _first_stage(rec, user)]
        cases = _cases(movies, top)
        for given, passes in cases:
            listed = _ids(rec.recommend(user, K, **given))
            assert all(passes(m) for m in listed), (user, given)
            assert len(listed) == min(K, sum(bool(passes(m)) for m in full)), (user, given)
            assert not _rated(rec, user) & set(listed)
            if rerank is None:
                assert listed == [m for m in full if passes(m)][:K], (user, given)
            else:  # the filter applies to the candidates, which the second stage then orders
                ranks = {r["retrieval_rank"] for r in rec.recommend(user, K, **given)["recommendations"]}
                assert ranks <= set(range(1, rec.candidates + 1))


def _cases(movies: dict, top: list[int]) -> list:
    """Filters and, for each, whether a movie id passes it, by hand; `top`: the first stage's best."""
    return [
            ({"genres": "Comedy,War"}, lambda m: movies[m][1] & {"Comedy", "War"}),
            ({"exclude_genres": ["Drama", "Comedy"]}, lambda m: not movies[m][1] & {"Drama", "Comedy"}),
            ({"years": "1950-1969"}, lambda m: movies[m][0] is not None and 1950 <= movies[m][0] <= 1969),
            ({"exclude": ",".join(map(str, top))}, lambda m: m not in top),
            ({"genres": ["Horror"], "years": (1990, 2001), "exclude": top[:5]},
             lambda m: "Horror" in movies[m][1] and 1990 <= (movies[m][0] or 0) <= 2001 and m not in top[:5]),
    ]  # fmt: skip


def _first_stage(rec: Recommender, user: int) -> list[dict]:
    """The first stage's candidates of the user, as the two stages take them."""
    return Recommender(rec.model, search=rec.search).recommend(user, rec.candidates)["recommendations"]


def test_filters_for_a_new_user_and_in_a_batch(models, small_dir):
    rec, movies = Recommender.load(models["all"]), _movies_dat(small_dir)
    new = rec.recommend_new(K, gender="F", age=30, job=4, rated=[(5, 5.0)], genres="Western", exclude=[5, 17])
    assert len(_ids(new)) == K and all("Western" in movies[m][1] for m in _ids(new)) and not {5, 17} & set(_ids(new))
    many = rec.recommend_many(rec.users[:30], K, years="1980-1989")
    assert many == [_ids(rec.recommend(u, K, years="1980-1989")) for u in rec.users[:30]]
    assert all(1980 <= movies[m][0] <= 1989 for row in many for m in row)


def test_filters_answer_alike_in_python_the_cli_and_http(models):
    model = models["all"]
    rec = Recommender.load(model)
    given = {"genres": "Comedy,Drama", "exclude_genres": "Horror", "exclude": "1,2,3", "years": "1970-1999"}
    doc = rec.recommend(7, K, **given)
    flags = [x for k, v in given.items() for x in (f"--{k.replace('_', '-')}", v)]
    assert infer_json("--model-dir", str(model), "--user", "7", "--top-k", str(K), *flags) == doc
    with TestClient(create_app(model, reload_interval=0)) as c:
        assert c.get(f"/api/users/7/recommendations?k={K}", params=given).json() == doc
        body = {"user_id": 7, "k": K, "genres": ["Comedy", "Drama"], "exclude_genres": ["Horror"],
                "exclude": [1, 2, 3], "years": "1970-1999"}  # fmt: skip
        assert c.post("/api/recommend", json=body).json() == doc
        new = rec.recommend_new(K, gender="M", age=40, job=2, genres="Comedy")
        query = {"gender": "M", "age": 40, "job": 2, "genres": "Comedy"}
        assert c.get("/api/recommendations", params=query).json() == new


BAD = [  # a value, its error, and the service's status: 422 for a value it does not take, 404 for nothing to list
    ("exclude_rated", "test", "exclude_rated", 422),
    ("genres", "Comdy", "unknown genre 'Comdy'; the genres of this data: Action, Adventure", 422),
    ("genres", ",", "genres are names separated by commas", 422),
    ("exclude_genres", "Horror,Nope", "unknown genre 'Nope'", 422),
    ("exclude", "1,x", "movie ids to exclude are whole numbers", 422),
    ("exclude", "999999", "unknown movie id 999999 to exclude", 404),
    ("years", "1999-1990", "the release-year range 1999-1990 is empty", 404),
    ("years", "nineties", "a release-year range is FIRST-LAST or one year", 422),
    ("years", "1990\n", "a release-year range is FIRST-LAST or one year", 422),
    ("years", "2500", "no movie passes these filters (released 2500-2500)", 404),
]


@pytest.mark.parametrize(("name", "value", "message", "status"), BAD)
def test_bad_values_get_one_error_line(models, name, value, message, status):
    model = models["random"]
    rec = Recommender.load(model)
    with pytest.raises(RecsysError) as e:
        rec.recommend(1, K, **{name: value})
    assert message in str(e.value)
    with TestClient(create_app(model, reload_interval=0)) as c:
        for r in (
            c.get("/api/users/1/recommendations", params={name: value}),
            c.post("/api/recommend", json={"user_id": 1, name: value}),
        ):
            assert r.status_code == status and r.text.count("\n") == 0 and message in r.json()["error"], r.text
            assert str(status) in c.get("/openapi.json").json()["paths"]["/api/recommend"]["post"]["responses"]
    proc = run_cli("recsys.infer", "--model-dir", str(model), "--user", "1", "--top-k", "5",
                   f"--{name.replace('_', '-')}", value)  # fmt: skip
    assert_one_line_error(proc, "--exclude-rated" if name == "exclude_rated" else message)


def test_cli_filter_flags_need_a_list(models):
    model = str(models["random"])
    proc = run_cli("recsys.infer", "--model-dir", model, "--similar-to", "5", "--genres", "Comedy")
    assert_one_line_error(proc, "--genres filters recommendations")
    proc = run_cli("recsys.infer", "--model-dir", model, "--gender", "F", "--age", "30", "--job", "1", "--top-k", "5",
                   "--exclude-rated", "train")  # fmt: skip
    assert_one_line_error(proc, "--exclude-rated is for a known user")
    out = json.loads(run_cli("recsys.infer", "--model-dir", model, "--user", "1", "--top-k", "3", "--json").stdout)
    assert len(out["recommendations"]) == 3
