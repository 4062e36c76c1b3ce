"""What a signal the towers do not have would add to the first stage's order, on validation splits:

    python benchmarks/ranker_signals.py                       (ml-100k u1:val .. u5:val)
    python benchmarks/ranker_signals.py --folds u1 u2 --candidates 100

Each fold's validation split (`uN:val`: the fold's training ratings alone, a seeded tenth standing in for the
test set) trains the retrieval model and the chapter's rating model with their defaults, and fits EASE (λ 500)
on the same training ratings. Every validation user's first-stage candidates are then ordered by
z(first-stage score) + w · z(signal), z standardising each user's candidates, for each weight w: NDCG@10 per
fold and their mean, w = 0 being the first stage's own order. A signal worth a ranking feature lifts the mean
at some w > 0; test ratings are never read.
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


def standardised(x: np.ndarray) -> np.ndarray:
    """Each row minus its mean, over its standard deviation."""
    return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-9)


def fold(split: str, data_dir: str, tmp: Path, n: int) -> dict[str, list[float]]:
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
    out = {}
    for name, signal in signals.items():
        out[name] = []
        for w in WEIGHTS:
            order = np.argsort(-(standardised(score) + w * standardised(signal)), 1, kind="stable")[:, :10]
            best = np.take_along_axis(cols, order, 1)
            out[name].append(metrics(best, ranking.relevant(), 10, len(ranking.catalogue))["ndcg"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--folds", nargs="+", default=["u1", "u2", "u3", "u4", "u5"])
    ap.add_argument("--candidates", type=int, default=200, help="the first stage's (default: %(default)s)")
    ap.add_argument("--data-dir", default=str(META.parent), help="holding ml-100k.zip (default: %(default)s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {f: fold(f"{f}:val", args.data_dir, Path(tmp), args.candidates) for f in args.folds}
    print(f"NDCG@10 on validation, {args.candidates} candidates ordered by z(first stage) + w z(signal)")
    for name in next(iter(runs.values())):
        print(f"\n{name}")
        print(f"{'w':>6s}" + "".join(f"{f + ':val':>10s}" for f in args.folds) + f"{'mean':>10s}{'x w=0':>8s}")
        mean = np.mean([runs[f][name] for f in args.folds], 0)
        for i, w in enumerate(WEIGHTS):
            cells = "".join(f"{runs[f][name][i]:10.4f}" for f in args.folds)
            print(f"{w:6.1f}{cells}{mean[i]:10.4f}{mean[i] / mean[0]:8.3f}")


if __name__ == "__main__":
    main()
