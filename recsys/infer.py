"""Use a trained model: predict a rating, recommend movies, find similar movies.

    python -m recsys.infer --user 1 --movie 783                  the chapter's prediction (+ the actual rating)
    python -m recsys.infer --user 1 --top-k 10                   best movies the user has not rated
    python -m recsys.infer --user 1 --top-k 10 --genres Comedy,Drama --years 1990-1999 --exclude 1,2
                                      the same, filtered (--exclude-genres Horror leaves a genre out)
    python -m recsys.infer --gender F --age 25 --job 4 --top-k 10   a new user, known only by features
    python -m recsys.infer --user 1 --top-k 10 --explain         ... and the rated movies each one is there for
    python -m recsys.infer --similar-to 783 --top-k 10           nearest movies by their movie-tower vectors
    python -m recsys.infer --model-dir RETRIEVAL --rerank RATING --user 1 --top-k 10
                                      two stages: the retrieval model's top max(--candidates, --top-k),
                                      reordered by the rating model

Scores live in the chapter's label space `2*stars - 5` (range -5..5); `stars = (score + 5) / 2`.
A single prediction runs the saved inference model through `paddle.inference`, as the chapter's
`load_inference_model` did; rankings use the precomputed unit tower vectors (one matrix product).
A new user is the reserved user id 0 with the given gender, age and job (see `train --cold-start-rate`), or, for
other data, its own user features (`--feature country=DE`, repeatable; features not given are unknown).
Users and movies are named by the dataset's own ids. A list never holds a movie the user rated, in any split
of the model's data (`--exclude-rated train`: the training split alone, the lists `evaluate` ranks).
A retrieval model (`train --objective retrieval`) ranks by cosine and predicts no ratings.
"""

from __future__ import annotations

import argparse
import json
import sys

from recsys import modelflags
from recsys.data import history
from recsys.errors import ArgumentParser, RecsysError, cli
from recsys.recommender import Recommender
from recsys.topn import filters, nearest

