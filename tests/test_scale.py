"""Pieces for large archives: the synthetic GroupLens CSV layout, top-N over user chunks, EASE's item cap."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
from conftest import assert_one_line_error, run_cli

from recsys import synthetic, topn
from recsys.data import history

HALF_STARS = {f"{s / 2:.1f}" for s in range(1, 11)}


def _read(text: str) -> tuple[list[str], np.ndarray]:
    lines = text.splitlines()
    return lines[0].split(","), np.array([ln.split(",") for ln in lines[1:]])


def test_csv_bytes_writes_integers_and_fixed_width_fields():
    got = synthetic.csv_bytes(
        "a,b,c", [np.array([0, 7, 123]), np.array([b"4.0", b"0.5", b"5.0"]), np.array([9, 10, 0])]
    )
    assert got == b"a,b,c\n0,4.0,9\n7,0.5,10\n123,5.0,0\n"


def test_csv_layout_ratings_and_movies(tmp_path):
    folder = synthetic.write_csv(tmp_path, "ml-latest-small", n_ratings=3_000, n_users=40, n_movies=500, seed=3)
    assert folder == tmp_path / "ml-latest-small"
    ratings = (folder / "ratings.csv").read_text()
    head, rows = _read(ratings)
    assert head == ["userId", "movieId", "rating", "timestamp"] and len(rows) == 3_000
    user, movie, ts = rows[:, 0].astype(int), rows[:, 1].astype(int), rows[:, 3].astype(int)
    assert set(rows[:, 2]) <= HALF_STARS and {"0.5", "4.0", "3.5", "5.0"} <= set(rows[:, 2])
    assert np.all((np.diff(user) > 0) | ((np.diff(user) == 0) & (np.diff(ts) >= 0)))  # by user, then time
    assert np.array_equal(np.unique(user), np.arange(1, 41)) and np.bincount(user)[1:].min() >= 20
    assert len(np.unique(user * 10**7 + movie)) == 3_000  # one rating per user and movie
    assert 789_652_009 <= ts.min() and ts.max() <= 1_697_164_147
    movies = (folder / "movies.csv").read_text(encoding="utf-8").splitlines()
    assert movies[0] == "movieId,title,genres" and len(movies) == 501
    ids = np.array([int(ln.split(",", 1)[0]) for ln in movies[1:]])
    assert np.all(np.diff(ids) > 0) and ids.max() > 2 * len(ids)  # sparse ids, ascending
    assert set(movie) <= set(ids.tolist())
    quoted = [ln for ln in movies if '"' in ln]
    assert quoted and all(ln.split(",", 1)[1].startswith('"') and ", The (" in ln for ln in quoted)
    assert all(ln.rsplit(",", 1)[0].endswith((")", ')"')) for ln in movies[1:])  # every title ends in its year
    again = synthetic.write_csv(tmp_path / "again", "ml-latest-small", 3_000, 40, 500, seed=3)
    assert (again / "ratings.csv").read_text() == ratings  # deterministic under a seed
    other = synthetic.write_csv(tmp_path / "other", "ml-latest-small", 3_000, 40, 500, seed=4)
    assert (other / "ratings.csv").read_text() != ratings


def test_csv_layout_zip_and_cli(tmp_path):
    proc = run_cli("recsys.synthetic", str(tmp_path), "--layout", "ml-32m", "--ratings", "2500", "--users", "100",
                   "--movies", "300", "--zip")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "ml-32m.zip")
    with zipfile.ZipFile(tmp_path / "ml-32m.zip") as z:
        assert sorted(z.namelist()) == ["ml-32m/movies.csv", "ml-32m/ratings.csv"]
        _, rows = _read(io.TextIOWrapper(z.open("ml-32m/ratings.csv")).read())
    assert len(rows) == 2_500 and np.bincount(rows[:, 0].astype(int))[1:].min() >= 20
    too_few = run_cli("recsys.synthetic", str(tmp_path), "--layout", "ml-32m", "--ratings", "1999", "--users", "100")
    assert_one_line_error(too_few, "1999 ratings cannot give 100 users 20..")
    assert_one_line_error(run_cli("recsys.synthetic", str(tmp_path), "--users", "5"), "for the CSV layouts")


def _random_interactions(seed: int, n_users: int = 60, n_movies: int = 30) -> tuple[topn.Interactions, np.ndarray]:
    """Random ratings of ids 0..n-1 (every pair at most once) and the dense training mask built by hand."""
    rng = np.random.RandomState(seed)
    rated = rng.random_sample((n_users, n_movies)) < 0.3
    user, movie = np.nonzero(rated)
    order = rng.permutation(len(user))  # input order is not user order
    user, movie = user[order], movie[order]
    stars = rng.randint(1, 6, len(user))
    is_test = rng.random_sample(len(user)) < 0.25
    seen = np.zeros((n_users, n_movies), bool)
    seen[user[~is_test], movie[~is_test]] = True
    catalogue = np.arange(n_movies) * 3 + 1  # sparse movie ids
    data = topn.Interactions.build(catalogue, user, catalogue[movie], stars, is_test)
    return data, seen


def test_chunked_top_n_equals_one_chunk():
    data, seen = _random_interactions(0)
    users = data.eval_users()
    assert np.array_equal(data.train_matrix(users, bool), seen[users]) and np.array_equal(data.train_matrix(), seen)
    scores = np.random.RandomState(1).random_sample(seen.shape).astype(np.float32)
    for ranker in (
        topn.by_score(lambda u: scores[u]),
        topn.Popularity().fit(data).ranker(),
        topn.EASE(5.0).fit(data).ranker(),
        topn.EASE(5.0, max_items=12).fit(data).ranker(),
    ):
        whole = ranker(users, seen[users], 5)
        parts = np.concatenate([ranker(users[s : s + 7], data.train_matrix(users[s : s + 7], bool), 5)
                                for s in range(0, len(users), 7)])  # fmt: skip
        assert np.array_equal(parts, whole)
        assert not seen[users[:, None], whole].any()
        assert topn.evaluate(ranker, data, 5, chunk=7) == topn.evaluate(ranker, data, 5, chunk=10_000)


def test_cooccurrence_counts_pairs_and_products_alike():
    data, seen = _random_interactions(2, 80, 25)
    want = (seen.T.astype(np.float32) @ seen.astype(np.float32)).astype(np.float64)
    indptr, cols = data.train_csr
    for dense_from in (1, 8, 10**9):  # all rows as products, a mix, all rows as pairs
        assert np.array_equal(topn.cooccurrence(indptr, cols, 25, dense_from), want)


def test_ease_weights_are_the_closed_form_computed_in_place():
    data, seen = _random_interactions(3, 90, 40)
    x = seen.astype(np.float64)
    p = np.linalg.inv(x.T @ x + 7.0 * np.eye(40))  # EASE: B = -P / diag(P) column-wise, zero diagonal
    want = -p / np.diag(p)[None, :]
    np.fill_diagonal(want, 0.0)
    got = topn.EASE(7.0).fit(data).b
    assert got.dtype == np.float32 and got.shape == (40, 40)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_ease_cap_ranks_the_other_movies_after_by_popularity():
    # training ratings (user: movie columns): counts 4, 2, 2, 1 -> the 2 most rated are 0 and 1 (tie: smaller)
    train = {0: [0, 1], 1: [0, 2], 2: [0, 1, 3], 3: [2], 4: [0]}
    user = np.array([u for u, cs in train.items() for _ in cs])
    movie = np.array([c for cs in train.values() for c in cs])
    data = topn.Interactions.build(np.arange(4), user, movie, np.full(len(user), 5), np.zeros(len(user), bool))
    ease = topn.EASE(1.0, max_items=2).fit(data)
    assert ease.name == "EASE (lambda 1, top 2 movies)" and topn.EASE(1.0).fit(data).name == "EASE (lambda 1)"
    # X'X of movies 0, 1 is [[4, 2], [2, 2]]; + I -> P = [[3, -2], [-2, 5]] / 11; B = -P / diag(P) column-wise
    np.testing.assert_allclose(ease.b, [[0, 2 / 5], [2 / 3, 0]], rtol=1e-6)
    np.testing.assert_allclose(ease.scores(np.array([0])), [[2 / 3, 2 / 5]], rtol=1e-6)
    users = np.array([1, 3, 4])
    lists = ease.ranker()(users, data.train_matrix(users, bool), 3)
    # user 1: movie 1 (the only unseen kept one), then 3 (2 is seen); user 3: kept 0, 1 tie at 0 -> smaller
    # first, then 3; user 4: movie 1, then the others by popularity: 2 (2 ratings), 3 (1 rating)
    np.testing.assert_array_equal(lists, [[1, 3, -1], [0, 1, 3], [1, 2, 3]])


def test_sparse_histories_equal_the_dense_weights_and_the_cap_draws_from_the_rest():
    # user 1 rated movies 2, 3, 5, 7, 9; user 2 rated 3 only; user 0 (unknown) nothing; a repeat counts once
    user, movie = np.array([1, 1, 1, 1, 1, 2, 1]), np.array([2, 3, 5, 7, 9, 3, 5])
    h = history.Histories.of(3, 10, user, movie)
    assert h.indptr.tolist() == [0, 0, 5, 6] and h.movies.tolist() == [2, 3, 5, 7, 9, 3]
    ids, rows, w = h.sparse(np.array([1, 1, 2, 0]), leave_out=np.array([5, 4, 3, 1]))
    assert sorted(zip(rows.tolist(), ids.tolist())) == [(0, 2), (0, 3), (0, 7), (0, 9)] + [
        (1, m) for m in (2, 3, 5, 7, 9)
    ]  # row 0 leaves its own movie 5 out; row 1's movie 4 is not in the history; row 2's only movie is its own
    np.testing.assert_allclose(w, [1 / 4] * 4 + [1 / 5] * 5)
    dense = h.dense(np.array([1, 2]))
    np.testing.assert_allclose(dense[0], [0, 0, 0.2, 0.2, 0, 0.2, 0, 0.2, 0, 0.2])
    assert dense[1, 3] == 1.0 and dense[1].sum() == 1.0
    ids, rows, w = h.sparse(np.array([1] * 200 + [2]), np.array([5] * 200 + [9]), cap=2, rng=np.random.RandomState(0))
    assert np.bincount(rows).tolist() == [2] * 200 + [1]  # capped rows draw 2; user 2's single movie is whole
    assert set(ids[rows < 200].tolist()) == {2, 3, 7, 9} and np.all(w[rows < 200] == 0.5)
    assert ids[rows == 200].tolist() == [3] and w[rows == 200].tolist() == [1.0]


def test_evaluate_without_ease_or_baselines(u1_models):
    model = str(u1_models[0])  # a retrieval model on ml-100k u1

    def names(*flags: str) -> tuple[list[str], list[str]]:
        proc = run_cli("recsys.evaluate", "--model-dir", model, "--json", *flags)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        return [r["model"] for r in doc["rows"]], [r["model"].split(" (")[0] for r in doc["top_n"]["rows"]]

    assert names("--ease-items", "0")[1] == ["popularity", "retrieval"]
    assert names("--no-baselines") == ([], ["retrieval"])
    assert_one_line_error(run_cli("recsys.evaluate", "--model-dir", model, "--ease-items", "-1"), "--ease-items")
