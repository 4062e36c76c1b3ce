"""What a signal the towers do not have would add to the first stage's order, on validation splits:

    python benchmarks/ranker_signals.py                       (ml-100k u1:val .. u5:val)
    python benchmarks/ranker_signals.py --folds u1 u2 --candidates 100
    python benchmarks/ranker_signals.py --folds u1 u2 u3 u4 u5 temporal --recent    (the time signals too)

Each fold's validation split (`uN:val`: the fold's training ratings alone, a seeded tenth standing in for the
test set) trains the retrieval model and the chapter's rating model with their defaults, and fits EASE (λ 500)
on the same training ratings. Every validation user's first-stage candidates are then ordered by
z(first-stage score) + w · z(signal), z standardising each user's candidates, for each weight w: NDCG@10 per
fold and their mean, w = 0 being the first stage's own order. A signal worth a ranking feature lifts the mean
at some w > 0; test ratings are never read. `--recent` adds signals of time, from the training ratings'
timestamps alone: the movie's training ratings within 30 days of the user's own first and last (its popularity
while the user was rating), and EASE's score and the towers' cosine from the user's 20 latest movies alone.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from common import META

from recsys import Recommender, movielens, topn, train
from recsys.topn import filters, stages
from recsys.topn.metrics import Interactions, metrics

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5)
DAY = 86_400
LATEST = 20  # the user's latest training ratings that `--recent`'s signals read


def standardised(x: np.ndarray) -> np.ndarray:
    """Each row minus its mean, over its standard deviation."""
    return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-9)


def while_rating(data, users: np.ndarray, movies: np.ndarray, margin: int = 30 * DAY) -> np.ndarray:
    """[n, k]: each movie row `movies[i, j]`'s training ratings within `margin` seconds of the user row
    `users[i]`'s first and last training ratings."""
    train_ = ~data.is_test
    user, movie, when = data.user[train_], data.movie[train_].astype(np.int64), data.timestamp[train_]
    first = np.full(data.user.max() + 1, np.iinfo(np.int64).max)
    last = np.full(data.user.max() + 1, np.iinfo(np.int64).min)
    np.minimum.at(first, user, when)
    np.maximum.at(last, user, when)
    keys = np.sort(movie << 34 | (when - when.min()))  # by movie, then by time
    start = (movies << 34) + np.maximum(first[users] - when.min() - margin, 0)[:, None]
    end = (movies << 34) + (last[users] - when.min() + margin)[:, None]
    return np.searchsorted(keys, end, "right") - np.searchsorted(keys, start, "left")


def latest(data, users: np.ndarray, md) -> list[np.ndarray]:
    """Each user row's `LATEST` latest training movies, as catalogue columns."""
    train_ = ~data.is_test
    user, movie, when = data.user[train_], data.movie[train_], data.timestamp[train_]
    order = np.lexsort((-when, user))  # by user, the latest first
    user, cols = user[order], np.searchsorted(md.movie_ids, movie[order])
    starts, ends = np.searchsorted(user, users), np.searchsorted(user, users, "right")
    return [cols[a : min(b, a + LATEST)] for a, b in zip(starts, ends)]


def time_signals(data, users: np.ndarray, cols: np.ndarray, md, ease) -> dict[str, np.ndarray]:
    """`--recent`'s signals of the candidates `cols` [n, k]."""
    recent = latest(data, users, md)
    history = np.zeros((len(users), len(md.movie_ids)), np.float32)
    for i, c in enumerate(recent):
        history[i, c] = 1.0
    movies = md.catalogue_vectors
    query = np.stack([movies[c].mean(0) for c in recent])
    return {
        "ratings of the movie while the user rated (+-30 days)": np.log1p(
            while_rating(data, users, md.movie_ids[cols].astype(np.int64))
        ),
        f"EASE λ 500 of the {LATEST} latest movies": np.take_along_axis(history @ ease.b, cols, 1),
        f"towers' cosine to the {LATEST} latest movies": np.einsum("nd,nkd->nk", query, movies[cols]),
    }


def fold(split: str, data_dir: str, tmp: Path, n: int, recent: bool = False) -> dict[str, list[float]]:
    """NDCG@10 at each weight of each signal on the validation split `split`."""
    where = {"dataset": "ml-100k", "split": split, "data_dir": data_dir, "log": lambda _line: None}
    train.run(objective="retrieval", model_dir=tmp / f"{split}-retrieval", **where)
    train.run(objective="rating", model_dir=tmp / f"{split}-rating", **where)
    first, rating = Recommender.load(tmp / f"{split}-retrieval"), Recommender.load(tmp / f"{split}-rating")
    md = first.model
    data = movielens.load("ml-100k", data_dir, split)
    ranking = Interactions.build(md.movie_ids, data.user, data.movie, data.stars, data.is_test)
    users = ranking.eval_users()
    seen = ranking.train_matrix(users, bool)
    cols, score = filters.top_k_outside(stages.first_stage(md), None, md.catalogue_vectors,
                                        md.arrays["user_vectors"][users], seen, None, n)[:2]  # fmt: skip
    ease = topn.EASE(500.0).fit(ranking)
    signals = {
        "EASE λ 500": np.take_along_axis(ease.scores(users), cols, 1),
        "rating model stars": np.stack([rating.first.predict(int(u), c) for u, c in zip(users, cols)]),
    }
    if recent:
        signals |= time_signals(data, users, cols, md, ease)
    out, base = {}, standardised(score)
    for name, signal in signals.items():
        out[name], z = [], standardised(signal)
        for w in WEIGHTS:
            order = np.argsort(-(base + w * z), 1, kind="stable")[:, :10]
            best = np.take_along_axis(cols, order, 1)
            out[name].append(metrics(best, ranking.relevant(), 10, len(ranking.catalogue))["ndcg"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--folds", nargs="+", default=["u1", "u2", "u3", "u4", "u5"])
    ap.add_argument("--candidates", type=int, default=200, help="the first stage's (default: %(default)s)")
    ap.add_argument("--data-dir", default=str(META.parent), help="holding ml-100k.zip (default: %(default)s)")
    ap.add_argument("--recent", action="store_true", help="add the signals of time (see above)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {f: fold(f"{f}:val", args.data_dir, Path(tmp), args.candidates, args.recent) for f in args.folds}
    print(f"NDCG@10 on validation, {args.candidates} candidates ordered by z(first stage) + w z(signal)")
    for name in next(iter(runs.values())):
        print(f"\n{name}")
        print(f"{'w':>6s}" + "".join(f"{f + ':val':>13s}" for f in args.folds) + f"{'mean':>10s}{'x w=0':>8s}")
        mean = np.mean([runs[f][name] for f in args.folds], 0)
        for i, w in enumerate(WEIGHTS):
            cells = "".join(f"{runs[f][name][i]:13.4f}" for f in args.folds)
            print(f"{w:6.1f}{cells}{mean[i]:10.4f}{mean[i] / mean[0]:8.3f}")


if __name__ == "__main__":
    main()
