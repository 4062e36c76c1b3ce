"""Helpers shared by the benchmark scripts: a full-size synthetic ml-1m archive and a timer."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from recsys import synthetic

ROOT = Path(__file__).resolve().parents[1]
META = Path(os.environ.get("RECSYS_SHARED_DATA") or ROOT.parent / "shared" / "data") / "ml-1m"


def full_size_archive(folder: Path, n_ratings: int = 1_000_209) -> Path:
    """`folder/ml-1m.zip` with `n_ratings` synthetic ratings (real movies/users when found beside the repo)."""
    if not (folder / "ml-1m.zip").exists():
        synthetic.write_ml1m(
            folder,
            n_ratings,
            seed=0,
            meta_dir=META if (META / "movies.dat").exists() else None,
            n_users=6040,
            n_movies=3883,
        )
    return folder


def best_of(fn, repeat: int = 5) -> float:
    """Smallest wall time of `repeat` calls, in seconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def median_ms(fn, args) -> float:
    """Median wall time of `fn(a)` over `args`, in milliseconds, after one warm-up call."""
    fn(args[0])
    times = []
    for a in args:
        t = time.perf_counter()
        fn(a)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    """Rows of (what, recsys, reference, target) as aligned columns under one header."""
    head = ("", "recsys", "reference", "target")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    for r in [head] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


RESULTS = ROOT / "benchmarks" / "results"


def results_table(
    table_id: str, title: str, columns: list[str], rows: list[list], decimals: list | None = None
) -> dict:
    """One table of a results file: `rows` start with their label, then one number (or text) per column;
    `decimals`, one per column (None: as is), says how the pages show the floats."""
    table = {"id": table_id, "title": title, "columns": columns, "rows": rows}
    return table | ({"decimals": decimals} if decimals else {})


def write_results(name: str, command: str, tables: list[dict], note: str = "") -> Path:
    """`benchmarks/results/NAME.json` with this run's tables (the documentation's benchmark pages are generated
    from these files), and its pictures beside it as PNG."""
    import datetime
    import json
    import platform

    import charts

    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": name,
        "command": command,
        "source": f"written by `{command}`",
        "measured": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "note": note,
        "tables": tables,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    for filename, png in charts.draw(name, doc).items():
        (RESULTS / filename).write_bytes(png)
    print(f"results: {path}")
    return path
