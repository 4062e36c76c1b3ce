"""Score a trained model and baselines on the same test split: `python -m recsys.evaluate --model-dir DIR`.

Two tables. Rating: a rating model runs through its saved inference model beside global mean, user+movie
biases and a small matrix factorisation fitted here on the same training split; costs are the chapter's
(mean square error on 2*stars-5), RMSE and MAE in stars with predictions clipped to 1..5. Top-N: full
ranking of every movie a test user did not rate in training (see `recsys.topn` for the metrics), the
model beside popularity and EASE; `--rerank RATING_DIR` with a retrieval model adds the rating model alone
and the two stages. The lists leave out the training ratings alone, as the protocol requires (a served list
leaves out the test ratings too: `infer --exclude-rated train` gives the lists ranked here). A model trained
with `--split all` has no test split, and is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from recsys import modelflags, movielens, topn
from recsys.errors import ArgumentParser, cli
from recsys.modeldir import ModelDir
from recsys.movielens import MovieLens
from recsys.rating.baselines import Biases, GlobalMean, MatrixFactorization
from recsys.rating.metrics import scores
from recsys.recommender import Recommender
from recsys.topn import nearest
from recsys.topn.checks import check_data, check_tested


def model_scores(md: ModelDir, data: MovieLens, idx: np.ndarray, batch: int = 8192) -> np.ndarray:
    """The saved model's scores (label space) for the ratings `idx`, through `paddle.inference`."""
    out = []
    if md.history:  # the saved model reads dense history rows: keep a batch of them near 64 MB
        batch = max(1, min(batch, (1 << 24) // md.meta["sizes"]["n_movies"]))
    for s in range(0, len(idx), batch):
        part = idx[s : s + batch]
        feeds = md.tables.features(data.user[part], data.movie[part])
        if md.history:
            feeds["history"] = md.history_of(data.user[part])
        out.append(md.predictor(feeds)[:, 0])
    return np.concatenate(out)


def compare(md: ModelDir | None, data: MovieLens, baselines: bool = True) -> list[dict]:
    """One row per predictor on the test split: name, cost, rmse, mae, seconds (fit + predict).
    `md` is a rating model (or None: the baselines alone); `baselines` False: the model alone."""
    test, train = np.flatnonzero(data.is_test), ~data.is_test
    label = data.label[test, 0]
    rows = []
    if md is not None:
        check_data(md, data)
        t = time.perf_counter()
        predicted = model_scores(md, data, test)
        rows.append({"model": f"recsys model ({md.path.name})", **scores(predicted, label, data.lowest_rating())})
        rows[0]["seconds"] = time.perf_counter() - t
    for baseline in (GlobalMean(), Biases(), MatrixFactorization()) if baselines else ():
        t = time.perf_counter()
        baseline.fit(data.user[train], data.movie[train], data.stars[train])
        stars = baseline.predict(data.user[test], data.movie[test])
        row = scores(2 * stars - 5, label, data.lowest_rating())
        rows.append({"model": baseline.name, **row, "seconds": time.perf_counter() - t})
    return rows


def top_n(
    md: ModelDir,
    data: MovieLens,
    k: int = 10,
    relevant: int = 4,
    ease_lambda: float = 500.0,
    rerank: ModelDir | None = None,
    candidates: int | None = None,
    ease_items: int = topn.EASE_MAX_ITEMS,
    baselines: bool = True,
    search: str = "auto",
) -> tuple[list[dict], int]:
    """One row per recommender (popularity, EASE, the model, and with `rerank` the second stage alone where it
    ranks alone (a rating model) and the two stages over the second stage's candidates (`candidates`, else its
    own number), with their recall): precision, recall, ndcg, hr at k, coverage, seconds. Also returns the
    number of users. EASE covers the `ease_items` most-rated movies (0: no EASE row); `baselines` False leaves
    popularity and EASE out. `search`: the first stage's (see `Recommender`)."""
    check_data(md, data)
    two = Recommender(md, rerank, candidates, search) if rerank is not None else None
    ranking = topn.Interactions.build(md.movie_ids, data.user, data.movie, data.stars, data.is_test, relevant)
    rankers = []
    chosen = [topn.Popularity()] + ([topn.EASE(ease_lambda, ease_items)] if ease_items else [])
    for baseline in chosen if baselines else []:  # named once fitted: EASE says when it is capped
        rankers.append((lambda b=baseline: b.name, lambda b=baseline: b.fit(ranking).ranker()))
    one = Recommender(md, search=search)
    rankers.append((f"{one.first.label} ({md.path.name})", one.ranker))
    pools: list[np.ndarray] = []
    if two is not None:
        second, alone = two.second.label, two.second.alone
        if alone is not None:
            rankers.append((f"{alone.label} ({rerank.path.name})", lambda: alone.ranker(search)))
        rankers.append((f"two-stage: {two.first.label} top {two.candidates} -> {second}", lambda: two.ranker(pools)))
    rows = []
    for name, make in rankers:
        t = time.perf_counter()
        result = topn.evaluate(make(), ranking, k)
        name = name() if callable(name) else name
        rows.append({"model": name, **{m: result[m] for m in ("precision", "recall", "ndcg", "hr", "coverage")}})
        rows[-1]["seconds"] = time.perf_counter() - t
    if pools:  # the candidates' recall: the share of relevant test movies the second stage can reach at all
        rows[-1]["candidates_recall"] = topn.recall_at(np.concatenate(pools), ranking.relevant())
    return rows, result["users"]


def _data_for(md: ModelDir, args: argparse.Namespace) -> MovieLens:
    dataset = args.dataset or md.meta["dataset"]
    split = args.split or md.meta["split"]
    data_dir = args.data_dir
    if data_dir is None and dataset == md.meta["dataset"]:
        data_dir = md.source()  # the archive it was trained on, or one error saying it moved
    return movielens.load(dataset, data_dir, split)


@cli
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m recsys.evaluate", description=__doc__.split("\n\n")[0])
    modelflags.add(ap, "--k")
    ap.add_argument("--dataset", choices=sorted(movielens.SPLITS), help="default: the model's")
    ap.add_argument("--split", help="default: the model's")
    ap.add_argument("--data-dir", help="default: where the model's training data was found")
    ap.add_argument("--k", type=int, default=10, help="length of the top-N lists (default: %(default)s)")
    ap.add_argument("--relevant", type=int, default=4, help="test ratings of this many stars or more are relevant")
    ap.add_argument("--ease-lambda", type=float, default=500.0, help="EASE's L2 weight (default: %(default)s)")
    ap.add_argument(
        "--ease-items",
        type=int,
        default=topn.EASE_MAX_ITEMS,
        help="EASE's item-item matrix covers this many of the most-rated movies, the rest rank after them by "
        "popularity (0: no EASE row; its cost grows with users x items^2) (default: %(default)s)",
    )
    ap.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also score the baselines (global mean, biases, ALS; popularity, EASE) (default: on)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    for flag, ok, rule in (
        ("--k", args.k >= 1, "at least 1"),
        ("--relevant", 1 <= args.relevant <= 5, "1..5"),
        ("--ease-lambda", args.ease_lambda > 0 and math.isfinite(args.ease_lambda), "positive"),
        ("--ease-items", args.ease_items >= 0, "0 or more"),
    ):
        if not ok:
            ap.error(f"{flag} must be {rule}, got {getattr(args, flag[2:].replace('-', '_'))}")
    modelflags.check(ap, args)
    search = nearest.search_for(args.exact)
    rec = Recommender.load(args.model_dir, args.rerank, args.candidates, search)
    md, rerank, rating = rec.model, rec.rerank, rec.rating_model
    check_tested(md)
    data = _data_for(md, args)
    check_tested(md, data)
    rows = compare(rating, data, args.baselines) if rating is not None or args.baselines else []
    candidates = max(rec.candidates, args.k)  # the rule of infer and serve too
    ranked, n_users = top_n(
        md, data, args.k, args.relevant, args.ease_lambda, rerank, candidates, args.ease_items, args.baselines, search
    )
    n_test = int(data.is_test.sum())
    head = {"dataset": data.meta.dataset, "split": data.split, "n_train": len(data.user) - n_test, "n_test": n_test}
    if args.json:
        top = {"k": args.k, "relevant": args.relevant, "users": n_users, "rows": ranked}
        print(json.dumps({**head, "rows": rows, "top_n": top}))
        return 0
    print(f"{head['dataset']} split {head['split']}: {head['n_train']:,} training, {head['n_test']:,} test ratings")
    width = max(len(r["model"]) for r in rows + ranked)
    if rows:
        print(f"{'rating':<{width}}  {'test cost':>9}  {'RMSE':>6}  {'MAE':>6}")
    for r in rows:
        print(f"{r['model']:<{width}}  {r['cost']:9.4f}  {r['rmse']:6.4f}  {r['mae']:6.4f}")
    k = args.k
    print(f"\ntop-{k}, full ranking, {n_users:,} users with a test rating of {args.relevant}+ stars")
    print(f"{'':<{width}}  {f'P@{k}':>6}  {f'R@{k}':>6}  {f'NDCG@{k}':>7}  {f'HR@{k}':>6}  {'cover':>6}")
    for r in ranked:
        print(
            f"{r['model']:<{width}}  {r['precision']:6.4f}  {r['recall']:6.4f}  {r['ndcg']:7.4f}  "
            f"{r['hr']:6.4f}  {r['coverage']:6.4f}"
        )
        if "candidates_recall" in r:
            ceiling = r["candidates_recall"]
            print(f"recall@{candidates} of the first stage's candidates (the second stage's ceiling): {ceiling:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
