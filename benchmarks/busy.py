"""Epochs and serving beside a busy neighbour: each objective's training epoch on ml-100k u1, quiet and beside one
process that keeps a core busy, for two threads (`--threads 2`, the default before one) and the default;
then `serve`'s latency, quiet and busy. Runs alternate quiet and busy in one sitting:

    python benchmarks/busy.py [--epochs 3] [--rounds 1] [--requests 400]   (part of `make bench`)

An epoch's time is its training steps alone (metrics.json `step_seconds`, the median over the run's epochs).
The neighbour is `python -c` spinning in a loop that ends by itself after `--burn-seconds`, started before a
busy run and killed after it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from common import results_table, write_results
from topn_serve import load_test

from recsys.modeldir import ModelDir
from recsys.topn.lists import usable_cores

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECSYS_SHARED_DATA") or ROOT.parent / "shared" / "data")
U1 = ["--dataset", "ml-100k", "--split", "u1", "--data-dir", str(SHARED)]
OBJECTIVES = ("rating", "retrieval", "ranking")


@contextmanager
def neighbour(busy: bool, seconds: float):
    """With `busy`, one process that spins on a core until the block ends (or `seconds` pass)."""
    if not busy:
        yield
        return
    spin = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    proc = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.5)  # running before the timed work starts
        yield
    finally:
        proc.kill()
        proc.wait()


def step_seconds(model: Path, objective: str, threads: int | None, epochs: int, *flags: str) -> float:
    """The median epoch's training time of `train --objective OBJECTIVE [--threads N]` for `epochs` epochs."""
    cmd = [sys.executable, "-m", "recsys.train", *U1, "--model-dir", str(model), "--objective", objective]
    cmd += ["--epochs", str(epochs), *flags] + ([] if threads is None else ["--threads", str(threads)])
    subprocess.run(cmd, check=True, capture_output=True)
    return statistics.median(m["step_seconds"] for m in json.loads((model / "metrics.json").read_text()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=1, help="quiet/busy runs of each setting (default: %(default)s)")
    ap.add_argument("--requests", type=int, default=400, help="serve: requests per load test (default: %(default)s)")
    ap.add_argument("--burn-seconds", type=float, default=300, help="the neighbour stops by itself after this")
    args = ap.parse_args()
    if not (SHARED / "ml-100k.zip").is_file():
        raise SystemExit(f"error: ml-100k.zip not found in {SHARED} (set RECSYS_SHARED_DATA)")
    settings = [("2 (before)", 2)] if usable_cores() >= 2 else []
    settings.append(("default (1)", None))
    print(f"{usable_cores()} usable cores, load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    times: dict[tuple, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        retrieval = Path(tmp) / "candidates"
        subprocess.run([sys.executable, "-m", "recsys.train", *U1, "--model-dir", str(retrieval), "--objective",
                        "retrieval", "--epochs", "3"], check=True, capture_output=True)  # fmt: skip
        more = {"ranking": ("--candidates-from", str(retrieval))}
        for _ in range(args.rounds):
            for objective in OBJECTIVES:
                for name, threads in settings:
                    for busy in (False, True):
                        model = Path(tmp) / f"{objective}-{threads}-{busy}"
                        with neighbour(busy, args.burn_seconds):
                            s = step_seconds(model, objective, threads, args.epochs, *more.get(objective, ()))
                        times.setdefault((objective, name, busy), []).append(s)
        md = ModelDir.load(retrieval)
        users, movies = sorted(md.user_ids)[:300], [int(m) for m in md.movie_ids]
        served = {}
        for _ in range(args.rounds):
            for busy in (False, True):
                with neighbour(busy, args.burn_seconds):
                    served.setdefault(busy, []).append(load_test(retrieval, None, users, movies, args.requests, 2))
    rows = [("objective", "threads", "quiet s", "busy s", "busy/quiet")]
    numbers = []  # [label, threads, quiet, busy, busy/quiet] per row, as printed: the results file holds the same
    for objective in OBJECTIVES:
        for name, _threads in settings:
            quiet, busy = (statistics.median(times[objective, name, b]) for b in (False, True))
            numbers.append([f"{objective} epoch (s)", name, round(quiet, 3), round(busy, 3), round(busy / quiet, 2)])
    for stat in ("p50", "p99"):
        quiet, busy = (statistics.median(r[f"all_{stat}"] for r in served[b]) for b in (False, True))
        numbers.append([f"serve {stat} (ms)", "one a request", round(quiet, 1), round(busy, 1), round(busy / quiet, 2)])
    for label, name, quiet, busy, ratio in numbers:
        digits = 3 if "epoch" in label else 1  # seconds to the millisecond, latencies to a tenth of one
        rows.append(
            (label.removesuffix(" epoch (s)"), name, f"{quiet:.{digits}f}", f"{busy:.{digits}f}", f"{ratio:.2f}x")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    print("per-epoch step time (median of each run's epochs) on ml-100k u1, quiet and beside one busy neighbour")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    title = "Each objective's epoch (step time) and serving, quiet and beside one busy neighbour, ml-100k u1"
    table = results_table("busy", title, ["", "threads", "quiet", "busy", "busy / quiet"], numbers)
    write_results("busy", "python benchmarks/busy.py", [table])


if __name__ == "__main__":
    main()
