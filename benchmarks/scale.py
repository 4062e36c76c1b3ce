"""Scale numbers on a synthetic archive in GroupLens' ml-32m layout, side by side with their targets, in one run:

    python benchmarks/scale.py                          (32,000,204 ratings, 200,948 users, 87,585 movies)
    python benchmarks/scale.py --ratings 1000000 --users 6000 --movies 10000     (a quick run, same steps)
    python benchmarks/scale.py --dataset ml-1m --ratings 200000                  (the ml-1m layout)

The archive is written once into $RECSYS_BENCH_DIR (default /tmp/recsys-bench), outside the repository, and
reused. Every step runs in a child process through the CLIs or the library, with its own data home; each
phase's peak memory is its child's own (`os.wait4`):

1. parsing the archive into its array cache (cold), then loading from the cache;
2. one epoch each of the rating objective (`recsys.train`; samples/s against an ml-1m-size archive) and the
   retrieval objective, and two of the ranking network on the retrieval model's candidates (the first with
   its evaluation of sampled test users, the last with the full one);
3. `evaluate`'s top-N part for every test user over the whole catalogue (popularity, EASE, the retrieval
   model, the two stages) and its memory above the loaded models and data;
4. the first stage's faiss index against exact search: recall@10 and recall@200, and top-10 for one user,
   warm, exact and through the index, alone and with the second stage;
5. a load test of `recsys.serve` with both stages on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import topn_serve
from common import full_size_archive, median_ms, print_table
from faiss_index import one_by_one, recall, seen_matrix
from topn_serve import load_test

from recsys import Recommender, synthetic
from recsys.modeldir import ModelDir
from recsys.serve import one_thread_per_request

GB = 2**30
_LOAD = """
import json, resource, sys, time
import numpy as np
from recsys import movielens
t = time.perf_counter()
d = movielens.load(sys.argv[1], sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t, "ratings": len(d.user), "movies": len(d.meta.movies),
                  "users": len(np.unique(d.user))}))
