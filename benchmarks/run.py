"""The performance table: trainer vs a plain PyTorch version of the network, epoch time, reader, latency, memory;
then microseconds per step in each phase, the plain layers' step against the fused one.

    python benchmarks/run.py [--ratings 1000209] [--rounds 3]      (`make bench`)

Everything runs in this one invocation on a synthetic archive in the exact ml-1m layout (real movies and
users when `../shared/data/ml-1m` is there). Throughput runs the fused trainer step, the plain one and
PyTorch in alternating child processes on the same batches and reports the best run of each, so a noisy
machine slows all alike.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import full_size_archive, median_ms, print_table, results_table, write_results
from reader import measure as measure_reader

from recsys import movielens
from recsys.modeldir import ModelDir
from recsys.movielens import FEED_NAMES
from recsys.topn import stages
from recsys.training.rating import RatingTask


def _worker(framework: str, folder: str, first: int, chunks: int, chunk: int, batch: int = 256) -> list[float]:
    """In a child process: samples/s of `chunks` timed chunks of the chapter's batches, after a warm-up chunk."""
    data = movielens.load(data_dir=folder)
    order = np.random.RandomState(0).permutation(np.flatnonzero(~data.is_test))
    start = first * chunk * batch
    batches = [order[s : s + batch] for s in range(start, start + (chunks + 1) * chunk * batch, batch)]
    if framework in ("recsys", "plain"):
        run = RatingTask(data, fused=framework == "recsys").step  # "plain": the layers under autograd
    else:
        import torch
        from torch_reference import make_step

        torch.set_num_threads(1)  # its fastest here: with two threads oneDNN's Conv1d takes milliseconds

        torch_step = make_step(data.sizes())

        def run(idx):
            f = data.tables.features(data.user[idx], data.movie[idx])
            torch_step([f[n] for n in FEED_NAMES], data.label[idx])

    rates = []
    for c in range(chunks + 1):
        t = time.perf_counter()
        for idx in batches[c * chunk : (c + 1) * chunk]:
            run(idx)
        if c:  # chunk 0 warms up
            rates.append(chunk * batch / (time.perf_counter() - t))
    return rates


def throughput(folder: Path, rounds: int, chunks: int = 3, chunk: int = 50) -> dict[str, float]:
    """Samples/s of the recsys trainer step (fused), the same trainer through the plain layers, and the
    PyTorch reference on identical batches: the best of `rounds` runs of each, a run's figure being the median
    of its chunks.

    Each runs in its own process (their OpenMP threads would otherwise spin against each other on a small
    machine), alternating round by round so that all see the same machine load."""
    try:
        import torch  # noqa: F401

        frameworks = ["recsys", "plain", "torch"]
    except ImportError:
        frameworks = ["recsys", "plain"]
    rates: dict[str, list[float]] = {f: [] for f in frameworks}
    for r in range(rounds):
        for f in frameworks:
            args = ["--worker", f, str(folder), str(r * (chunks + 1)), str(chunks), str(chunk)]
            out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
            rates[f].append(statistics.median(json.loads(out.stdout.splitlines()[-1])))
    return {f: max(v) for f, v in rates.items()}


def full_epoch(folder: Path, model: Path) -> dict:
    """One epoch through the CLI in a child process: seconds to the end of its test evaluation, peak RSS."""
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "recsys.train", "--data-dir", str(folder), "--model-dir", str(model), "--epochs", "1"]
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t
    metrics = json.loads((model / "metrics.json").read_text())
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"epoch_s": metrics[-1]["seconds"], "wall_s": wall, "rss_mb": rss_mb, "test_cost": metrics[-1]["test_cost"]}


