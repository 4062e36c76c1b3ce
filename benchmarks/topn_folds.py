"""The README's "Top-N results": train every model on each fold, evaluate them, print one table.

    python benchmarks/topn_folds.py [--data-dir ../shared/data] [--folds u1 u2 u3 u4 u5]
    python benchmarks/topn_folds.py --dataset ml-1m --folds random --data-dir DIR   (e.g. a synthetic archive)

Each fold runs the commands printed above its row, each model with its defaults: the chapter's rating model,
a retrieval model without history (`--no-history --holdout 0`: the towers alone), the retrieval model with
history, and the ranking network on its candidates; then `recsys.evaluate` twice (popularity, EASE, both
retrieval models, and the two stages with each second stage; NDCG@10 over full rankings, and the recall of
the ranking network's candidates: the share of relevant test movies among them, the ceiling of what it finds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import META

ORDER = (
    "popularity",
    "EASE",
    "chapter model",
    "retrieval, no history",
    "retrieval with history",
    "two-stage -> chapter model",
    "two-stage -> ranking network",
    "recall of the candidates",
)


def run(*args: str) -> str:
    print("  $ python -m " + " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", *args], check=True, capture_output=True, text=True).stdout


def fold(dataset: str, split: str, data_dir: str, out: Path) -> dict[str, dict]:
    flags = ["--dataset", dataset, "--split", split, "--data-dir", data_dir]
    models = {name: str(out / name) for name in ("rating", "plain", "retrieval", "ranking")}
    run("recsys.train", *flags, "--model-dir", models["rating"])
    run("recsys.train", *flags, "--model-dir", models["plain"], "--objective", "retrieval", "--no-history",
        "--holdout", "0")  # fmt: skip
    run("recsys.train", *flags, "--model-dir", models["retrieval"], "--objective", "retrieval")
    run("recsys.train", *flags, "--model-dir", models["ranking"], "--objective", "ranking",
        "--candidates-from", models["retrieval"])  # fmt: skip
    first = json.loads(run("recsys.evaluate", "--model-dir", models["plain"], "--rerank", models["rating"], "--json"))
    second = json.loads(
        run("recsys.evaluate", "--model-dir", models["retrieval"], "--rerank", models["ranking"], "--json")
    )
    a, b = first["top_n"]["rows"], second["top_n"]["rows"]
    rows = {"popularity": a[0], "EASE": a[1], "retrieval, no history": a[2], "chapter model": a[3]}
    rows["two-stage -> chapter model"] = a[4]
    rows |= {"retrieval with history": b[2], "two-stage -> ranking network": b[3]}
    rows["recall of the candidates"] = {"ndcg": b[3]["candidates_recall"]}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
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
            if metric not in results[args.folds[0]][name]:
                continue
            values = [results[f][name][metric] for f in args.folds]
            cells = " | ".join(f"{v:.3f}" for v in values)
            print(f"{name} | {cells} | {sum(values) / len(values):.3f}")


if __name__ == "__main__":
    main()