"""
_TOP_N = """
import json, resource, sys, time
from recsys import evaluate, movielens
from recsys.modeldir import ModelDir
md, rerank = ModelDir.load(sys.argv[1]), ModelDir.load(sys.argv[2])
data = movielens.load(md.meta["dataset"], sys.argv[3], md.meta["split"])
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.perf_counter()
rows, users = evaluate.top_n(md, data, rerank=rerank, ease_items=int(sys.argv[4]))
print(json.dumps({"seconds": time.perf_counter() - t, "loaded": loaded, "users": users, "rows": rows,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def archive(args: argparse.Namespace) -> Path:
    """The folder holding the synthetic archive, written on first use."""
    base = Path(os.environ.get("RECSYS_BENCH_DIR") or "/tmp/recsys-bench")
    if args.dataset == "ml-1m":
        return full_size_archive(base / f"ml-1m-{args.ratings}", args.ratings)
    folder = base / f"{args.dataset}-{args.ratings}-{args.users}-{args.movies}"
    if not (folder / f"{args.dataset}.zip").exists():
        t = time.perf_counter()
        synthetic.write_csv(folder, args.dataset, args.ratings, args.users, args.movies, zipped=True)
        print(f"wrote {folder}/{args.dataset}.zip in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return folder


def child(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Run `cmd`: (wall seconds, its peak RSS in bytes, its stdout); its stderr shows up on failure."""
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read()[-3000:]}")
        return seconds, usage.ru_maxrss * 1024, out.read()


def train(dataset: str, folder: Path, model: Path, env: dict, *flags: str, epochs: int = 1) -> dict:
    """`epochs` epochs through the CLI: the first epoch's metrics record plus `wall` seconds, `rss` bytes,
    `epoch` seconds (the training split at the measured samples/s: a whole epoch's training time, even when cut
    short) and the `last` epoch's record."""
    cmd = [sys.executable, "-m", "recsys.train", "--dataset", dataset, "--data-dir", str(folder)]
    wall, rss, out = child(cmd + ["--model-dir", str(model), "--epochs", str(epochs), *flags], env)
    records = json.loads((model / "metrics.json").read_text())
    n_train = int(out.split(": ", 1)[1].split(" training")[0].replace(",", ""))  # "... from X: N training and"
    epoch = n_train / records[0]["samples_per_s"]
    return {**records[0], "wall": wall, "rss": rss, "epoch": epoch, "n_train": n_train, "last": records[-1]}


def first_stage(md: ModelDir, users: list[int]) -> dict:
    """The index against exact search on these users: recall@10 and @200, and one-user top-10 ms of each."""
    rows = np.array([md.user_row(u) for u in users])
    queries, seen = md.arrays["user_vectors"][rows], seen_matrix(md, rows)
    ix, vectors = md.movie_index, md.catalogue_vectors
    out = {}
    for k in (10, 200):
        exact, exact_ms = one_by_one(None, vectors, queries, seen, k)
        found, faiss_ms = one_by_one(ix, vectors, queries, seen, k)
        out[f"recall{k}"] = recall(found, exact)
        if k == 10:
            out |= {"exact_ms": exact_ms, "faiss_ms": faiss_ms}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--dataset", choices=["ml-32m", "ml-1m"], default="ml-32m", help="layout (default: %(default)s)")
    ap.add_argument("--ratings", type=int, help="default: 32,000,204 (ml-32m), 1,000,209 (ml-1m)")
    ap.add_argument("--users", type=int, default=200_948, help="ml-32m layout (default: %(default)s)")
    ap.add_argument("--movies", type=int, default=87_585, help="ml-32m layout (default: %(default)s)")
    ap.add_argument("--max-batches", type=int, default=0, help="cut the training epochs short (0: whole epochs)")
    ap.add_argument("--no-reference", action="store_true", help="skip the ml-1m-size rating epoch")
    ap.add_argument(
        "--ease-items",
        type=int,
        default=0,
        help="EASE's movies in the top-N step (0, the default: no EASE row; at ml-32m size EASE over 10,000 "
        "movies alone takes longer than the 10-minute target)",
    )
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    if args.ratings is None:
        args.ratings = 32_000_204 if args.dataset == "ml-32m" else 1_000_209
    folder = archive(args)
    cut = ["--max-batches", str(args.max_batches)] if args.max_batches else []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RECSYS_DATA_HOME": str(Path(tmp) / "home")}  # no cache shared with other runs
        for cached in folder.glob("*.recsys-v*.npz"):
            cached.unlink()
        load = [sys.executable, "-c", _LOAD, args.dataset, str(folder)]
        cold_s, cold_rss, out = child(load, env)
        cold = json.loads(out)
        warm = json.loads(child(load, env)[2])
        rating = train(args.dataset, folder, Path(tmp) / "rating", env, *cut)
        retrieval_dir = Path(tmp) / "retrieval"
        retrieval = train(args.dataset, folder, retrieval_dir, env, "--objective", "retrieval", *cut)
        reference = None
        if args.dataset != "ml-1m" and not args.no_reference:
            small = full_size_archive(Path(tmp) / "ml-1m")
            reference = train("ml-1m", small, Path(tmp) / "ml-1m-rating", env, "--max-batches", "1000")
        ranking_dir = Path(tmp) / "ranking"
        ranking = train(args.dataset, folder, ranking_dir, env, "--objective", "ranking", "--candidates-from",
                        str(retrieval_dir), *cut, epochs=2)  # fmt: skip
        ease = str(args.ease_items)
        top_cmd = [sys.executable, "-c", _TOP_N, str(retrieval_dir), str(ranking_dir), str(folder), ease]
        top = json.loads(child(top_cmd, env)[2])
        md = ModelDir.load(retrieval_dir)
        users = [int(u) for u in np.random.RandomState(1).choice(sorted(md.user_ids), 300)]
        found = first_stage(md, users)
        two = {s: Recommender.load(retrieval_dir, ranking_dir, search=s) for s in ("exact", "auto")}
        two_ms = {s: median_ms(lambda u, r=r: r.recommend(u, 10), users) for s, r in two.items()}
        one_thread_per_request()  # as `serve` computes a request
        served_ms = median_ms(lambda u: two["auto"].recommend(u, 10), users)
        movies = [md.own_movie(m) for m in md.movie_ids]
        new = {} if args.dataset != "ml-1m" else topn_serve.CHAPTER_USER
        served = load_test(retrieval_dir, ranking_dir, users, movies, args.requests, args.clients, new)
    n = f"{cold['ratings']:,} ratings, {cold['users']:,} users, {cold['movies']:,} movies"
    ref = f"ml-1m size: {reference['samples_per_s']:,.0f} samples/s" if reference else ""
    ndcg = ", ".join(f"{r['model'].split(' (')[0].split(':')[0]} {r['ndcg']:.3f}" for r in top["rows"])
    seconds = {r["model"].split(" (")[0].split(":")[0]: r["seconds"] for r in top["rows"]}
    ease = next((r["model"] for r in top["rows"] if r["model"].startswith("EASE")), "EASE left out (--ease-items)")
    ranked = ranking["step_seconds"] + ranking["eval_seconds"] + ranking.get("save_seconds", 0.0)
    sampled = f"{ranking['test_users']:,} sampled" if "test_users" in ranking else "all"
    setup = ranking["wall"] - ranking["last"]["seconds"] - ranking["last"].get("save_seconds", 0.0)
    how = "measured" if not args.max_batches else f"at the samples/s of {args.max_batches:,} batches"
    auto = "faiss" if md.meta.get("index") else "exact (below the index's catalogue size)"
    table = [
        (f"parse + cache, cold (s): {n}", f"{cold['seconds']:.1f}", f"{cold_s:.1f} with start-up, "
         f"peak RSS {cold_rss / GB:.1f} GB", "<= 60 s"),
        ("load from the cache (s)", f"{warm['seconds']:.2f}", "", "<= 3 s"),
        (f"one rating epoch, training (s), {how}", f"{rating['epoch']:.0f}",
         f"{rating['samples_per_s']:,.0f} samples/s; {ref}", "<= 360 s"),
        (f"one retrieval epoch, training (s), {how}", f"{retrieval['epoch']:.0f}",
         f"{retrieval['epoch'] / rating['epoch']:.2f}x the rating epoch; "
         f"{retrieval['samples_per_s']:,.0f} samples/s", "<= 2x"),
        ("one ranking epoch, with its end-of-epoch evaluation and save (s), measured", f"{ranked:.0f}",
         f"{ranked / rating['epoch']:.2f}x the rating epoch: steps {ranking['step_seconds']:.0f} s, evaluation of "
         f"{sampled} test users {ranking['eval_seconds']:.0f} s, save {ranking.get('save_seconds', 0):.0f} s; "
         f"after the last epoch, the full evaluation {ranking['last']['eval_seconds']:.0f} s; before the first, "
         f"{setup:.0f} s to load, find the candidates and fit the item-item model", "<= 3x"),
        ("training peak RSS, rating / retrieval / ranking (GB)",
         f"{rating['rss'] / GB:.1f} / {retrieval['rss'] / GB:.1f} / {ranking['rss'] / GB:.1f}", "",
         "<= 6 / 6 / 8 GB"),
        (f"top-N evaluate, {top['users']:,} users x {len(md.movie_ids):,} movies (s)", f"{top['seconds']:.0f}",
         "; ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + f"; NDCG@10 {ndcg}; {ease}",
         "two stages <= 900 s"),
        ("top-N evaluate, memory above the loaded models (GB)", f"{(top['peak'] - top['loaded']) / GB:.1f}",
         f"loaded: {top['loaded'] / GB:.1f} GB", "<= 4 GB"),
        ("faiss index against exact: recall@10 / recall@200", f"{found['recall10']:.4f} / {found['recall200']:.4f}",
         f"{md.meta['index'] or 'no index saved'}", "@200 >= 0.99"),
        ("retrieval top-10 for one user, warm, faiss / exact (ms)",
         f"{found['faiss_ms']:.2f} / {found['exact_ms']:.2f}",
         f"the default: {auto}", ""),
        ("two-stage top-10 for one user, warm, default / exact (ms)",
         f"{two_ms['auto']:.2f} / {two_ms['exact']:.2f}", f"{served_ms:.2f} ms on one thread, as `serve` runs",
         "<= 5 ms"),
        (f"serve, two stages: top-10 latency p50 / p99 (ms), {args.clients} clients",
         f"{served['top_p50']:.1f} / {served['top_p99']:.1f}",
         f"all kinds {served['all_p50']:.1f} / {served['all_p99']:.1f}; {served['rps']:,.0f} req/s, "
         f"{served['errors']} errors of {served['n']}; server peak RSS {served['rss'] / GB:.1f} GB",
         "p99 <= 25 ms, 0 errors"),
    ]  # fmt: skip
    print_table(table)


if __name__ == "__main__":
    main()