def latencies(model: Path, repeat: int = 300) -> dict:
    """Warm in-process latencies (median ms): top-10 from tower vectors vs the full network over all movies,
    and one prediction through the paddle.inference predictor vs the dygraph network."""
    import paddle

    from recsys.model import RecommenderNet

    md = ModelDir.load(model)
    users = np.array(md.meta["users"])[np.random.RandomState(1).randint(0, len(md.meta["users"]), repeat)]
    movies = np.array([int(m) for m in md.meta["movies"]])
    predictor = md.predictor
    net = RecommenderNet(**md.meta["sizes"])
    with np.load(model / "params.npz") as z:
        net.set_state_dict({k: paddle.to_tensor(z[k]) for k in z.files})

    def full_network_top10(u):
        s = predictor(md.tables.features(np.full(len(movies), u), movies))[:, 0]
        return movies[np.argsort(-s)[:10]]

    def dygraph_one(u):
        with paddle.no_grad():
            f = md.tables.features(np.array([u]), movies[:1])
            return net(*[paddle.to_tensor(f[n]) for n in FEED_NAMES]).numpy()

    return {
        "topk_ms": median_ms(lambda u: stages.top_k(md, int(u), 10), users),
        "topk_ref_ms": median_ms(full_network_top10, users[:30]),
        "predict_ms": median_ms(lambda u: predictor(md.tables.features(np.array([u]), movies[:1])), users),
        "predict_ref_ms": median_ms(dygraph_one, users),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--ratings", type=int, default=1_000_209)
    ap.add_argument("--rounds", type=int, default=3, help="child processes per framework, alternating")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        framework, folder, first, chunks, chunk = args.worker
        print(json.dumps(_worker(framework, folder, int(first), int(chunks), int(chunk))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = full_size_archive(Path(tmp), args.ratings)
        reader = measure_reader(folder)
        t = time.perf_counter()
        n_samples = sum(1 for _ in movielens.train(folder)()) + sum(1 for _ in movielens.test(folder)())
        reader["per_sample_s"] = time.perf_counter() - t
        epoch = full_epoch(folder, Path(tmp) / "model")
        lat = latencies(Path(tmp) / "model")  # before any training here: as in a fresh `infer` process
        data = movielens.load(data_dir=folder)
        rate = throughput(folder, args.rounds)
        phases = subprocess.run([sys.executable, str(Path(__file__).with_name("phases.py")), "--data-dir", str(folder)],
                                check=True, capture_output=True, text=True).stdout  # fmt: skip
    torch_rate = rate.get("torch")
    vs_torch = lambda r: f"{r / torch_rate:.2f}x" if torch_rate else "-"  # noqa: E731
    rows = [
        ("train samples/s (batch 256, SGD lr 0.2, sparse)", f"{rate['recsys']:,.0f}",
         f"{torch_rate:,.0f} (PyTorch)" if torch_rate else "torch not installed",
         f"{vs_torch(rate['recsys'])} (>= 3x)"),
        ("  the same through the plain layers (--no-fused)", f"{rate['plain']:,.0f}",
         f"fused step {rate['recsys'] / rate['plain']:.2f}x faster", f"{vs_torch(rate['plain'])} (>= 1.5x)"),
        (f"one epoch incl. test eval, {len(data.user):,} ratings (s)", f"{epoch['epoch_s']:.1f}", "", "<= 25 s"),
        ("reader archive -> arrays, cold (s)", f"{reader['cold_s']:.3f}",
         f"{reader['per_sample_s']:.1f} (chapter-style per-sample reader, {n_samples:,} samples)", "<= 3 s"),
        ("reader archive -> arrays, cached (s)", f"{reader['cached_s']:.3f}", "", "<= 0.3 s"),
        ("top-10 for one user, warm (ms)", f"{lat['topk_ms']:.2f}",
         f"{lat['topk_ref_ms']:.1f} (full network over all movies)", "<= 5 ms"),
        ("one prediction via paddle.inference (ms)", f"{lat['predict_ms']:.3f}",
         f"{lat['predict_ref_ms']:.3f} (dygraph network)", "<= 0.5 ms"),
        ("peak RSS of a training run (MB)", f"{epoch['rss_mb']:,.0f}", "", "<= 2048 MB"),
    ]  # fmt: skip
    print_table(rows)
    print()
    print(phases.rstrip())
    head, *lines = phases.rstrip().splitlines()  # phases.py's table: a 24-character label, then the numbers
    parts = [[line[:24].strip(), *(int(v) for v in line[24:].split())] for line in lines]
    write_results("run", "python benchmarks/run.py", [
        results_table("training", "training, reader and inference on a full-size synthetic ml-1m archive",
                      ["", "recsys", "reference", "target"], [[c.strip() for c in row] for row in rows]),
        results_table("parts", "where a training step's time goes (µs per step, batch 256; benchmarks/phases.py)",
                      ["", *head[24:].split()], parts),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
