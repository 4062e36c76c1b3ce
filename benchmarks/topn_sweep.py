"""Settings side by side, on validation and on test: NDCG@10 per fold, one line per flag set.

    python benchmarks/topn_sweep.py "" "--temperature 0.15" [--ranking "" "--hard-negatives 0"]
                                    [--folds u1 u2 u3 u4 u5] [--no-test]

(`--ranking` and `--folds` go after the retrieval flag sets: those start with dashes.)

Each retrieval flag set trains `recsys.train --objective retrieval` on every fold twice: on the fold's
validation split `uN:val` (its training ratings alone, a seeded tenth of them standing in for the test set)
and on the fold itself; each `--ranking` flag set then trains a ranking network on each of those retrieval
models. A line shows the last epoch's full-ranking NDCG@10 on validation, then on test. Defaults are chosen
on the validation columns; the test columns are only reported.
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


def train(model: Path, dataset: str, split: str, data_dir: str, flags: list[str]) -> float:
    cmd = ["recsys.train", "--dataset", dataset, "--split", split, "--data-dir", data_dir, "--model-dir", str(model)]
    subprocess.run([sys.executable, "-m", *cmd, *flags], check=True, capture_output=True)
    return json.loads((model / "metrics.json").read_text())[-1]["test_ndcg@10"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("flag_sets", nargs="+", help='retrieval flags per line, quoted ("" for the defaults)')
    ap.add_argument("--ranking", nargs="*", default=[], help="ranking flag sets, trained on each retrieval model")
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--data-dir", default=str(META.parent))
    ap.add_argument("--folds", nargs="+", default=["u1", "u2", "u3", "u4", "u5"])
    ap.add_argument("--no-test", action="store_true", help="validation only")
    args = ap.parse_args()
    kinds = ["val"] if args.no_test else ["val", "test"]
    head = " | ".join(f"{kind} {f}" for kind in kinds for f in [*args.folds, "mean"])
    print(f"flags | {head} | seconds", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, flags in enumerate(args.flag_sets):
            lines = {r: {} for r in [None, *args.ranking]}
            t = time.perf_counter()
            for kind in kinds:
                for split in args.folds:
                    split_name = f"{split}:val" if kind == "val" else split
                    retrieval = Path(tmp) / f"r{i}-{kind}-{split}"
                    base = ["--objective", "retrieval", *shlex.split(flags)]
                    lines[None].setdefault(kind, []).append(
                        train(retrieval, args.dataset, split_name, args.data_dir, base)
                    )
                    for j, rflags in enumerate(args.ranking):
                        ranker = ["--objective", "ranking", "--candidates-from", str(retrieval), *shlex.split(rflags)]
                        model = Path(tmp) / f"k{i}-{j}-{kind}-{split}"
                        lines[rflags].setdefault(kind, []).append(
                            train(model, args.dataset, split_name, args.data_dir, ranker)
                        )
            for rflags, values in lines.items():
                name = f"retrieval {flags or '(defaults)'}"
                if rflags is not None:
                    name += f" -> ranking {rflags or '(defaults)'}"
                cells = " | ".join(
                    " | ".join(f"{v:.4f}" for v in values[kind]) + f" | {sum(values[kind]) / len(values[kind]):.4f}"
                    for kind in kinds
                )
                print(f"{name} | {cells} | {time.perf_counter() - t:.0f}", flush=True)


if __name__ == "__main__":
    main()
