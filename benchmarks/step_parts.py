"""Microseconds per fused training step in each part, the chapter's rating step beside the retrieval step, with
their CLI defaults on the same archive, alternating chunk by chunk (so that both see the same box):

    python benchmarks/step_parts.py                                   (a full-size synthetic ml-1m archive)
    python benchmarks/step_parts.py --dataset ml-32m --data-dir DIR   (benchmarks/scale.py's archive, say)
    python benchmarks/step_parts.py --history-cap 10                  (the retrieval step with another cap)

The parts: the feeds, the history rows the retrieval step reads (`--history-cap` movies of each user), the two
towers forward, the head with its loss and gradient (the chapter's cos-sim MSE; the in-batch softmax over the
batch's movies), the towers backward, and the update (plain SGD; Adam, lazy rows for the sparse tables).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import full_size_archive, results_table, write_results

from recsys import train
from recsys.fused.layers import cos_mse, cos_mse_grad, softmax_xent, softmax_xent_grad
from recsys.fused.step import in_batch
from recsys.training.loop import Run

PARTS = ("feeds", "history", "forward", "head", "backward", "update")


def step(t, idx: np.ndarray) -> list[float]:
    """One fused step of task `t` (rating or in-batch retrieval) on the ratings `idx`: seconds per part."""
    c = [time.perf_counter()]
    user, movie = t.data.user[idx], t.data.movie[idx]
    f = t.data.tables.features(user, movie)
    c.append(time.perf_counter())
    if t.with_history:
        f["history"] = t.fit_history.sparse(user, movie, t.history_cap, t.rng)
    c.append(time.perf_counter())
    x = t.fused.arrays(f)
    u, m, saved = t.fused.forward(x[: t.nu], x[t.nu :], t.fused.history(f))
    c.append(time.perf_counter())
    if t.name == "rating":  # the task's objective
        d_user, d_movie = cos_mse_grad(cos_mse(u, m, x[t.nu + 4], t.label[idx])[1])
    else:
        target, add = in_batch(movie, t.log_q)
        d_user, d_movie = softmax_xent_grad(softmax_xent(u, m, target, t.temperature, add)[1])
    c.append(time.perf_counter())
    grads = t.fused.backward(saved, d_user, d_movie)
    c.append(time.perf_counter())
    t.fused.update(grads)
    c.append(time.perf_counter())
    return list(np.diff(c))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--data-dir", help="default: a full-size synthetic ml-1m archive under /tmp/recsys-bench")
    ap.add_argument("--history-cap", type=int, help="the retrieval step's (default: the CLI's)")
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--chunk", type=int, default=50)
    args = ap.parse_args()
    data_dir = args.data_dir or str(full_size_archive(Path("/tmp/recsys-bench/ml-1m-1000209")))
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for objective in ("rating", "retrieval"):
            flags = ["--dataset", args.dataset, "--data-dir", data_dir, "--objective", objective]
            if objective == "retrieval" and args.history_cap is not None:
                flags += ["--history-cap", str(args.history_cap)]
            settings = train.parse_args([*flags, "--model-dir", str(Path(tmp) / objective)])
            data = runs["rating"][0].data if runs else train.load_data(settings)
            run = Run(settings, data, lambda _line: None, None)
            order = run.t.rng.permutation(run.train_idx)
            runs[objective] = (run.t, [order[s : s + 256] for s in range(0, len(order) - 255, 256)])
        best: dict[str, np.ndarray] = {}
        for c in range(args.chunks + 1):  # chunk 0 warms up
            for objective, (t, batches) in runs.items():
                us = sum(np.array(step(t, idx)) for idx in batches[c * args.chunk : (c + 1) * args.chunk])
                us = us / args.chunk * 1e6
                if c and (objective not in best or us.sum() < best[objective].sum()):
                    best[objective] = us
    print(f"{args.dataset}, batch 256: microseconds per step, the best chunk of {args.chunk} steps of {args.chunks}")
    print(f"{'':10s}" + "".join(f"{p:>10s}" for p in PARTS) + f"{'total':>10s}{'samples/s':>12s}")
    for objective, us in best.items():
        print(f"{objective:10s}" + "".join(f"{v:10.0f}" for v in us) + f"{us.sum():10.0f}{256e6 / us.sum():12,.0f}")
    ratio = [f"{a / b:10.1f}" if b >= 1 else f"{'-':>10s}" for a, b in zip(best["retrieval"], best["rating"])]
    print(f"{'ratio':10s}" + "".join(ratio) + f"{best['retrieval'].sum() / best['rating'].sum():10.2f}")
    rows = [[objective, *(round(float(v)) for v in us), round(float(us.sum()))] for objective, us in best.items()]
    title = f"{args.dataset}, batch 256: µs per step, the best chunk of {args.chunk} steps of {args.chunks}"
    command = " ".join(["python benchmarks/step_parts.py", *(a if a != args.data_dir else "DIR" for a in sys.argv[1:])])
    write_results("step_parts", command, [
        results_table("parts", title, ["", *PARTS, "total"], rows),
        results_table("ratio", "the retrieval step against the rating step", ["", "× rating"],
                      [["retrieval", round(float(best["retrieval"].sum() / best["rating"].sum()), 2)]]),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
