"""Time to quality beside the recommenders a user would pick instead, in one run:

    python benchmarks/peers.py [--folds u1 u2 u3 u4 u5] [--ml1m-ratings 1000209 | --no-ml1m] [--latest-small]
                               [--split temporal]                                         (in `make bench`)

On each ml-100k fold (from ../shared/data), on a full-size synthetic ml-1m archive and, with `--latest-small`, on
a synthetic archive in ml-latest-small's layout and sizes (100,836 half-star ratings, 610 users, 9,742 movies with
sparse ids, long-tailed popularity; the chapter's 10 % rule): NDCG@10 and Recall@10
by `evaluate`'s protocol (full ranking, relevant = test ratings of 4 stars or more, training movies excluded)
beside the wall time of the fit, for popularity, EASE (λ 500), `implicit`'s ALS (an optional bench dependency:
`pip install implicit`; its factors, regularization and alpha chosen on a seeded tenth of the training split), recsys
retrieval alone and the recsys two stages (each trained with its defaults through `recsys.train.run`), and the
refit: the same retrieval recipe with `--holdout 0`, alone and as the first stage before the same ranker. For each
objective (the chapter's rating objective too), the share of its training time spent in steps, end-of-epoch
evaluation and saving. With `--split temporal`, each set's temporal split too (each user's latest tenth of the
ratings is the test set), beside its random split(s). Last, the lift table: per set, the first stage (recsys
retrieval) against the two stages, and the two stages against EASE.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from common import META, full_size_archive, results_table, write_results

from recsys import Recommender, movielens, synthetic, topn, train
from recsys.topn.lists import by_score

ALS_GRID = [(f, r, a) for f in (32, 64, 128) for r in (0.1, 1.0, 3.0, 10.0, 30.0) for a in (1.0, 10.0)]


def interactions(data, catalogue: np.ndarray, rows: np.ndarray, is_test: np.ndarray) -> topn.Interactions:
    return topn.Interactions.build(catalogue, data.user[rows], data.movie[rows], data.stars[rows], is_test)


def als_fit(ranking: topn.Interactions, factors: int, regularization: float, alpha: float):
    """implicit's ALS on the training ratings as ones (confidence 1 + alpha): the ranker of its factors."""
    import threadpoolctl
    from implicit.cpu.als import AlternatingLeastSquares

    x = sp.csr_matrix(
        (np.ones(len(ranking.train_user), np.float32), (ranking.train_user, ranking.train_col)),
        shape=(ranking.n_users, len(ranking.catalogue)),
    )
    model = AlternatingLeastSquares(
        factors=factors, regularization=regularization, alpha=alpha, iterations=15, random_state=0
    )
    with threadpoolctl.threadpool_limits(1, "blas"):  # implicit's own advice: its threads, not BLAS's
        model.fit(x, show_progress=False)
    users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)
    return by_score(lambda u: users[u] @ items.T)


