"""The README's "Top-N results": train both models on each fold, evaluate them, print one table.

    python benchmarks/topn_folds.py [--data-dir ../shared/data] [--folds u1 u2 u3 u4 u5]
    python benchmarks/topn_folds.py --dataset ml-1m --folds random --data-dir DIR   (e.g. a synthetic archive)

Each fold runs the commands printed above its row: `recsys.train` with the chapter's defaults (rating
model), `recsys.train --objective retrieval` with its defaults, then `recsys.evaluate --rerank` (popularity,
EASE, both models and the two stages, NDCG@10 over full rankings).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import META

ORDER = ("popularity", "EASE", "chapter model", "retrieval", "two-stage")


def run(*args: str) -> str:
    print("  $ python -m " + " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", *args], check=True, capture_output=True, text=True).stdout


def fold(dataset: str, split: str, data_dir: str, out: Path) -> dict[str, dict]:
    flags = ["--dataset", dataset, "--split", split, "--data-dir", data_dir]
    run("recsys.train", *flags, "--model-dir", str(out / "rating"))
    run("recsys.train", *flags, "--model-dir", str(out / "retrieval"), "--objective", "retrieval")
    doc = json.loads(
        run("recsys.evaluate", "--model-dir", str(out / "retrieval"), "--rerank", str(out / "rating"), "--json")
    )
    rows = {}
    for r in doc["top_n"]["rows"]:
        name = r["model"].split(" (")[0].split(":")[0]
        rows[name] = r
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--data-dir", default=str(META.parent))
    ap.add_argument("--folds", nargs="+", default=["u1", "u2", "u3", "u4", "u5"])
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for split in args.folds:
            print(f"{args.dataset} {split}:", flush=True)
            results[split] = fold(args.dataset, split, args.data_dir, Path(tmp) / split)
    for metric in ("ndcg", "precision", "recall", "hr", "coverage"):
        print(f"\n{metric}@10 | " + " | ".join(args.folds) + " | mean")
        for name in ORDER:
            values = [results[f][name][metric] for f in args.folds]
            cells = " | ".join(f"{v:.3f}" for v in values)
            print(f"{name} | {cells} | {sum(values) / len(values):.3f}")


if __name__ == "__main__":
    main()
