"""Microseconds per training step in each phase (feeds, forward, backward, update), the plain layers' step
against the fused step (`recsys.fused.step`), on the same batches, alternating chunk by chunk.

    python benchmarks/phases.py [--data-dir DIR] [--chunks 6] [--chunk 50]      (run by benchmarks/run.py)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import paddle

from recsys import movielens
from recsys.model import rating_loss
from recsys.movielens import FEED_NAMES
from recsys.training.rating import RatingTask

PHASES = ("feeds", "forward", "backward", "update")


def _plain(t: RatingTask, idx: np.ndarray) -> list[float]:
    c0 = time.perf_counter()
    f = t.features(idx, training=True)
    x, label = [paddle.to_tensor(f[n]) for n in FEED_NAMES], paddle.to_tensor(t.label[idx])
    c1 = time.perf_counter()
    loss = rating_loss(t.model(*x), label)
    c2 = time.perf_counter()
    loss.backward()
    c3 = time.perf_counter()
    t.opt.step()
    t.opt.clear_grad()
    return [c1 - c0, c2 - c1, c3 - c2, time.perf_counter() - c3]


def _fused(t: RatingTask, idx: np.ndarray) -> list[float]:
    c0 = time.perf_counter()
    x, label = t.fused.arrays(t.features(idx, training=True)), t.label[idx]
    c1 = time.perf_counter()
    loss, saved = t.fused.rating_loss(x, label)
    c2 = time.perf_counter()
    grads = t.fused.rating_grads(saved)
    c3 = time.perf_counter()
    t.fused.update(grads)
    return [c1 - c0, c2 - c1, c3 - c2, time.perf_counter() - c3]


def measure(data: movielens.MovieLens, chunks: int = 6, chunk: int = 50, batch: int = 256) -> dict[str, list[float]]:
    """Best chunk's mean microseconds per step of each phase, for "plain" and "fused" (chunk 0 warms up)."""
    order = np.random.RandomState(0).permutation(np.flatnonzero(~data.is_test))
    batches = [order[s : s + batch] for s in range(0, (chunks + 1) * chunk * batch, batch)]
    runs = {"plain": (RatingTask(data, fused=False), _plain), "fused": (RatingTask(data), _fused)}
    best: dict[str, list[float]] = {}
    for c in range(chunks + 1):
        for name, (t, step) in runs.items():
            sums = np.zeros(len(PHASES))
            for idx in batches[c * chunk : (c + 1) * chunk]:
                sums += step(t, idx)
            us = list(sums / chunk * 1e6)
            if c and (name not in best or sum(us) < sum(best[name])):
                best[name] = us
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--data-dir")
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--chunk", type=int, default=50)
    args = ap.parse_args()
    best = measure(movielens.load(data_dir=args.data_dir), args.chunks, args.chunk)
    print(f"{'us per step (batch 256)':24s}" + "".join(f"{p:>10s}" for p in PHASES) + f"{'total':>10s}")
    for name, us in best.items():
        label = "plain layers (autograd)" if name == "plain" else "fused step"
        print(f"{label:24s}" + "".join(f"{v:10.0f}" for v in us) + f"{sum(us):10.0f}")


if __name__ == "__main__":
    main()
