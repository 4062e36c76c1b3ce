"""Cold start: how well does the model score users it never saw, from gender, age and job alone?

    python benchmarks/cold_start.py [--data-dir ../shared/data] [--epochs 20] [--rates 0 0.05 0.2]

On real ml-100k (chapter split rule), 10% of the users are held out: none of their ratings is trained on.
Models are trained with and without `--cold-start-rate` (a share of training samples whose user id is
replaced by the unknown id 0); every held-out rating is then scored as user 0 with the user's features.
The reference is the user+movie bias baseline fitted on the same training ratings (for an unknown user:
mean + movie bias).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT

from recsys import movielens, train
from recsys.modeldir import ModelDir
from recsys.rating.baselines import Biases, GlobalMean
from recsys.rating.metrics import scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument(
        "--rates", type=float, nargs="+", default=[0.0, 0.05, 0.2], help="--cold-start-rate values to train"
    )
    ap.add_argument("--holdout", type=float, default=0.1, help="share of users held out of training")
    args = ap.parse_args()
    data = movielens.load("ml-100k", args.data_dir, "random")
    users = np.unique(data.user)
    held = np.random.RandomState(7).choice(users, int(len(users) * args.holdout), replace=False)
    out = np.isin(data.user, held)
    keep = lambda a: a[~out]  # noqa: E731
    seen = dataclasses.replace(
        data, user=keep(data.user), movie=keep(data.movie), stars=keep(data.stars), is_test=keep(data.is_test)
    )
    g, a, j = (data.tables.user[data.user[out], c] for c in range(3))
    label = data.label[out, 0]
    rows = []
    fit = ~seen.is_test
    for b in (GlobalMean(), Biases()):
        b.fit(seen.user[fit], seen.movie[fit], seen.stars[fit])
        rows.append((b.name, scores(2 * b.predict(data.user[out], data.movie[out]) - 5, label), 0.0))
    for rate in args.rates:
        with tempfile.TemporaryDirectory() as tmp:
            flags = ["--dataset", "ml-100k", "--model-dir", str(Path(tmp) / "m"), "--epochs", str(args.epochs)]
            t = time.perf_counter()
            train.train(train.parse_args(flags + ["--cold-start-rate", str(rate)]), seen, log=lambda _: None)
            seconds = time.perf_counter() - t
            md = ModelDir.load(Path(tmp) / "m")
            feeds = movielens.unknown_user_features(g, a, j) | md.tables.movie_features(data.movie[out])
            pred = md.predictor(feeds)[:, 0]
        rows.append((f"recsys model, --cold-start-rate {rate}", scores(pred, label), seconds))
    print(f"ml-100k: {len(held)} of {len(users)} users held out ({out.sum():,} ratings); trained on the rest")
    print(f"{'scored as an unknown user':<40}{'RMSE':>8}{'MAE':>8}{'train s':>9}")
    for name, s, sec in rows:
        print(f"{name:<40}{s['rmse']:8.4f}{s['mae']:8.4f}{sec:9.1f}")


if __name__ == "__main__":
    main()
