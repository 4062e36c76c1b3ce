"""Where a served top-10 spends its time, beside a plain reference, in one run:

    python benchmarks/serve_path.py MODEL_DIR [--rerank RANKING_DIR] [--requests 400] [--clients 4]

1. the bare top-10 on the same vectors: the user's saved vector against the catalogue, NumPy's argpartition,
   no exclusions, no ids or titles (the floor);
2. `Recommender.recommend(user, 10)` in process (its rated movies excluded, answers in the data's ids);
3. a load test of `recsys.serve` on 127.0.0.1 only: `--requests` top-10 requests from `--clients` keep-alive
   clients, run twice each way, alternating: with the request log (serve's default) and without it, and, with
   `--against CHECKOUT`, the same server from another checkout of recsys (say `git worktree add /tmp/old
   HEAD~3`), with its request log.
"""

from __future__ import annotations

import argparse
import os
import random

import numpy as np
from common import median_ms
from topn_serve import load_test

from recsys import Recommender


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("model_dir")
    ap.add_argument("--rerank")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--against", help="another checkout of recsys whose server to load-test alongside")
    args = ap.parse_args()
    rec = Recommender.load(args.model_dir, args.rerank)
    md = rec.model
    users = random.Random(0).sample(rec.users, min(400, len(rec.users)))
    vectors, catalogue = md.arrays["user_vectors"], md.catalogue_vectors

    def bare(u):
        scores = catalogue @ vectors[md.user_row(u)]
        top = np.argpartition(-scores, 10)[:10]
        return top[np.argsort(-scores[top])]

    print(f"{md.path} ({' -> '.join(rec.stages)}): {len(md.movie_ids):,} movies, {len(users)} users")
    print(f"in process, median per top-10: bare top-k {median_ms(bare, users):.3f} ms, "
          f"Recommender.recommend {median_ms(lambda u: rec.recommend(u, 10), users):.3f} ms")  # fmt: skip
    movies = [int(md.own_movie_ids[m]) for m in md.movie_ids[:50]]
    ways = {"request log on (default)": ((), None), "request log off": (("--log-level", "warning"), None)}
    if args.against:
        ways[f"{args.against}, log on"] = ((), {**os.environ, "PYTHONPATH": os.path.abspath(args.against)})
    runs: dict[str, list[dict]] = {w: [] for w in ways}
    for _ in range(2):
        for way, (flags, env) in ways.items():
            runs[way].append(load_test(md.path, rec.rerank and rec.rerank.path, users, movies, args.requests,
                                       args.clients, kinds=["top10"], flags=flags, env=env))  # fmt: skip
    print(f"HTTP, {args.requests} top-10 requests, {args.clients} clients, two runs each, alternating:")
    print(f"{'':32} {'p50 ms':>13} {'p99 ms':>13} {'req/s':>11} {'errors':>6}")
    for way, rs in runs.items():
        p50 = " / ".join(f"{r['top_p50']:.1f}" for r in rs)
        p99 = " / ".join(f"{r['top_p99']:.1f}" for r in rs)
        rps = " / ".join(f"{r['rps']:.0f}" for r in rs)
        print(f"{way:32} {p50:>13} {p99:>13} {rps:>11} {sum(r['errors'] for r in rs):>6}")


if __name__ == "__main__":
    main()
