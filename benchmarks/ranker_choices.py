"""The ranking network's defaults, chosen on validation splits alone, in one run:

    python benchmarks/ranker_choices.py [--folds u1 u2 u3 u4 u5 temporal] [--pair-features basic latest all]
                                        [--epochs 3 10]

For each ml-100k validation split `S:val` (`u1:val` … `u5:val`: a seeded tenth of the fold's training ratings;
`temporal:val`: each user's latest tenth of the temporal split's training ratings), a retrieval model with each
`--holdout-by` rule (random: a seeded tenth of the training ratings are the ranker's labels; time: each user's
latest tenth), then a ranking network on each with each `--pair-features` set and each number of `--epochs`,
all with their other defaults through `recsys.train.run`. Prints NDCG@10 on the split's validation ratings of
the first stage alone and of the two stages, per split, and their mean over the random folds; writes them to
`benchmarks/results/ranker_choices.json`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import META, results_table, write_results

from recsys import Recommender, movielens, train

RULES = ("random", "time")


def fold(name: str, sets: list[str], epochs: list[int], tmp: Path) -> dict[str, float]:
    """NDCG@10 on `name:val` of each first stage and each (rule, feature set, epochs) two stages."""
    split, data_dir = f"{name}:val", META.parent
    where = {"dataset": "ml-100k", "split": split, "data_dir": data_dir, "log": lambda _line: None}
    data = movielens.load("ml-100k", data_dir, split)
    out = {}
    for rule in RULES:
        retrieval = tmp / f"{name}-{rule}"
        train.run(objective="retrieval", model_dir=retrieval, holdout_by=rule, **where)
        out[f"first stage, holdout by {rule}"] = Recommender.load(retrieval).evaluate(data)["ndcg"]
        for features in sets:
            for n in epochs:
                ranking = tmp / f"{name}-{rule}-{features}-{n}"
                train.run(objective="ranking", model_dir=ranking, candidates_from=retrieval, pair_features=features,
                          epochs=n, **where)  # fmt: skip
                ndcg = Recommender.load(retrieval, ranking).evaluate(data)["ndcg"]
                out[f"two stages, holdout by {rule}, {features}, {n} epochs"] = ndcg
        print(f"  {split}: " + ", ".join(f"{k} {v:.4f}" for k, v in out.items() if rule in k), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folds", nargs="+", default=["u1", "u2", "u3", "u4", "u5", "temporal"])
    ap.add_argument("--pair-features", nargs="+", default=["basic", "latest", "all"])
    ap.add_argument("--epochs", nargs="+", type=int, default=[3, 10])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: fold(name, args.pair_features, args.epochs, Path(tmp)) for name in args.folds}
    names = list(next(iter(results.values())))
    random_folds = [f for f in args.folds if f != "temporal"]
    columns = [f"{f}:val" for f in args.folds] + (["mean (random folds)"] if len(random_folds) > 1 else [])
    rows = []
    for name in names:
        cells = [results[f][name] for f in args.folds]
        if len(random_folds) > 1:
            cells.append(sum(results[f][name] for f in random_folds) / len(random_folds))
        rows.append([name, *cells])
    print("\nNDCG@10 on validation | " + " | ".join(columns))
    for name, *cells in rows:
        print(f"{name} | " + " | ".join(f"{c:.4f}" for c in cells))
    command = "python benchmarks/ranker_choices.py"
    table = results_table(
        "validation", "NDCG@10 on validation splits", ["", *columns], rows, [None] + [4] * len(columns)
    )
    write_results("ranker_choices", command, [table])


if __name__ == "__main__":
    main()