FILTERS = ("genres", "exclude_genres", "exclude", "years")  # the list filters, as `Recommender.recommend` names them


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = ArgumentParser(
        prog="python -m recsys.infer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    modelflags.add(ap, "--top-k")
    ap.add_argument("--user", type=int, help="user id")
    ap.add_argument("--gender", choices=("M", "F"), help="a new user's gender")
    ap.add_argument(
        "--age", type=int, help="a new user's age in years, or the chapter's bucket code (1, 18, 25, 35, 45, 50, 56)"
    )
    ap.add_argument("--job", type=int, help="a new user's job id")
    ap.add_argument(
        "--feature",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a new user's feature, for data with its own user features (users.csv); repeatable",
    )
    ap.add_argument("--movie", type=int, help="movie id: predict the user's rating of it")
    ap.add_argument("--top-k", type=int, help="recommend the K best movies (or list K similar movies)")
    ap.add_argument("--similar-to", type=int, metavar="MOVIE", help="movies nearest to this movie id")
    ap.add_argument(
        "--rated",
        metavar="MOVIE:STARS,...",
        help="a new user's rated movies (e.g. 1193:5,661:3): their history, with a model that reads one",
    )
    ap.add_argument("--exclude-rated", choices=filters.EXCLUDE_RATED, help=filters.EXCLUDE_RATED_HELP)
    ap.add_argument("--genres", metavar="GENRE,...", help="list only movies of any of these genres")
    ap.add_argument("--exclude-genres", metavar="GENRE,...", help="list no movie of these genres")
    ap.add_argument("--exclude", metavar="MOVIE,...", help="list none of these movie ids")
    ap.add_argument(
        "--years", metavar="FIRST-LAST", help="list only movies released in these years (e.g. 1990-1999, or 1995)"
    )
    ap.add_argument(
        "--explain",
        action="store_true",
        help="with --top-k for a user: under each movie, the rated movies it is recommended because of, with "
        'their share of its score (JSON: each movie\'s "because" list; see recsys.topn.reasons)',
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--dataset", help="the model dir records its data: given, it must be the model's (checked)")
    ap.add_argument("--split", help="the model dir records its split: given, it must be the model's (checked)")
    args = ap.parse_args(argv)
    filtered = [f"--{k.replace('_', '-')}" for k in FILTERS if getattr(args, k) is not None]
    if filtered and (args.top_k is None or args.similar_to is not None or args.movie is not None):
        ap.error(f"{filtered[0]} filters recommendations: give it with --top-k for a user")
    if args.exclude_rated is not None and (args.user is None or args.top_k is None or args.movie is not None):
        ap.error("--exclude-rated is for a known user's recommendations: give it with --user and --top-k")
    if args.rerank is not None and (args.top_k is None or args.similar_to is not None):
        ap.error("--rerank reorders recommendations: give it with --top-k for a user")
    modelflags.check(ap, args)
    cold = [args.gender, args.age, args.job]
    new = any(x is not None for x in cold) or bool(args.feature) or args.rated is not None
    if args.top_k is not None and args.top_k < 1:
        ap.error(f"--top-k must be at least 1, got {args.top_k}")
    if args.explain and (args.top_k is None or args.similar_to is not None or args.movie is not None):
        ap.error(
            "--explain says why movies are recommended: give it with --top-k for a user (not --movie or --similar-to)"
        )
    if args.similar_to is not None:
        if args.user is not None or new or args.movie is not None:
            ap.error("--similar-to takes only --top-k")
        args.top_k = args.top_k or 10
        return args
    if args.rated is not None and args.top_k is None:
        ap.error("--rated describes a new user: give it with --top-k (and the user's features)")
    if new and args.user is not None:
        ap.error("a new user is given by features (--gender, --age, --job or --feature) and --rated, not --user")
    if args.feature and any(x is not None for x in cold):
        ap.error("--feature is for data with its own user features; ml-1m and ml-100k take --gender, --age, --job")
    if (args.user is None and not new) or (args.movie is None) == (args.top_k is None):
        ap.error("give --user (or a new user's features) and either --movie or --top-k; or --similar-to")
    if args.age is not None and not 1 <= args.age <= 120:
        ap.error(f"--age must be a number of years, 1..120 (or a bucket code: 1, 18, 25, ...), got {args.age}")
    return args


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise RecsysError(f"--feature takes NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def check_recorded(rec: Recommender, args: argparse.Namespace) -> None:
    """`--dataset` and `--split`, where given, must be what the model dir records (it needs no archive)."""
    for flag, key in (("--dataset", "dataset"), ("--split", "split")):
        given, recorded = getattr(args, key), rec.model.meta[key]
        if given is not None and given != recorded:
            raise RecsysError(
                f"{flag} {given}: {rec.model.path} was trained on {rec.model.meta['dataset']} split "
                f"{rec.model.meta['split']}; a model dir records its data, so infer needs no {flag}"
            )


def answer(rec: Recommender, args: argparse.Namespace) -> dict:
    """The object `--json` prints: one call of the recommender."""
    if args.similar_to is not None:
        return rec.similar(args.similar_to, args.top_k)
    given = {k: getattr(args, k) for k in FILTERS if getattr(args, k) is not None}
    if args.user is not None and args.movie is not None:
        return rec.predict(args.user, args.movie)
    if args.user is not None:
        return rec.recommend(
            args.user, args.top_k, explain=args.explain, exclude_rated=args.exclude_rated or "all", **given
        )
    chapter = [args.gender, args.age, args.job]
    if rec.chapter_features and (args.feature or None in chapter):
        raise RecsysError(f"a new user needs all of --gender, --age and --job for {rec.dataset}")
    if not rec.chapter_features and any(x is not None for x in chapter):
        raise RecsysError(f"{rec.no_chapter_features()} (give them with --feature NAME=VALUE)")
    new = {"gender": args.gender, "age": args.age, "job": args.job, "features": dict(_pair(f) for f in args.feature)}
    if args.movie is not None:
        return rec.predict_new(args.movie, **new)
    rated = history.parse_rated(args.rated, rec.model.has_movie, rec.model.rating_scale) if args.rated else []
    return rec.recommend_new(args.top_k, rated=rated, **new, explain=args.explain, **given)


def _who(rec: Recommender, doc: dict) -> str:
    if "user" not in doc:
        return f"user id {doc.get('user_id')}"
    user = doc["user"]
    if "age_group" in user:
        job = rec.model.meta["jobs"][user["job"]]
        return f"a new user ({user['gender']}, age {user['age_group']}, job {user['job']}: {job})"
    return f"a new user ({', '.join(f'{k}={v}' for k, v in user.items()) or 'no features'})"


def _id_width(rows: list[dict]) -> int:
    """The width of the movie id column: the longest id shown, at least 5."""
    return max([5] + [len(str(r["movie_id"])) for r in rows])


def _lines(doc: dict, who: str, seen: str, how: str = "") -> list[str]:
    """The text form of a `*_doc` object."""
    if "similar" in doc:
        head = f'{len(doc["similar"])} movies nearest to "{doc["title"]}" ({"|".join(doc["genres"])}):'
        w = _id_width(doc["similar"])
        return [head] + [
            f"{i:3d}. {r['movie_id']:{w}d}  cos {r['cosine']:.3f}  {r['title']}  ({'|'.join(r['genres'])})"
            for i, r in enumerate(doc["similar"], 1)
        ]
    if "recommendations" not in doc:
        score, title = doc["score"], doc["title"]
        lines = [
            f'Predict Rating of {who} on movie "{title}" is {score:.4f}',
            f"  (scores live in label space 2*stars-5, range -5..5: {score:.4f} is {doc['stars']:.2f} stars)",
        ]
        if doc.get("actual_rating") is not None:
            lines.append(f'Actual Rating of {who} on movie "{title}" is {doc["actual_rating"]}.')
        return lines
    rows = doc["recommendations"]
    lines, w = [f"Top {len(rows)} movies for {who}{seen} ({how}):"], _id_width(rows)
    for i, r in enumerate(rows, 1):
        genres = "|".join(r["genres"])
        value = f"cos {r['cosine']:.3f}" if "score" not in r else f"{r['score']:6.3f}"
        value += f" = {r['stars']:.2f} stars" if "stars" in r else ""
        origin = f"  [{doc['stages'][0]} #{r['retrieval_rank']}]" if "retrieval_rank" in r else ""
        lines.append(f"{i:3d}. {r['movie_id']:{w}d}  {value}  {r['title']}  ({genres}){origin}")
        if "because" in r:
            lines.append(f"     {_because(r)}")
    return lines


def _because(movie: dict) -> str:
    """A recommended movie's reasons on one line (`--explain`)."""
    if not movie["because"]:
        return movie["reason"]
    return "because you rated " + ", ".join(f'"{b["title"]}" ({b["share"]:.0%})' for b in movie["because"])


def _rated_line(rec: Recommender, doc: dict) -> str | None:
    """A new user's rated movies as the model's data names them (the same ids are other films in other data)."""
    md = rec.model
    named = [f"{m} {md.title(md.movie_row(m))} ({s} stars)" for m, s in doc.get("rated", [])]
    return f"rated, in {rec.dataset}'s ids: {'; '.join(named)}" if named else None


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rec = Recommender.load(args.model_dir, args.rerank, args.candidates, nearest.search_for(args.exact))
    check_recorded(rec, args)
    doc = answer(rec, args)
    if args.json:
        print(json.dumps(doc))
        return 0
    rated = _rated_line(rec, doc)
    if rated is not None:  # on stderr: stdout stays the list
        print(rated, file=sys.stderr)
    seen = {"all": " not rated", "train": " not rated in the training split"}[args.exclude_rated or "all"]
    how = rec.how(doc) if "recommendations" in doc else ""
    print("\n".join(_lines(doc, _who(rec, doc), seen if "user" not in doc else "", how)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
