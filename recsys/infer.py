"""Use a trained model: predict a rating, recommend movies, find similar movies.

    python -m recsys.infer --user 1 --movie 783                  the chapter's prediction (+ the actual rating)
    python -m recsys.infer --user 1 --top-k 10                   best movies the user has not rated
    python -m recsys.infer --gender F --age 25 --job 4 --top-k 10   a new user, known only by features
    python -m recsys.infer --similar-to 783 --top-k 10           nearest movies by their movie-tower vectors

Scores live in the chapter's label space `2*stars - 5` (range -5..5); `stars = (score + 5) / 2`.
A single prediction runs the saved inference model through `paddle.inference`, as the chapter's
`load_inference_model` did; rankings use the precomputed unit tower vectors (one matrix product).
A new user is the reserved user id 0 with the given gender, age and job (see `train --cold-start-rate`).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from recsys.errors import ArgumentParser, RecsysError, cli
from recsys.modeldir import ModelDir
from recsys.movielens import age_table, unknown_user_features


def stars(score: float) -> float:
    """Label-space score (2*stars-5) to stars."""
    return (float(score) + 5) / 2


def predict(md: ModelDir, user_id: int, movie_ids, cold: tuple[int, int, int] | None = None) -> np.ndarray:
    """Scores (label space) of one user on several movies through the saved inference model.

    `cold` = (gender id, age index, job) scores the unknown user 0 with those features instead."""
    movie_ids = np.asarray(movie_ids, np.int64)
    n = len(movie_ids)
    if cold is None:
        users = md.tables.user_features(np.full(n, user_id, np.int64))
    else:
        users = unknown_user_features(*(np.full(n, v) for v in cold))
    return md.predictor(users | md.tables.movie_features(movie_ids))[:, 0]


def rank(md: ModelDir, vector: np.ndarray, k: int, exclude=()) -> list[tuple[int, float]]:
    """The k movies whose unit movie vectors have the largest dot product with `vector`: (movie id, value)."""
    values = md.arrays["movie_vectors"] @ vector
    candidates = md.movie_ids[~np.isin(md.movie_ids, np.asarray(list(exclude), np.int64))]
    k = min(k, len(candidates))
    best = candidates[np.argpartition(-values[candidates], k - 1)[:k]] if k else candidates
    best = best[np.argsort(-values[best], kind="stable")]
    return [(int(m), float(values[m])) for m in best]


def top_k(md: ModelDir, user_id: int, k: int) -> list[tuple[int, float]]:
    """The k best-scored movies the user has not rated in the training split: (movie id, score) pairs."""
    rated, _, is_test = md.ratings_of(user_id)
    return [(m, 5.0 * v) for m, v in rank(md, md.arrays["user_vectors"][user_id], k, rated[~is_test])]


def top_k_cold(md: ModelDir, gender: int, age: int, job: int, k: int) -> list[tuple[int, float]]:
    """The k best-scored movies for an unknown user with these features (gender id, age index, job)."""
    return [(m, 5.0 * v) for m, v in rank(md, md.arrays["cold_vectors"][gender, age, job], k)]


def similar(md: ModelDir, movie_id: int, k: int) -> list[tuple[int, float]]:
    """The k movies nearest to `movie_id` by the cosine of their movie-tower vectors."""
    return rank(md, md.arrays["movie_vectors"][movie_id], k, exclude=[movie_id])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = ArgumentParser(
        prog="python -m recsys.infer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model-dir", default="recommender_system.inference.model", help="default: %(default)s")
    ap.add_argument("--user", type=int, help="user id")
    ap.add_argument("--gender", choices=("M", "F"), help="a new user's gender")
    ap.add_argument("--age", type=int, help=f"a new user's age bucket, one of {age_table}")
    ap.add_argument("--job", type=int, help="a new user's job id")
    ap.add_argument("--movie", type=int, help="movie id: predict the user's rating of it")
    ap.add_argument("--top-k", type=int, help="recommend the K best movies (or list K similar movies)")
    ap.add_argument("--similar-to", type=int, metavar="MOVIE", help="movies nearest to this movie id")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    cold = [args.gender, args.age, args.job]
    if args.top_k is not None and args.top_k < 1:
        ap.error(f"--top-k must be at least 1, got {args.top_k}")
    if args.similar_to is not None:
        if args.user is not None or any(x is not None for x in cold) or args.movie is not None:
            ap.error("--similar-to takes only --top-k")
        args.top_k = args.top_k or 10
        return args
    if any(x is not None for x in cold) and (args.user is not None or None in cold):
        ap.error("a new user needs all of --gender, --age and --job, and no --user")
    if (args.user is None and None in cold) or (args.movie is None) == (args.top_k is None):
        ap.error("give --user (or --gender, --age, --job) and either --movie or --top-k; or --similar-to")
    if args.age is not None and args.age not in age_table:
        ap.error(f"--age must be one of {', '.join(map(str, age_table))} (the chapter's age buckets), got {args.age}")
    return args


def _check(md: ModelDir, args: argparse.Namespace) -> tuple[int, int, int] | None:
    """One-line errors for ids the model does not know; the cold-start feature triple, if any."""
    if args.user is not None and not md.has_user(args.user):
        raise RecsysError(
            f"unknown user id {args.user}; the model knows users 1..{max(md.user_ids)} of {md.meta['dataset']}"
        )
    for movie in (args.movie, args.similar_to):
        if movie is not None and not md.has_movie(movie):
            raise RecsysError(f"unknown movie id {movie}; {md.meta['dataset']} has no such movie")
    if args.gender is None:
        return None
    n_jobs = md.meta["sizes"]["n_jobs"]
    if not 0 <= args.job < n_jobs:
        raise RecsysError(f"--job must be 0..{n_jobs - 1} for {md.meta['dataset']}, got {args.job}")
    return (0 if args.gender == "M" else 1, age_table.index(args.age), args.job)


def _who(args: argparse.Namespace) -> str:
    return (
        f"user id {args.user}"
        if args.user is not None
        else f"a new user ({args.gender}, age {args.age}, job {args.job})"
    )


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    md = ModelDir.load(args.model_dir)
    cold = _check(md, args)
    person = (
        {"user_id": args.user} if cold is None else {"user": {"gender": args.gender, "age": args.age, "job": args.job}}
    )
    out: dict
    if args.similar_to is not None:
        rows = [
            {"movie_id": m, "title": md.title(m), "genres": md.genres(m), "cosine": c}
            for m, c in similar(md, args.similar_to, args.top_k)
        ]
        out = {"movie_id": args.similar_to, "title": md.title(args.similar_to), "similar": rows}
        lines = [
            f'{len(rows)} movies nearest to "{md.title(args.similar_to)}" ({"|".join(md.genres(args.similar_to))}):'
        ]
        lines += [
            f"{i:3d}. {r['movie_id']:5d}  cos {r['cosine']:.3f}  {r['title']}  ({'|'.join(r['genres'])})"
            for i, r in enumerate(rows, 1)
        ]
    elif args.movie is not None:
        score = float(predict(md, args.user or 0, [args.movie], cold)[0])
        actual = None
        if cold is None:
            movies, given, _ = md.ratings_of(args.user)
            actual = int(given[movies == args.movie][0]) if args.movie in movies else None
        title = md.title(args.movie)
        out = person | {"movie_id": args.movie, "title": title, "score": score, "stars": stars(score)}
        out |= {"actual_rating": actual} if cold is None else {}
        lines = [
            f'Predict Rating of {_who(args)} on movie "{title}" is {score:.4f}',
            f"  (scores live in label space 2*stars-5, range -5..5: {score:.4f} is {stars(score):.2f} stars)",
        ]
        if actual is not None:
            lines.append(f'Actual Rating of {_who(args)} on movie "{title}" is {actual}.')
    else:
        recs = top_k(md, args.user, args.top_k) if cold is None else top_k_cold(md, *cold, args.top_k)
        rows = [{"movie_id": m, "title": md.title(m), "score": s, "stars": stars(s)} for m, s in recs]
        out = person | {"recommendations": rows}
        seen = " not rated in the training split" if cold is None else ""
        lines = [f"Top {len(rows)} movies for {_who(args)}{seen} (score in 2*stars-5):"]
        for i, r in enumerate(rows, 1):
            genres = "|".join(md.genres(r["movie_id"]))
            lines.append(
                f"{i:3d}. {r['movie_id']:5d}  {r['score']:6.3f} = {r['stars']:.2f} stars  {r['title']}  ({genres})"
            )
    print(json.dumps(out) if args.json else "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
