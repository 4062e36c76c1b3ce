"""Top-N, model-dir and serving numbers on a full-size ml-1m-layout archive, side by side in one run:

    python benchmarks/topn_serve.py [--ratings 1000209] [--requests 1000] [--clients 4]   (part of `make bench`)

1. one epoch of `train --objective retrieval` (in-batch negatives, with history) and one epoch of
   `train --objective ranking` on its candidates, against one epoch of the chapter's rating objective, all
   through the CLI on the same archive; each also with `--no-fused` (the plain layers' step);
2. `evaluate`'s top-N part (popularity, EASE, the model; 6,040 users x 3,883 movies, full ranking), and the
   same with the two stages (`--rerank RANKING`);
3. two-stage top-10 for one user, warm, against the retrieval model's top-10 alone;
4. loading an ml-1m model dir with its manifest checks, against reading its files without them;
5. a bounded load test of `recsys.serve --rerank RANKING` on 127.0.0.1 only: mixed requests (top-10, a new
   user with rated movies, similar movies, movie details) from concurrent keep-alive clients; latency
   percentiles per kind, throughput, errors.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import full_size_archive, median_ms, print_table, results_table, write_results

from recsys import evaluate, movielens
from recsys.modeldir import ModelDir
from recsys.topn import registry, stages
from recsys.topn.towers import TwoStages


def epoch(folder: Path, model: Path, *flags: str) -> dict:
    """One epoch through the CLI: its last metrics record (seconds to the end of its evaluation, training
    samples/s, ...)."""
    cmd = [sys.executable, "-m", "recsys.train", "--data-dir", str(folder), "--model-dir", str(model), "--epochs", "1"]
    subprocess.run(cmd + list(flags), check=True, capture_output=True)
    return json.loads((model / "metrics.json").read_text())[-1]


def epoch_seconds(folder: Path, model: Path, *flags: str) -> float:
    return epoch(folder, model, *flags)["seconds"]


CHAPTER_USER = {"gender": "F", "age": 25, "job": 4}  # a new user's features on the chapter's data


MIXED = ["top10"] * 5 + ["similar"] * 2 + ["rated"] * 2 + ["movie"]


def load_test(
    retrieval: Path,
    ranking: Path | None,
    users: list[int],
    movies: list[int],
    n: int,
    clients: int,
    new=CHAPTER_USER,
    kinds: list[str] = MIXED,
    flags: tuple[str, ...] = ("--log-level", "warning"),
    env: dict | None = None,
) -> dict:
    """`n` requests of `kinds` (drawn evenly) from `clients` threads to `recsys.serve FLAGS` on 127.0.0.1;
    `new`: a new user's features (data without user features: {}). By default without the request log; `env`:
    the server's environment (its RECSYS_WRITE_TOKEN is sent with POSTs). Returns p50/p99 in ms per kind
    (`KIND_p50`), and over all requests; an error is any answer but 200 (201 for a rating)."""
    auth = {"Authorization": f"Bearer {env['RECSYS_WRITE_TOKEN']}"} if env and "RECSYS_WRITE_TOKEN" in env else {}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "recsys.serve", "--model-dir", str(retrieval)]
    cmd += ["--rerank", str(ranking)] if ranking is not None else []
    server = subprocess.Popen(
        cmd + ["--port", str(port), "--host", "127.0.0.1", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        server.stdout.readline()
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        rng = random.Random(0)
        plan = []
        for _ in range(n):
            kind, u, m = rng.choice(kinds), rng.choice(users), rng.choice(movies)
            rated = json.dumps({**new, "rated": [[m, 5], [rng.choice(movies), 4]]})
            rating = json.dumps({"user_id": u, "movie_id": m, "rating": rng.randint(1, 5)})
            url = {"top10": f"/api/users/{u}/recommendations?k=10", "similar": f"/api/movies/{m}/similar?k=10",
                   "rated": ("/api/recommend", rated), "movie": f"/api/movies/{m}",
                   "rate": ("/api/ratings", rating)}[kind]  # fmt: skip
            plan.append((kind, url))
        results: list[tuple[str, float, int]] = []
        lock = threading.Lock()

        def client(part):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            for kind, url in part:
                t = time.perf_counter()
                try:
                    if isinstance(url, tuple):
                        conn.request("POST", url[0], url[1], {"content-type": "application/json"} | auth)
                    else:
                        conn.request("GET", url)
                    r = conn.getresponse()
                    r.read()
                    status = r.status
                except OSError:
                    status, conn = 0, http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                with lock:
                    results.append((kind, time.perf_counter() - t, status))
            conn.close()

        for kind, url in plan[:20]:  # warm-up, not counted
            client([(kind, url)])
        results.clear()
        threads = [threading.Thread(target=client, args=(plan[i::clients],)) for i in range(clients)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
    finally:
        server.terminate()
        _, _, usage = os.wait4(server.pid, 0)  # its peak memory too
        server.returncode = 0
    every = np.array([d for _, d, _ in results]) * 1e3
    out = {
        "n": len(results), "rss": usage.ru_maxrss * 1024, "rps": len(results) / wall,
        "errors": sum(s != (201 if k == "rate" else 200) for k, _, s in results),
        "all_p50": np.percentile(every, 50), "all_p99": np.percentile(every, 99),
    }  # fmt: skip
    for kind in set(kinds):
        ms = np.array([d for k, d, _ in results if k == kind]) * 1e3
        name = "top" if kind == "top10" else kind
        out[f"{name}_p50"], out[f"{name}_p99"] = np.percentile(ms, 50), np.percentile(ms, 99)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--ratings", type=int, default=1_000_209)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = full_size_archive(Path(tmp), args.ratings)
        rating, retrieval, ranking = Path(tmp) / "rating", Path(tmp) / "retrieval", Path(tmp) / "ranking"
        runs = {
            (name, fused): epoch(folder, Path(tmp) / (name if fused else f"{name}-plain"), *flags,
                                 "--fused" if fused else "--no-fused")
            for fused in (True, False)
            for name, flags in (("rating", ()), ("retrieval", ("--objective", "retrieval")))
        }  # fmt: skip
        for fused in (True, False):
            runs["ranking", fused] = epoch(folder, ranking if fused else Path(tmp) / "ranking-plain", "--objective",
                                           "ranking", "--candidates-from", str(retrieval),
                                           "--fused" if fused else "--no-fused")  # fmt: skip
        rating_s, retrieval_s = runs["rating", True]["seconds"], runs["retrieval", True]["seconds"]
        ranking_s = runs["ranking", True]["seconds"]
        full_s = epoch_seconds(folder, Path(tmp) / "full", "--objective", "retrieval", "--negatives", "full",
                               "--max-batches", "200")  # fmt: skip
        n_pos = int((lambda d: ((~d.is_test) & (d.stars >= 4)).sum())(movielens.load(data_dir=folder)))
        full_epoch_s = full_s * (n_pos / 256) / 200  # 200 batches timed, scaled to the epoch's batches
        md, rr = ModelDir.load(retrieval), registry.second_stage(ModelDir.load(ranking))
        two = TwoStages(registry.first_stage(md), rr, rr.candidates())
        data = movielens.load(data_dir=folder)
        t = time.perf_counter()
        rows, n_users = evaluate.top_n(md, data)
        top_n_s = time.perf_counter() - t
        t = time.perf_counter()
        two_rows, _ = evaluate.top_n(md, data, rerank=rr.md)
        two_n_s = time.perf_counter() - t - top_n_s  # the two-stage ranking alone: the rest is the same as above
        users = [int(u) for u in np.random.RandomState(1).choice(sorted(md.user_ids), 300)]
        two_ms = median_ms(lambda u: two.top_k(u, 10), users)
        one_ms = median_ms(lambda u: stages.top_k(md, u, 10), users)
        t = time.perf_counter()
        for _ in range(5):
            ModelDir.load(rating).params()
        load_ms = (time.perf_counter() - t) / 5 * 1e3
        t = time.perf_counter()
        for _ in range(5):
            for f in rating.iterdir():
                f.read_bytes()
            with np.load(rating / "arrays.npz") as z:
                {k: z[k] for k in z.files}
        raw_ms = (time.perf_counter() - t) / 5 * 1e3
        size_mb = sum(f.stat().st_size for f in rating.iterdir()) / 2**20
        served = load_test(retrieval, ranking, users, [int(m) for m in md.movie_ids], args.requests, args.clients)
    ndcg = {r["model"].split(" (")[0]: r["ndcg"] for r in rows}
    two = two_rows[-1]
    table = [
        ("one retrieval epoch, in-batch negatives (s)", f"{retrieval_s:.1f}",
         f"{rating_s:.1f} (rating epoch); full softmax ~{full_epoch_s:.0f}", f"{retrieval_s / rating_s:.2f}x (<= 2x)"),
        ("one ranking epoch on the retrieval candidates (s)", f"{ranking_s:.1f}", f"{rating_s:.1f} (rating epoch)",
         f"{ranking_s / rating_s:.2f}x (<= 3x)"),
        *[(f"  {name} epoch: fused step vs --no-fused (s)", f"{runs[name, True]['seconds']:.1f}",
           f"{runs[name, False]['seconds']:.1f} (plain layers); training "
           f"{runs[name, True]['samples_per_s']:,.0f} vs {runs[name, False]['samples_per_s']:,.0f} samples/s",
           f"{runs[name, True]['samples_per_s'] / runs[name, False]['samples_per_s']:.2f}x samples/s")
          for name in ("rating", "retrieval", "ranking")],
        (f"top-N evaluate, {n_users:,} users x {len(md.movie_ids):,} movies (s)", f"{top_n_s:.1f}",
         f"NDCG@10 popularity {ndcg['popularity']:.3f}, EASE {ndcg['EASE']:.3f}, retrieval {ndcg['retrieval']:.3f}",
         "<= 10 s"),
        (f"two-stage evaluate, all users, top {rr.candidates()} -> ranking (s)", f"{two_n_s:.1f}",
         f"NDCG@10 two-stage {two['ndcg']:.3f}, candidates' recall {two['candidates_recall']:.3f}", "<= 30 s"),
        ("two-stage top-10 for one user, warm (ms)", f"{two_ms:.2f}", f"{one_ms:.2f} (retrieval top-10 alone)",
         "<= 5 ms"),
        (f"load a {size_mb:.0f} MB model dir with its checks (ms)", f"{load_ms:.0f}",
         f"{raw_ms:.0f} (read its files, no checks)", ""),
        (f"serve: top-10 latency p50 / p99 (ms), {args.clients} clients",
         f"{served['top_p50']:.1f} / {served['top_p99']:.1f}",
         f"all kinds {served['all_p50']:.1f} / {served['all_p99']:.1f}", "<= 5 / 25 ms"),
        ("serve: throughput (req/s), errors", f"{served['rps']:,.0f}", f"{served['errors']} errors of {served['n']}",
         "0 errors"),
    ]  # fmt: skip
    print_table(table)
    latency = [["top-10, two stages", round(served["top_p50"], 1), round(served["top_p99"], 1)],
               ["every kind of request", round(served["all_p50"], 1), round(served["all_p99"], 1)]]  # fmt: skip
    write_results("topn_serve", "python benchmarks/topn_serve.py", [
        results_table("top-n", "top-N, model dirs and serving on a full-size synthetic ml-1m archive",
                      ["", "recsys", "reference", "target"], [[c.strip() for c in row] for row in table]),
        results_table("serving", f"served latency, {args.clients} clients, {args.requests:,} mixed requests",
                      ["", "p50 (ms)", "p99 (ms)"], latency, [None, 1, 1]),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
