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
    width = FEATURE_SETS[s["pair_features"]]
    return stack(data, str(retrieval), s["candidates"], s["item_neighbours"], s["exact"], s["val_ratio"], s["seed"],
                 width)  # fmt: skip


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
    for name in ("log_share", "movie_stars", "recent_share"):
        np.testing.assert_array_equal(ModelDir.load(plain_dirs[1]).arrays[name], ModelDir.load(dirs[1]).arrays[name])
    served = [Recommender.load(r, rerank=k).recommend(user, k=N, exclude_rated="train") for r, k in (plain_dirs, dirs)]
    assert served[0]["recommendations"] == served[1]["recommendations"]


def _hand_features(data, md: ModelDir, rerank: ModelDir, user_row: int, cols: np.ndarray) -> np.ndarray:
    """The seven pair features of one user's catalogue columns, computed here from the training ratings of `data`,
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
    return np.stack([cosine, share[cols], item, affinity, mean[cols], np.log(recent / recent.sum())[cols], activity], 1)


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
    served = served_features(rec.first, rerank, md.arrays["user_vectors"][[row]], seen, cols[None])[0]
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


def test_the_default_ranker_reads_the_three_basic_features(planted, tmp_path):
    """Without `--pair-features` the head reads the first three (and the dir saves no other movie feature)."""
    runs, _ = planted
    data, retrieval, _ = runs["plain"]
    flags = {"dataset": "ml-1m", "split": "temporal", "data_dir": data.source.parent, "log": lambda _m: None}
    train.run(objective="ranking", model_dir=tmp_path / "k", candidates_from=retrieval, candidates=N, max_batches=2,
              **flags)  # fmt: skip
    k = ModelDir.load(tmp_path / "k")
    assert k.meta["settings"]["pair_features"] == "basic" and k.head_params["head.linear"].shape == (3, 1)
    assert "movie_stars" not in k.arrays and "log_share" in k.arrays
