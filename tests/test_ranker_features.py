"""The ranking network's pair features: one function of the training split, the same in training, evaluation and
serving, and no test rating moves them."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from recsys import Recommender, movielens, synthetic, train
from recsys.modeldir import ModelDir
from recsys.topn import stages
from recsys.topn.rerank import FEATURE_SETS, FEATURES, head_scores, served_features
from recsys.training.ranking import stack

N = 20  # the candidates each ranker reorders


def _plant(plain, out) -> tuple[int, int]:
    """A copy of the archive `plain` in `out` with one more rating: a user whose rating count ends in 4 (so the
    temporal rule's test set grows by one and takes no training rating) rates the movie whose genres they rated
    least, five stars, later than any rating in the archive: a test rating of the temporal split. Returns
    (user id, movie id)."""
    with zipfile.ZipFile(plain / "ml-1m.zip") as z:
        members = {name: z.read(name) for name in z.namelist()}
    rows = np.array([line.split("::") for line in members["ml-1m/ratings.dat"].decode().split()], np.int64)
    genres = {
        int(m.split("::")[0]): m.split("::")[2].split("|") for m in members["ml-1m/movies.dat"].decode().splitlines()
    }
    counts = np.bincount(rows[:, 0])
    user = int(np.flatnonzero((counts % 10 == 4) & (counts >= 14))[0])
    theirs = rows[rows[:, 0] == user, 1]
    liked = [g for m in theirs for g in genres[int(m)]]
    unrated = [m for m in sorted(genres) if m not in set(theirs.tolist()) and m in set(rows[:, 1].tolist())]
    movie = min(unrated, key=lambda m: (sum(liked.count(g) for g in genres[m]), m))
    line = f"{user}::{movie}::5::{int(rows[:, 3].max()) + 10**8}\n"
    members["ml-1m/ratings.dat"] += line.encode()
    out.mkdir()
    with zipfile.ZipFile(out / "ml-1m.zip", "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return user, movie


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """One tiny archive with and without a planted test rating (see `_plant`), each with a one-epoch retrieval
    model and a one-epoch ranking network reading all the pair features (`--pair-features all`) on its temporal
    split: {name: (data, retrieval dir, ranking dir)}, and the planted (user id, movie id)."""
    root = tmp_path_factory.mktemp("ranker-features")
    synthetic.write_ml1m(root / "plain", 8000, seed=5, n_users=200, n_movies=150)
    user, movie = _plant(root / "plain", root / "planted")
    runs = {}
    for name in ("plain", "planted"):
        flags = {"dataset": "ml-1m", "split": "temporal", "data_dir": root / name, "log": lambda _m: None, "epochs": 1}
        retrieval, ranking = root / f"{name}-retrieval", root / f"{name}-ranking"
        train.run(objective="retrieval", model_dir=retrieval, **flags)
        train.run(objective="ranking", model_dir=ranking, candidates_from=retrieval, candidates=N,
                  pair_features="all", **flags)  # fmt: skip
        runs[name] = (movielens.load("ml-1m", root / name, "temporal"), retrieval, ranking)
    return runs, (user, movie)


def _stack(data, retrieval, ranking):
    """The ranker's `Stack` rebuilt as its training built it (its saved settings)."""
    s = ModelDir.load(ranking).meta["settings"]
    names = FEATURE_SETS[s["pair_features"]]
    return stack(data, str(retrieval), s["candidates"], s["item_neighbours"], s["exact"], s["val_ratio"], s["seed"],
                 names)  # fmt: skip


def _all_pairs(cand) -> tuple[np.ndarray, np.ndarray]:
    users = np.repeat(np.arange(len(cand.pool)), cand.pool.shape[1])
    return users, np.maximum(cand.pool, 0).ravel()


def test_a_planted_test_rating_moves_no_feature(planted):
    runs, (user, movie) = planted
    (plain, *plain_dirs), (data, *dirs) = runs["plain"], runs["planted"]
    assert data.is_test[-1] and len(data.user) == len(plain.user) + 1  # the planted rating is a test rating
    assert (data.is_test[:-1] == plain.is_test).all()
    was, now = _stack(plain, *plain_dirs), _stack(data, *dirs)
    for which in ("fit_candidates", "candidates"):  # training's candidates, and evaluation's (and the saved ones)
        a, b = getattr(was, which), getattr(now, which)
        np.testing.assert_array_equal(a.pool, b.pool)
        np.testing.assert_array_equal(a.features(*_all_pairs(a)), b.features(*_all_pairs(b)))
    for name in ("log_share", "movie_stars", "recent_share", "latest_movies"):
        np.testing.assert_array_equal(ModelDir.load(plain_dirs[1]).arrays[name], ModelDir.load(dirs[1]).arrays[name])
    served = [Recommender.load(r, rerank=k).recommend(user, k=N, exclude_rated="train") for r, k in (plain_dirs, dirs)]
    assert served[0]["recommendations"] == served[1]["recommendations"]


def _hand_features(data, md: ModelDir, rerank: ModelDir, user_row: int, cols: np.ndarray) -> np.ndarray:
    """The eight pair features of one user's catalogue columns, computed here from the training ratings of `data`,
    the retrieval model dir `md` (its vectors) and the ranking model dir `rerank` (its item-item weights)."""
    train_idx = np.flatnonzero(~data.is_test)
    catalogue = md.movie_ids
    col_of = np.searchsorted(catalogue, data.movie[train_idx])
    stars, stamps = data.stars[train_idx].astype(np.float64), data.timestamp[train_idx]
    history = np.zeros(len(catalogue))
    history[col_of[data.user[train_idx] == user_row]] = 1.0
    cosine = md.catalogue_vectors[cols] @ md.arrays["user_vectors"][user_row]
    counts = np.bincount(col_of, minlength=len(catalogue)) + 1.0
    share = np.log(counts / counts.sum())
    genre = np.zeros((len(catalogue), data.sizes()["n_categories"] + 1))
    for c, row in enumerate(catalogue):
        genre[c, data.tables.category[row]] = 1.0
    genre = genre[:, :-1]
    user_share = history @ genre / history.sum()
    affinity = genre[cols] @ user_share / np.maximum(genre[cols].sum(1), 1)
    sums = np.bincount(col_of, stars - stars.mean(), minlength=len(catalogue))
    mean = sums / (np.bincount(col_of, minlength=len(catalogue)) + 10.0)
    latest = col_of[stamps >= np.sort(stamps)[int(np.floor(0.9 * (len(stamps) - 1)))]]
    recent = np.bincount(latest, minlength=len(catalogue)) + 1.0
    item = history @ rerank.item_item.toarray()[:, cols]
    activity = np.full(len(cols), np.log1p(history.sum()))
    mine = np.flatnonzero(data.user[train_idx] == user_row)
    newest = np.zeros(len(catalogue))  # their 20 latest, ties in file order
    newest[col_of[mine[np.lexsort((mine, stamps[mine]))][-20:]]] = 1.0
    latest_item = newest @ rerank.item_item.toarray()[:, cols]
    recent_share = np.log(recent / recent.sum())[cols]
    return np.stack([cosine, share[cols], item, affinity, mean[cols], recent_share, activity, latest_item], 1)


def test_served_features_are_the_trained_ones_and_computed_by_hand(planted):
    runs, (user, _) = planted
    data, retrieval, ranking = runs["planted"]
    cand = _stack(data, retrieval, ranking).candidates
    rec = Recommender.load(retrieval, rerank=ranking)
    md, rerank, row = rec.model, rec.rerank, rec.user_row(user)
    doc = rec.recommend(user, k=N, exclude_rated="train")  # every candidate, scored by the served head
    cols = np.searchsorted(md.movie_ids, [md.movie_row(r["movie_id"]) for r in doc["recommendations"]])
    np.testing.assert_array_equal(np.sort(cols), np.sort(cand.pool[row]))  # the served pool is evaluation's
    trained = cand.features(np.full(len(cols), row), cols)
    seen = stages.seen_columns(md, stages.seen(md, row))
    latest = rerank.arrays["latest_movies"][[row]]
    served = served_features(rec.first, rerank, md.arrays["user_vectors"][[row]], seen, cols[None], latest)[0]
    np.testing.assert_allclose(served, trained, rtol=1e-6, atol=1e-7)
    assert served.shape == (len(cols), len(FEATURES))
    np.testing.assert_allclose(served, _hand_features(data, md, rerank, row, cols), rtol=1e-5, atol=1e-6)
    outputs = rerank.arrays["user_outputs"][row], rerank.arrays["movie_outputs"][md.movie_ids[cols]]
    logits = head_scores(rerank.head_params, *outputs, trained)
    np.testing.assert_allclose([r["score"] for r in doc["recommendations"]], logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", ["none", "", "ALL"])
def test_a_bad_pair_features_value_is_one_line(value, tmp_path):
    proc = run_cli("recsys.train", "--model-dir", str(tmp_path / "m"), "--objective", "ranking",
                   "--candidates-from", str(tmp_path / "r"), "--pair-features", value)  # fmt: skip
    assert_one_line_error(proc, "--pair-features")
    assert not (tmp_path / "m").exists()


def test_the_default_ranker_reads_the_latest_movies_and_trains_longer_on_labels_held_out_by_time(planted, tmp_path):
    """Without `--pair-features` the head reads the first three and the latest movies' item-item score (the dir
    saves no other movie feature); on a first stage that held each user's latest ratings out (a temporal split)
    it trains 10 epochs, on one that held them out at random 3."""
    runs, _ = planted
    data, retrieval, _ = runs["plain"]
    flags = {"dataset": "ml-1m", "data_dir": data.source.parent, "log": lambda _m: None, "max_batches": 2}
    train.run(objective="ranking", model_dir=tmp_path / "k", candidates_from=retrieval, candidates=N,
              split="temporal", **flags)  # fmt: skip
    k = ModelDir.load(tmp_path / "k")
    s = k.meta["settings"]
    assert s["pair_features"] == "latest" and k.head_params["head.linear"].shape == (4, 1)
    assert "movie_stars" not in k.arrays and {"log_share", "latest_movies"} <= set(k.arrays)
    assert s["epochs"] == 10 and s["candidates_settings"]["holdout_by"] == "time"
    train.run(objective="retrieval", model_dir=tmp_path / "r", split="random", **flags)
    train.run(objective="ranking", model_dir=tmp_path / "k2", candidates_from=tmp_path / "r", candidates=N,
              split="random", **flags)  # fmt: skip
    s = ModelDir.load(tmp_path / "k2").meta["settings"]
    assert s["epochs"] == 3 and s["candidates_settings"]["holdout_by"] == "random"


def test_on_a_temporal_split_the_ranker_learns_from_each_users_latest_ratings(planted):
    """`--holdout-by split` (the default) on a temporal split: the held-out tenth, the ranker's labels, is each
    user's latest tenth of their training ratings (less validation), rounded half up."""
    runs, _ = planted
    data, retrieval, ranking = runs["plain"]
    assert ModelDir.load(retrieval).meta["settings"]["holdout_by"] == "time"
    fit = _stack(data, retrieval, ranking).fit_idx
    trained = np.flatnonzero(~data.is_test)  # the retrieval model's validation slice is empty by default
    held = np.setdiff1d(trained, fit)
    for user in np.unique(data.user[trained]):
        mine, out = fit[data.user[fit] == user], held[data.user[held] == user]
        assert len(out) == (len(mine) + len(out) + 5) // 10
        if len(out):
            assert data.timestamp[mine].max() <= data.timestamp[out].min()


def test_a_served_users_latest_movies_are_their_training_ones_then_the_rated(planted):
    """The latest-movies feature reads the user's 20 latest training movies; a request's rated movies are the
    newest (oldest dropped; a movie rated again moves to the newest place)."""
    runs, (user, _) = planted
    data, retrieval, ranking = runs["plain"]
    rec = Recommender.load(retrieval, rerank=ranking)
    md, row = rec.model, rec.user_row(user)
    mine = np.flatnonzero((data.user == row) & ~data.is_test)
    by_time = np.searchsorted(md.movie_ids, data.movie[mine[np.lexsort((mine, data.timestamp[mine]))]])
    saved = rec.rerank.arrays["latest_movies"][row]
    expect = np.full(20, -1)
    expect[20 - min(20, len(by_time)) :] = by_time[-20:]
    np.testing.assert_array_equal(saved, expect)
    unrated = [c for c in range(len(md.movie_ids)) if c not in set(by_time.tolist())][:2]
    again = int(saved[-5])  # a training movie rated again
    rated = [(int(md.movie_ids[c]), 4.0) for c in (unrated[0], again, unrated[1])]
    _, latest = rec.lists.second.user_inputs(row, None, rated)
    kept = [c for c in saved.tolist() if c not in (again, -1)] + [unrated[0], again, unrated[1]]
    np.testing.assert_array_equal(latest[0], ([-1] * 20 + kept)[-20:])


@pytest.mark.parametrize("value", ["latest", "", "Time"])
def test_a_bad_holdout_by_value_is_one_line(value, tmp_path):
    proc = run_cli("recsys.train", "--model-dir", str(tmp_path / "m"), "--objective", "retrieval",
                   "--holdout-by", value)  # fmt: skip
    assert_one_line_error(proc, "--holdout-by")
    assert not (tmp_path / "m").exists()


def test_holding_out_by_time_needs_timestamps(tmp_path):
    folder = tmp_path / "own"
    folder.mkdir()
    rows = [f"{u},{m},{1 + (u * m) % 5}" for u in range(1, 31) for m in range(1, 41) if (u + m) % 3]
    (folder / "ratings.csv").write_text("userId,movieId,rating\n" + "\n".join(rows) + "\n")
    proc = run_cli("recsys.train", "--dataset", "csv", "--data-dir", str(folder), "--model-dir", str(tmp_path / "m"),
                   "--objective", "retrieval", "--holdout-by", "time")  # fmt: skip
    assert_one_line_error(proc, "--holdout-by time needs timestamps")
    assert not (tmp_path / "m").exists()
