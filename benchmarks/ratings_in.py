"""Ratings into the service beside the reads they share it with, in one run:

    python benchmarks/ratings_in.py [MODEL_DIR] [--requests 400] [--clients 4]   (part of `make bench`)

MODEL_DIR defaults to a one-epoch retrieval model trained here on ml-100k u1 (from ../shared/data). Two load
tests of `recsys.serve` on 127.0.0.1 only, `--requests` each from `--clients` keep-alive clients, run twice
each, alternating: top-10 reads alone (no ratings database), and the same reads with as many
`POST /api/ratings` between them (`--ratings-db` in a temp dir, a write token), each rating synced to disk
before its 201. Prints p50/p99 of the reads and of the writes, side by side.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import tempfile
from pathlib import Path

from common import META
from topn_serve import load_test

from recsys import Recommender


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("model_dir", nargs="?")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model_dir) if args.model_dir else Path(tmp) / "retrieval"
        if args.model_dir is None:
            from recsys import train

            train.run(dataset="ml-100k", split="u1", objective="retrieval", model_dir=model, data_dir=META.parent,
                      epochs=1, log=lambda _line: None)  # fmt: skip
        rec = Recommender.load(model)
        users = random.Random(0).sample(rec.users, min(400, len(rec.users)))
        movies = [int(rec.model.own_movie(m)) for m in rec.model.movie_ids[:400]]
        token = secrets.token_urlsafe(24)
        env = os.environ | {"RECSYS_WRITE_TOKEN": token}
        rows = {"reads alone": [], "reads with ratings in": []}
        for run in range(2):
            for name in rows:
                db = Path(tmp) / f"ratings-{run}.db"
                flags = ("--log-level", "warning") + (("--ratings-db", str(db)) if "ratings" in name else ())
                kinds = ["top10", "rate"] if "ratings" in name else ["top10"]
                rows[name].append(load_test(model, None, users, movies, args.requests, args.clients, {}, kinds,
                                            flags, env))  # fmt: skip
    print(f"{model} ({' -> '.join(rec.stages)}), {args.requests} requests x 2 runs, {args.clients} clients")
    print(f"{'':24}{'top-10 p50':>12}{'top-10 p99':>12}{'rating p50':>12}{'rating p99':>12}{'errors':>8}")
    for name, runs in rows.items():
        cells = [" / ".join(f"{r[k]:.1f}" for r in runs) if k in runs[0] else "-"
                 for k in ("top_p50", "top_p99", "rate_p50", "rate_p99")]  # fmt: skip
        print(f"{name:24}" + "".join(f"{c:>12}" for c in cells) + f"{sum(r['errors'] for r in runs):>8}")
    print("(ms; targets: rating p99 <= 25 ms, with the reads keeping their p99)")


if __name__ == "__main__":
    main()