def als(data, catalogue: np.ndarray, ranking: topn.Interactions) -> tuple[dict, float, str]:
    """ALS with the grid's best setting on a validation tenth of the training split, refitted on all of it."""
    train_rows = np.flatnonzero(~data.is_test)
    is_val = np.zeros(len(train_rows), bool)
    is_val[np.random.RandomState(0).permutation(len(train_rows))[: len(train_rows) // 10]] = True
    val = interactions(data, catalogue, train_rows, is_val)
    scores = {s: topn.evaluate(als_fit(val, *s), val, 10)["ndcg"] for s in ALS_GRID}
    best = max(ALS_GRID, key=lambda s: (scores[s], -s[0]))
    t = time.perf_counter()
    ranker = als_fit(ranking, *best)
    fit = time.perf_counter() - t
    return topn.evaluate(ranker, ranking, 10), fit, f"factors {best[0]}, regularization {best[1]}, alpha {best[2]}"


def shares(metrics: list[dict]) -> str:
    """Where a training run's time went: per epoch before the last, the shares of its steps, its end-of-epoch
    evaluation and its save; then the last epoch's steps, its full evaluation and save, and the rest of the wall
    (loading, setting up) in seconds."""
    total = metrics[-1]["seconds"] + metrics[-1].get("save_seconds", 0.0)
    *epochs, last = [{k: m.get(f"{k}_seconds", 0.0) for k in ("step", "eval", "save")} for m in metrics]
    spent = {k: sum(e[k] for e in epochs) for k in ("step", "eval", "save")}
    whole = sum(spent.values()) or 1.0
    before = ", ".join(f"{what} {spent[k] / whole:.0%}" for k, what in (("step", "steps"), ("eval", "evaluation"),
                                                                      ("save", "saving")))  # fmt: skip
    rest = total - sum(spent.values()) - sum(last.values())
    if "test_users" in metrics[0]:
        before += f" (evaluating {metrics[0]['test_users']:,} sampled test users)"
    return (f"{total:.0f} s; epochs before the last: {before}; the last: steps {last['step']:.1f} s, full "
            f"evaluation {last['eval']:.1f} s, saving {last['save']:.1f} s; the rest {rest:.1f} s")  # fmt: skip


def recsys_rows(dataset: str, split: str, folder: Path, data, tmp: Path) -> list[tuple[str, dict, float]]:
    """recsys retrieval alone and the two stages, trained with their defaults, and the refit: the same retrieval
    recipe with `--holdout 0` (every training rating), alone and as the first stage before the same ranking
    network: (name, metrics, fit seconds). Also prints where each objective's training time went (the chapter's
    rating objective too)."""
    where = {"dataset": dataset, "split": split, "data_dir": folder, "log": lambda _line: None}
    retrieval, ranking, refit = (tmp / f"{dataset}-{split}-{name}" for name in ("retrieval", "ranking", "refit"))
    runs = {"rating": train.run(objective="rating", model_dir=tmp / f"{dataset}-{split}-rating", **where)}
    t = time.perf_counter()
    runs["retrieval"] = train.run(objective="retrieval", model_dir=retrieval, **where)
    first = time.perf_counter() - t
    runs["ranking"] = train.run(objective="ranking", model_dir=ranking, candidates_from=retrieval, **where)
    both = time.perf_counter() - t
    runs["retrieval --holdout 0"] = train.run(objective="retrieval", model_dir=refit, holdout=0, **where)
    again = time.perf_counter() - t - both
    for objective, metrics in runs.items():
        print(f"  {dataset} {split} {objective} training, {len(metrics)} evaluations, {shares(metrics)}")
    return [
        ("recsys retrieval", Recommender.load(retrieval).evaluate(data), first),
        ("recsys retrieval --holdout 0", Recommender.load(refit).evaluate(data), again),
        ("recsys two stages", Recommender.load(retrieval, ranking).evaluate(data), both),
        ("recsys two stages, refit", Recommender.load(refit, ranking).evaluate(data), both + again),
    ]


def table(dataset: str, split: str, folder: Path, tmp: Path) -> dict[str, tuple[float, float, float]]:
    """Every row of one dataset, printed; returns name -> (ndcg, recall, fit seconds)."""
    data = movielens.load(dataset, folder, split)
    catalogue = np.array(sorted(data.meta.movies), np.int64)
    ranking = interactions(data, catalogue, np.arange(len(data.user)), data.is_test)
    rows = []
    for name, model in (("popularity", topn.Popularity()), ("EASE λ 500", topn.EASE(500.0))):
        t = time.perf_counter()
        fitted = model.fit(ranking)
        fit = time.perf_counter() - t
        rows.append((name, topn.evaluate(fitted.ranker(), ranking, 10), fit))
    try:
        metrics, fit, chosen = als(data, catalogue, ranking)
        rows.append((f"ALS (implicit; {chosen})", metrics, fit))
    except ImportError:
        print("ALS left out: pip install implicit")
    rows += recsys_rows(dataset, split, folder, data, tmp)
    print(f"\n{dataset} {split}: {len(data.user):,} ratings, {len(catalogue):,} movies, NDCG@10 / Recall@10 / fit")
    width = max(len(r[0]) for r in rows)
    for name, m, fit in rows:
        print(f"  {name:{width}}  {m['ndcg']:.4f}  {m['recall']:.4f}  {fit:8.1f} s")
    return {name.split(" (")[0]: (m["ndcg"], m["recall"], fit) for name, m, fit in rows}


LIFT = ("recsys retrieval", "recsys two stages", "EASE λ 500")  # the lift table's rows: first, two stages, EASE


def lift_table(sets: dict[str, dict[str, tuple[float, float, float]]]) -> dict:
    """Per set (name -> its rows, as `table` returns them), printed and as a results table: NDCG@10 of the first
    stage and of the two stages, their ratio, EASE's, and the two stages' ratio to it."""
    rows = []
    print("\nlift, NDCG@10: first stage -> two stages (x), EASE (two stages / EASE)")
    for name, got in sets.items():
        first, both, ease = (got[k][0] for k in LIFT)
        rows.append([name, *(round(float(v), 4) for v in (first, both, both / first, ease, both / ease))])
        print(f"  {name:32}  {first:.4f} -> {both:.4f} ({both / first:.3f} x)  EASE {ease:.4f} ({both / ease:.3f} x)")
    columns = ["", "first stage", "two stages", "two stages / first", "EASE λ 500", "two stages / EASE"]
    return results_table("lift", "NDCG@10: the second stage's lift, per set", columns, rows, [None, 4, 4, 3, 4, 3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--folds", nargs="*", default=["u1", "u2", "u3", "u4", "u5"])
    ap.add_argument("--ml1m-ratings", type=int, default=1_000_209)
    ap.add_argument("--no-ml1m", action="store_true")
    ap.add_argument("--latest-small", action="store_true", help="also a synthetic archive in ml-latest-small's layout")
    ap.add_argument("--split", choices=["random", "temporal"], default="random",
                    help="temporal: each set's temporal split too, beside its random split(s)")  # fmt: skip
    args = ap.parse_args()
    shared, temporal = META.parent, args.split == "temporal"
    tables, sets = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folds = [table("ml-100k", fold, shared, Path(tmp)) for fold in args.folds]
        sets |= {f"ml-100k {fold}": rows for fold, rows in zip(args.folds, folds)}
        if temporal:
            sets["ml-100k temporal"] = rows = table("ml-100k", "temporal", shared, Path(tmp))
            tables.append(_table("ml-100k-temporal", "ml-100k, temporal split", rows))
        if folds:
            print(f"\nml-100k, mean of {len(folds)} folds: NDCG@10 / Recall@10 / fit")
            by_fold, means = [], []
            for name in folds[0]:
                ndcg, recall, fit = (np.mean([f[name][i] for f in folds]) for i in range(3))
                wins = sum(f[name][0] >= f["ALS"][0] for f in folds) if "ALS" in folds[0] else None
                beside = f"  (>= ALS on {wins} of {len(folds)} folds)" if wins is not None else ""
                print(f"  {name:28}  {ndcg:.4f}  {recall:.4f}  {fit:8.1f} s{beside}")
                by_fold.append([name, *(round(f[name][0], 4) for f in folds), *_rounded(ndcg, recall, fit)])
                means.append([name, *_rounded(ndcg, recall, fit)])
            tables += [
                results_table("ml-100k-folds", "ml-100k, NDCG@10 by fold",
                              ["", *args.folds, "mean", "Recall@10, mean", "fit, mean (s)"], by_fold,
                              [None, *[4] * (len(args.folds) + 2), 1]),
                results_table("ml-100k-mean", f"ml-100k, means of the {len(folds)} folds",
                              ["", "NDCG@10", "Recall@10", "fit, mean (s)"], means, [None, 4, 4, 1]),
            ]  # fmt: skip
        if not args.no_ml1m:
            folder = full_size_archive(Path(tmp) / "ml-1m", args.ml1m_ratings)
            sets["ml-1m (synthetic)"] = rows = table("ml-1m", "random", folder, Path(tmp))
            tables.append(_table("ml-1m", "full-size synthetic archive in ml-1m's layout", rows))
            if temporal:
                sets["ml-1m (synthetic) temporal"] = rows = table("ml-1m", "temporal", folder, Path(tmp))
                tables.append(_table("ml-1m-temporal", "the same archive, temporal split", rows))
        if args.latest_small:
            folder = synthetic.write_csv(Path(tmp) / "latest", "ml-latest-small").parent
            sets["ml-latest-small (synthetic)"] = rows = table("ml-latest-small", "random", folder, Path(tmp))
            tables.append(_table("ml-latest-small", "synthetic archive in ml-latest-small's layout and sizes", rows))
            if temporal:
                sets["ml-latest-small (synthetic) temporal"] = rows = table("ml-latest-small", "temporal", folder,
                                                                             Path(tmp))  # fmt: skip
                tables.append(_table("ml-latest-small-temporal", "the same archive, temporal split", rows))
    tables.append(lift_table(sets))
    command = "python benchmarks/peers.py" + (" --latest-small" if args.latest_small else "")
    command += " --split temporal" if temporal else ""
    write_results("peers", command, tables)


def _rounded(ndcg: float, recall: float, fit: float) -> list[float]:
    return [round(float(ndcg), 4), round(float(recall), 4), round(float(fit), 1)]


def _table(table_id: str, title: str, rows: dict[str, tuple[float, float, float]]) -> dict:
    """One dataset's rows as a results table: NDCG@10, Recall@10, fit seconds."""
    return results_table(table_id, title, ["", "NDCG@10", "Recall@10", "fit (s)"],
                         [[name, *_rounded(*values)] for name, values in rows.items()], [None, 4, 4, 1])  # fmt: skip


if __name__ == "__main__":
    main()
