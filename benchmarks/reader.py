"""Reader benchmark: a 1,000,209-rating ml-1m archive -> numpy arrays, cold (parse) and cached.

python benchmarks/reader.py [--ratings N]      targets on a 2-core box: <= 3 s cold, <= 0.3 s cached
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import full_size_archive

from recsys import movielens


def measure(folder: Path) -> dict[str, float]:
    for cache in folder.glob("*.npz"):
        cache.unlink()
    movielens._meta_cached.cache_clear()
    t = time.perf_counter()
    data = movielens.load(data_dir=folder)
    cold = time.perf_counter() - t
    movielens._meta_cached.cache_clear()  # a fresh process: metadata parsed again, ratings from the cache
    t = time.perf_counter()
    movielens.load(data_dir=folder)
    cached = time.perf_counter() - t
    return {"ratings": len(data.user), "cold_s": cold, "cached_s": cached}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--ratings", type=int, default=1_000_209)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(full_size_archive(Path(tmp), args.ratings))
    print(f"{'reader':<10}{'ratings':>10}{'cold s':>10}{'cached s':>10}")
    print(f"{'recsys':<10}{r['ratings']:>10}{r['cold_s']:>10.3f}{r['cached_s']:>10.3f}")
    print(f"{'target':<10}{'':>10}{3.0:>10.3f}{0.3:>10.3f}")


if __name__ == "__main__":
    main()
