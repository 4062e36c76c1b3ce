"""Whole fits in one process, timed for `benchmarks/busy.py`'s comparison of thread settings:

    python benchmarks/fit_phases.py [--one-thread | --wide N] [--epochs 3] [--ml1m DIR]

In order, as one process would run them: retrieval on ml-100k u1 for `--epochs` epochs (its defaults, an
evaluation after each), the ranker on it (its set-up: the candidate pools and item-item weights; then 20 batches
and its evaluation), EASE (λ 500) on ml-100k u1 and, with `--ml1m DIR`, on the ml-1m archive there. The default
runs training steps on one thread and the phases with large products on what a short measurement picks
(`recsys.threads.wide`); `--one-thread`: everything on one (`--threads 1`); `--wide N`: those phases on N.
Prints one JSON line: the seconds of each fit and the large products' thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from recsys import movielens, threads, topn, train

SHARED = Path(os.environ.get("RECSYS_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def ease_seconds(dataset: str, folder: Path, split: str) -> float:
    """The wall time of EASE's fit on the training ratings of `dataset` in `folder`."""
    data = movielens.load(dataset, folder, split)
    catalogue = np.array(sorted(data.meta.movies), np.int64)
    ranking = topn.Interactions.build(catalogue, data.user, data.movie, data.stars, data.is_test)
    start = time.perf_counter()
    topn.EASE(500.0).fit(ranking)
    return time.perf_counter() - start


def fits(shared: Path, epochs: int, given: int | None, ml1m: Path | None) -> dict[str, float]:
    """Seconds of each fit, in order (see the module's text); `given`: `--threads`."""
    out = {}
    where = {"dataset": "ml-100k", "split": "u1", "data_dir": shared, "log": lambda _line: None, "threads": given}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train.run(objective="retrieval", model_dir=Path(tmp) / "retrieval", epochs=epochs, **where)
        out["retrieval"] = time.perf_counter() - start
        start = time.perf_counter()
        train.run(objective="ranking", model_dir=Path(tmp) / "ranking", candidates_from=Path(tmp) / "retrieval",
                  epochs=1, max_batches=20, **where)  # fmt: skip
        out["ranking"] = time.perf_counter() - start
    out["ease ml-100k"] = ease_seconds("ml-100k", shared, "u1")
    if ml1m is not None:
        out["ease ml-1m"] = ease_seconds("ml-1m", ml1m, "random")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--one-thread", action="store_true", help="everything on one thread (--threads 1)")
    how.add_argument("--wide", type=int, help="the phases with large products on this many threads")
    ap.add_argument("--epochs", type=int, default=3, help="retrieval's epochs (default: %(default)s)")
    ap.add_argument("--data-dir", type=Path, default=SHARED, help="where ml-100k.zip is (default: %(default)s)")
    ap.add_argument("--ml1m", type=Path, help="a folder with ml-1m.zip: EASE on it too")
    args = ap.parse_args()
    if args.wide is not None and not 1 <= args.wide <= threads.usable_cores():
        ap.error(f"--wide must be 1..{threads.usable_cores()}")
    import paddle  # noqa: F401 (loaded before the timing, as in a process that trained already)

    threads.set_wide(1 if args.one_thread else args.wide)
    seconds = fits(args.data_dir, args.epochs, 1 if args.one_thread else None, args.ml1m)
    print(json.dumps({"seconds": seconds, "wide": threads.wide()}))


if __name__ == "__main__":
    main()
