"""Settings side by side, on validation and on test: NDCG@10 per fold, one line per flag set.

    python benchmarks/topn_sweep.py "" "--temperature 0.15" [--ranking "" "--hard-negatives 0"] [--refit]
                                    [--folds u1 u2 u3 u4 u5] [--no-test]

(`--ranking` and `--folds` go after the retrieval flag sets: those start with dashes.)

Each retrieval flag set trains `recsys.train --objective retrieval` on every fold twice: on the fold's
validation split `uN:val` (its training ratings alone, a seeded tenth of them standing in for the test set)
and on the fold itself; each `--ranking` flag set then trains a ranking network on each of those retrieval
models. With `--refit`, each retrieval flag set is trained once more with `--holdout 0` (every training rating:
the refit), and scored alone and as the first stage before each of those ranking networks. A line shows the
last epoch's full-ranking NDCG@10 on validation, then on test. Defaults are chosen on the validation columns;
the test columns are only reported.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import META


def two_stages(first: Path, ranking: Path, dataset: str, split: str, data_dir: str) -> float:
    """NDCG@10 of the retrieval model `first` reordered by the ranking network `ranking`, every test user."""
    from recsys import Recommender, movielens

    return Recommender.load(first, ranking).evaluate(movielens.load(dataset, data_dir, split))["ndcg"]


def train(model: Path, dataset: str, split: str, data_dir: str, flags: list[str]) -> float:
    cmd = ["recsys.train", "--dataset", dataset, "--split", split, "--data-dir", data_dir, "--model-dir", str(model)]
    subprocess.run([sys.executable, "-m", *cmd, *flags], check=True, capture_output=True)
    return json.loads((model / "metrics.json").read_text())[-1]["test_ndcg@10"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("flag_sets", nargs="+", help='retrieval flags per line, quoted ("" for the defaults)')
    ap.add_argument("--ranking", nargs="*", default=[], help="ranking flag sets, trained on each retrieval model")
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--data-dir", default=str(META.parent))
    ap.add_argument("--folds", nargs="+", default=["u1", "u2", "u3", "u4", "u5"])
    ap.add_argument("--no-test", action="store_true", help="validation only")
    ap.add_argument("--refit", action="store_true", help="also the refit (--holdout 0), alone and first")
    args = ap.parse_args()
    kinds = ["val"] if args.no_test else ["val", "test"]
    head = " | ".join(f"{kind} {f}" for kind in kinds for f in [*args.folds, "mean"])
    print(f"flags | {head} | seconds", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, flags in enumerate(args.flag_sets):
            name = f"retrieval {flags or '(defaults)'}"
            lines: dict[str, dict[str, list[float]]] = {}  # line name -> kind -> NDCG@10 per fold
            t = time.perf_counter()
            for kind in kinds:
                for split in args.folds:
                    split_name = f"{split}:val" if kind == "val" else split
                    where = (args.dataset, split_name, args.data_dir)
                    retrieval, refit = (Path(tmp) / f"{x}{i}-{kind}-{split}" for x in ("r", "f"))
                    base = ["--objective", "retrieval", *shlex.split(flags)]
                    got = {name: train(retrieval, *where, base)}
                    if args.refit:
                        got[f"{name} --holdout 0 (refit)"] = train(refit, *where, [*base, "--holdout", "0"])
                    for j, rflags in enumerate(args.ranking):
                        ranker = ["--objective", "ranking", "--candidates-from", str(retrieval), *shlex.split(rflags)]
                        model = Path(tmp) / f"k{i}-{j}-{kind}-{split}"
                        got[f"{name} -> ranking {rflags or '(defaults)'}"] = train(model, *where, ranker)
                        if args.refit:
                            got[f"{name} refit -> ranking {rflags or '(defaults)'}"] = two_stages(refit, model, *where)
                    for line, value in got.items():
                        lines.setdefault(line, {}).setdefault(kind, []).append(value)
            for line, values in lines.items():
                cells = " | ".join(
                    " | ".join(f"{v:.4f}" for v in values[kind]) + f" | {sum(values[kind]) / len(values[kind]):.4f}"
                    for kind in kinds
                )
                print(f"{line} | {cells} | {time.perf_counter() - t:.0f}", flush=True)


if __name__ == "__main__":
    main()
