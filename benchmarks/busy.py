"""Epochs, whole fits and serving beside a busy neighbour: each objective's training epoch on ml-100k u1, quiet and
beside one process that keeps a core busy, for two threads (`--threads 2`, the default before one) and the
default; then whole fits in one process (`benchmarks/fit_phases.py`: retrieval on ml-100k u1 with an evaluation
after each epoch, the ranker on it, EASE on ml-100k u1 and on a full-size synthetic ml-1m archive) with
everything on one thread (`--threads 1`), with the phases that have large products on two threads, and the
default (those phases on what a short measurement at start-up picks); then `serve`'s latency, quiet and busy.
Runs alternate quiet and busy in one sitting:

    python benchmarks/busy.py [--epochs 3] [--rounds 1] [--requests 400]   (part of `make bench`)

An epoch's time is its training steps alone (metrics.json `step_seconds`, the median over the run's epochs); a
fit's is its wall time. The neighbour is `python -c` spinning in a loop that ends by itself after
`--burn-seconds`, started before a busy run and killed after it.
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

from common import full_size_archive, results_table, write_results
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


def fit_seconds(setting: list[str], ml1m: Path) -> dict:
    """`benchmarks/fit_phases.py`'s JSON line (seconds by fit, the large products' count) in a new process."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "fit_phases.py"), "--data-dir", str(SHARED), "--ml1m", str(ml1m)]
    proc = subprocess.run(cmd + setting, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fits_table(rounds: int, burn_seconds: float, tmp: Path) -> list[list]:
    """Whole fits, quiet and busy, alternating, for each thread setting: [label, setting, quiet, busy, ratio]."""
    ml1m = full_size_archive(tmp / "ml-1m")
    settings = [("1 everywhere", ["--one-thread"])]
    settings += [("phases on 2", ["--wide", "2"])] if usable_cores() >= 2 else []
    settings.append(("default", []))
    runs: dict[tuple, list[dict]] = {}
    for _ in range(rounds):
        for name, setting in settings:
            for busy in (False, True):
                with neighbour(busy, burn_seconds):
                    runs.setdefault((name, busy), []).append(fit_seconds(setting, ml1m))
    picked = {busy: "/".join(map(str, sorted({r["wide"] for r in runs["default", busy]}))) for busy in (False, True)}
    shown = {name: name for name, _ in settings}
    shown["default"] = f"default (picked {picked[False]} quiet, {picked[True]} busy)"
    numbers = []
    for fit in runs[settings[0][0], False][0]["seconds"]:
        for name, _ in settings:
            quiet, busy = (statistics.median(r["seconds"][fit] for r in runs[name, b]) for b in (False, True))
            numbers.append([f"{fit} fit (s)", shown[name], round(quiet, 2), round(busy, 2), round(busy / quiet, 2)])
    return numbers


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
        fits = fits_table(args.rounds, args.burn_seconds, Path(tmp))
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
    print("per-epoch step time (median of each run's epochs) on ml-100k u1, quiet and beside one busy neighbour")
    print_rows(rows)
    print("whole fits in one process (wall time), quiet and beside one busy neighbour")
    print_rows([("fit", "threads", "quiet s", "busy s", "busy/quiet")]
               + [(label.removesuffix(" fit (s)"), name, f"{q:.2f}", f"{b:.2f}", f"{r:.2f}x")
                  for label, name, q, b, r in fits])  # fmt: skip
    columns = ["", "threads", "quiet", "busy", "busy / quiet"]
    title = "Each objective's epoch (step time) and serving, quiet and beside one busy neighbour, ml-100k u1"
    table = results_table("busy", title, columns, numbers)
    title = "Whole fits in one process (wall time), quiet and beside one busy neighbour, by thread setting"
    write_results("busy", "python benchmarks/busy.py", [table, results_table("busy-fits", title, columns, fits)])


def print_rows(rows: list[tuple]) -> None:
    """Rows of text as aligned columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


if __name__ == "__main__":
    main()
