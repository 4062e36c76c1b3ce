"""CSV layout benchmark: an ml-32m-sized folder (ratings.csv + movies.csv) -> numpy arrays, cold and cached.

python benchmarks/csv_layout.py [--ratings N] [--dir DIR]    targets: < 60 s cold (parse + cache), < 3 s cached
(a cached load runs in a fresh process: metadata and ratings both come from the .npz caches)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recsys import movielens

N_USERS, N_MOVIES, MAX_MOVIE_ID = 200_948, 87_585, 292_757  # ml-32m's shape
GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "(no genres listed)"]


def write_folder(folder: Path, n: int) -> Path:
    """ratings.csv with `n` lines (sparse movie ids, half stars, timestamps) and a matching movies.csv."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(0)
    movie_ids = np.sort(rng.choice(np.arange(1, MAX_MOVIE_ID + 1), N_MOVIES, replace=False))
    words = np.array([f"w{i}" for i in range(20_000)])
    titles = [" ".join(words[rng.integers(0, len(words), 3)]) + f" ({1900 + i % 120})" for i in range(N_MOVIES)]
    genres = ["|".join(GENRES[j] for j in sorted(set(rng.integers(0, 7, 2)))) for _ in range(N_MOVIES)]
    movies = pa.table({"movieId": movie_ids, "title": titles, "genres": genres})
    folder.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(movies, folder / "movies.csv")
    with pacsv.CSVWriter(folder / "ratings.csv", pa.schema([("userId", pa.int64()), ("movieId", pa.int64()),
                         ("rating", pa.float64()), ("timestamp", pa.int64())])) as w:  # fmt: skip
        for start in range(0, n, 4_000_000):
            m = min(4_000_000, n - start)
            w.write_table(pa.table({
                "userId": np.sort(rng.integers(1, N_USERS + 1, m)),
                "movieId": movie_ids[rng.integers(0, N_MOVIES, m)],
                "rating": rng.integers(1, 11, m) / 2,
                "timestamp": rng.integers(789_652_009, 1_697_000_000, m),
            }))  # fmt: skip
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--ratings", type=int, default=32_000_204)
    ap.add_argument("--dir", type=Path, help="reuse (or create) the folder here instead of a temp one")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or Path(tmp) / "own"
        if not (folder / "ratings.csv").is_file():
            write_folder(folder, args.ratings)
        for cache in folder.glob(".*.npz"):
            cache.unlink()
        t = time.perf_counter()
        data = movielens.load("csv", folder)
        cold = time.perf_counter() - t
        code = (
            "import sys, time; from recsys import movielens; t = time.perf_counter(); "
            "d = movielens.load('csv', sys.argv[1]); print(time.perf_counter() - t, len(d.user))"
        )
        out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True)
        cached = float(out.stdout.split()[0])
    print(f"{'layout':<10}{'ratings':>12}{'cold s':>10}{'cached s':>10}")
    print(f"{'csv':<10}{len(data.user):>12}{cold:>10.2f}{cached:>10.2f}")
    print(f"{'target':<10}{'':>12}{60.0:>10.2f}{3.0:>10.2f}")


if __name__ == "__main__":
    main()
