"""Score a trained model and baselines on the same test split: `python -m recsys.evaluate --model-dir DIR`.

The model runs through its saved inference model; the baselines (global mean, user+movie biases, a small
matrix factorisation) are fitted here, on the same training split. Costs are the chapter's (mean square
error on 2*stars-5); RMSE and MAE are in stars, predictions clipped to 1..5.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from recsys import movielens
from recsys.baselines import Biases, GlobalMean, MatrixFactorization
from recsys.errors import ArgumentParser, RecsysError, cli
from recsys.modeldir import ModelDir
from recsys.movielens import MovieLens
from recsys.train import scores


def model_scores(md: ModelDir, data: MovieLens, idx: np.ndarray, batch: int = 8192) -> np.ndarray:
    """The saved model's scores (label space) for the ratings `idx`, through `paddle.inference`."""
    out = []
    for s in range(0, len(idx), batch):
        part = idx[s : s + batch]
        out.append(md.predictor(md.tables.features(data.user[part], data.movie[part]))[:, 0])
    return np.concatenate(out)


def compare(md: ModelDir, data: MovieLens) -> list[dict]:
    """One row per predictor on the test split: name, cost, rmse, mae, seconds (fit + predict)."""
    if md.meta["sizes"] != data.sizes() or md.meta["title_words"] != data.meta.title_words:
        raise RecsysError(f"{md.path} was trained on other data ({md.meta['dataset']} from {md.meta['source']})")
    test, train = np.flatnonzero(data.is_test), ~data.is_test
    label = data.label[test, 0]
    t = time.perf_counter()
    rows = [{"model": f"recsys model ({md.path.name})", **scores(model_scores(md, data, test), label)}]
    rows[0]["seconds"] = time.perf_counter() - t
    for baseline in (GlobalMean(), Biases(), MatrixFactorization()):
        t = time.perf_counter()
        baseline.fit(data.user[train], data.movie[train], data.stars[train])
        stars = baseline.predict(data.user[test], data.movie[test])
        rows.append({"model": baseline.name, **scores(2 * stars - 5, label), "seconds": time.perf_counter() - t})
    return rows


def _data_for(md: ModelDir, args: argparse.Namespace) -> MovieLens:
    dataset = args.dataset or md.meta["dataset"]
    split = args.split or md.meta["split"]
    data_dir = args.data_dir
    source = Path(md.meta["source"])
    if data_dir is None and dataset == md.meta["dataset"] and source.exists():
        data_dir = source if source.is_dir() else source.parent
    return movielens.load(dataset, data_dir, split)


@cli
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m recsys.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default="recommender_system.inference.model", help="default: %(default)s")
    ap.add_argument("--dataset", choices=sorted(movielens.SPLITS), help="default: the model's")
    ap.add_argument("--split", help="default: the model's")
    ap.add_argument("--data-dir", help="default: where the model's training data was found")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    md = ModelDir.load(args.model_dir)
    data = _data_for(md, args)
    rows = compare(md, data)
    n_test = int(data.is_test.sum())
    head = {"dataset": data.meta.dataset, "split": data.split, "n_train": len(data.user) - n_test, "n_test": n_test}
    if args.json:
        print(json.dumps({**head, "rows": rows}))
        return 0
    print(f"{head['dataset']} split {head['split']}: {head['n_train']:,} training, {head['n_test']:,} test ratings")
    width = max(len(r["model"]) for r in rows)
    print(f"{'':<{width}}  {'test cost':>9}  {'RMSE':>6}  {'MAE':>6}")
    for r in rows:
        print(f"{r['model']:<{width}}  {r['cost']:9.4f}  {r['rmse']:6.4f}  {r['mae']:6.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
