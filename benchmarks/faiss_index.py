"""The faiss index of the first stage against exact search, on a trained model's own vectors:

    python benchmarks/faiss_index.py MODEL_DIR [--users 500]

For each HNSW setting: its build time and size, recall@10 and recall@200 of one-user searches (k + the rated
movies asked for, rated ones dropped) against exact search, and the median time per user beside exact
search's. Then, on sub-catalogues, the one-user time of both with the chosen settings, which is where
`recsys.modeldir.index.SAVED_FROM` comes from.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp
from common import median_ms

from recsys.modeldir import ModelDir, index
from recsys.topn import nearest


def seen_matrix(md: ModelDir, rows: np.ndarray) -> sp.csr_matrix:
    """[len(rows), M] 0/1: each user's training ratings as catalogue columns."""
    cols = []
    for r in rows.tolist():
        movies, _, is_test = md.ratings_of(r)
        cols.append(np.searchsorted(md.movie_ids, movies[~is_test]))
    indptr = np.cumsum([0] + [len(c) for c in cols])
    data = np.ones(indptr[-1], np.float32)
    return sp.csr_matrix((data, np.concatenate(cols), indptr), shape=(len(rows), len(md.movie_ids)))


def one_by_one(ix, vectors, queries, seen, k, ef=nearest.EF_SEARCH) -> tuple[np.ndarray, float]:
    """Each user's top k, one search per user: ([n, k] columns, median ms per user)."""
    out = np.zeros((len(queries), min(k, len(vectors))), np.int64)

    def one(i):
        out[i] = nearest.top_k(ix, vectors, queries[i : i + 1], seen[i], k, ef)[0][0]

    ms = median_ms(one, list(range(len(queries))))
    return out, ms


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got.tolist(), want.tolist())]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("model_dir")
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--ef-construction", type=int, nargs="+", default=[40, 100, 200])
    p.add_argument("--ef-search", type=int, nargs="+", default=[128, 256, 512])
    args = p.parse_args()
    md = ModelDir.load(args.model_dir)
    vectors = md.catalogue_vectors
    users = np.sort(np.random.RandomState(0).choice(len(md.own_user_ids), args.users, replace=False))
    rows = np.array([md.user_row(int(md.own_user_ids[u])) for u in users])
    queries, seen = md.arrays["user_vectors"][rows], seen_matrix(md, rows)
    print(f"{md.path}: {len(vectors):,} movies x {vectors.shape[1]}, {len(rows)} users, "
          f"{seen.getnnz(axis=1).mean():.0f} rated each on average")  # fmt: skip
    exact = {k: one_by_one(None, vectors, queries, seen, k) for k in (10, 200)}
    print(f"exact search: {exact[10][1]:.2f} ms per user at k=10, {exact[200][1]:.2f} ms at k=200")
    print(f"{'ef_construction':>15} {'build s':>8} {'MB':>6} {'ef_search':>9} {'recall@10':>9} {'recall@200':>10} "
          f"{'ms@10':>6} {'ms@200':>6}")  # fmt: skip
    for efc in args.ef_construction:
        t = time.perf_counter()
        ix = index.build(vectors, efc)
        built, mb = time.perf_counter() - t, len(index.to_bytes(ix)) / 1e6
        for efs in args.ef_search:
            got = {k: one_by_one(ix, vectors, queries, seen, k, efs) for k in (10, 200)}
            print(f"{efc:>15} {built:>8.1f} {mb:>6.0f} {efs:>9} {recall(got[10][0], exact[10][0]):>9.4f} "
                  f"{recall(got[200][0], exact[200][0]):>10.4f} {got[10][1]:>6.2f} {got[200][1]:>6.2f}")  # fmt: skip
    settings = f"ef_construction {index.EF_CONSTRUCTION}, ef_search {nearest.EF_SEARCH}"
    print(f"one user, k=10, on sub-catalogues ({settings}):")
    print(f"{'movies':>8} {'exact ms':>9} {'faiss ms':>9} {'build s':>8}")
    for m in (2_000, 5_000, 10_000, 20_000, 40_000, len(vectors)):
        if m > len(vectors):
            continue
        sub = vectors[:m]
        t = time.perf_counter()
        ix = index.build(sub)
        built = time.perf_counter() - t
        part = seen[:, :m]
        print(f"{m:>8,} {one_by_one(None, sub, queries, part, 10)[1]:>9.2f} "
              f"{one_by_one(ix, sub, queries, part, 10)[1]:>9.2f} {built:>8.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
