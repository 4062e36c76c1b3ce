"""Use a trained model: `python -m recsys.infer --user 1 --movie 783` or `--user 1 --top-k 10`.

Scores live in the chapter's label space `2*stars - 5` (range -5..5); `stars = (score + 5) / 2`.
A single prediction runs the saved inference model through `paddle.inference`, as the chapter's
`load_inference_model` did; top-k ranks precomputed unit tower vectors with one matrix product.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from recsys.errors import RecsysError, cli
from recsys.modeldir import ModelDir


def stars(score: float) -> float:
    """Label-space score (2*stars-5) to stars."""
    return (float(score) + 5) / 2


def predict(md: ModelDir, user_id: int, movie_ids: list[int] | np.ndarray) -> np.ndarray:
    """Scores of one user on several movies through the saved inference model (label space)."""
    movie_ids = np.asarray(movie_ids, np.int64)
    feeds = md.tables.features(np.full(len(movie_ids), user_id, np.int64), movie_ids)
    return md.predictor(feeds)[:, 0]


def top_k(md: ModelDir, user_id: int, k: int) -> list[tuple[int, float]]:
    """The k best-scored movies the user has not rated in the training split: (movie id, score) pairs."""
    scores = 5.0 * md.arrays["movie_vectors"] @ md.arrays["user_vectors"][user_id]
    candidates = np.array([int(m) for m in md.meta["movies"]], np.int64)
    rated, _, is_test = md.ratings_of(user_id)
    candidates = candidates[~np.isin(candidates, rated[~is_test])]
    k = min(k, len(candidates))
    best = candidates[np.argpartition(-scores[candidates], k - 1)[:k]] if k else candidates
    best = best[np.argsort(-scores[best], kind="stable")]
    return [(int(m), float(scores[m])) for m in best]


def _check(md: ModelDir, user: int | None = None, movie: int | None = None) -> None:
    if user is not None and not md.has_user(user):
        raise RecsysError(
            f"unknown user id {user}; the model knows users 1..{max(md.meta['users'])} of {md.meta['dataset']}"
        )
    if movie is not None and not md.has_movie(movie):
        raise RecsysError(f"unknown movie id {movie}; {md.meta['dataset']} has no such movie")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m recsys.infer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default="recommender_system.inference.model", help="default: %(default)s")
    ap.add_argument("--user", type=int, help="user id")
    ap.add_argument("--movie", type=int, help="movie id: predict the user's rating of it")
    ap.add_argument("--top-k", type=int, help="recommend the K best movies the user has not rated")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.user is None or (args.movie is None) == (args.top_k is None):
        ap.error("give --user and either --movie or --top-k")
    if args.top_k is not None and args.top_k < 1:
        ap.error(f"--top-k must be at least 1, got {args.top_k}")
    return args


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    md = ModelDir.load(args.model_dir)
    _check(md, args.user, args.movie)
    if args.movie is not None:
        score = float(predict(md, args.user, [args.movie])[0])
        movies, given, _ = md.ratings_of(args.user)
        actual = int(given[movies == args.movie][0]) if args.movie in movies else None
        title = md.title(args.movie)
        if args.json:
            print(
                json.dumps(
                    {
                        "user_id": args.user,
                        "movie_id": args.movie,
                        "title": title,
                        "score": score,
                        "stars": stars(score),
                        "actual_rating": actual,
                    }
                )
            )
            return 0
        print(f'Predict Rating of user id {args.user} on movie "{title}" is {score:.4f}')
        print(f"  (scores live in label space 2*stars-5, range -5..5: {score:.4f} is {stars(score):.2f} stars)")
        if actual is not None:
            print(f'Actual Rating of user id {args.user} on movie "{title}" is {actual}.')
        return 0
    recs = top_k(md, args.user, args.top_k)
    rows = [{"movie_id": m, "title": md.title(m), "score": s, "stars": stars(s)} for m, s in recs]
    if args.json:
        print(json.dumps({"user_id": args.user, "recommendations": rows}))
        return 0
    print(f"Top {len(rows)} movies for user id {args.user} (not rated in the training split; score in 2*stars-5):")
    for i, (r, (m, _)) in enumerate(zip(rows, recs), 1):
        print(f"{i:3d}. {m:5d}  {r['score']:6.3f} = {r['stars']:.2f} stars  {r['title']}  ({'|'.join(md.genres(m))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
