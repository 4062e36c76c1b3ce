"""Use a trained model: predict a rating, recommend movies, find similar movies.

    python -m recsys.infer --user 1 --movie 783                  the chapter's prediction (+ the actual rating)
    python -m recsys.infer --user 1 --top-k 10                   best movies the user has not rated
    python -m recsys.infer --gender F --age 25 --job 4 --top-k 10   a new user, known only by features
    python -m recsys.infer --similar-to 783 --top-k 10           nearest movies by their movie-tower vectors
    python -m recsys.infer --model-dir RETRIEVAL --rerank RATING --user 1 --top-k 10
                                      two stages: the retrieval model's top max(--candidates, --top-k),
                                      reordered by the rating model

Scores live in the chapter's label space `2*stars - 5` (range -5..5); `stars = (score + 5) / 2`.
A single prediction runs the saved inference model through `paddle.inference`, as the chapter's
`load_inference_model` did; rankings use the precomputed unit tower vectors (one matrix product).
A new user is the reserved user id 0 with the given gender, age and job (see `train --cold-start-rate`), or, for
other data, its own user features (`--feature country=DE`, repeatable; features not given are unknown).
Users and movies are named by the dataset's own ids.
A retrieval model (`train --objective retrieval`) ranks by cosine and predicts no ratings.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from recsys import topn
from recsys.data import history
from recsys.errors import ArgumentParser, RecsysError, cli
from recsys.modeldir import ModelDir
from recsys.movielens import AGE_GROUPS, age_index


def stars(score: float) -> float:
    """Label-space score (2*stars-5) to stars."""
    return (float(score) + 5) / 2


def stars_value(x) -> int | float:
    """A rating as the data gave it: 4 stays 4, 3.5 stays 3.5."""
    return int(x) if float(x).is_integer() else float(x)


def predict(md: ModelDir, user_id: int, movie_ids, cold: tuple | None = None) -> np.ndarray:
    """Scores (label space) of one user (row) on several movies (rows) through the saved inference model.

    `cold` (feature ids: the chapter's gender id, age index, job) scores the unknown user 0 with them instead."""
    movie_ids = np.asarray(movie_ids, np.int64)
    n = len(movie_ids)
    if cold is None:
        users = md.tables.user_features(np.full(n, user_id, np.int64))
    else:
        users = {k: np.repeat(v, n) for k, v in md.cold_feeds(cold).items()}
    feeds = users | md.tables.movie_features(movie_ids)
    if md.history:
        feeds["history"] = md.history_of(users["user_id"])
    return md.predictor(feeds)[:, 0]


def rank(md: ModelDir, vector: np.ndarray, k: int, exclude=()) -> list[tuple[int, float]]:
    """The k movies whose unit movie vectors have the largest dot product with `vector`: (movie id, value).
    Ties go to the smaller movie id."""
    values = md.catalogue_vectors @ vector
    seen = np.isin(md.movie_ids, np.asarray(list(exclude), np.int64))
    cols = topn.top_k_lists(values[None], seen[None], k)[0]
    return [(int(md.movie_ids[c]), float(values[c])) for c in cols if c >= 0]


def _scale(md: ModelDir) -> float:
    """Cosine to score: the rating head's 5 * cos (label space); a retrieval model's score is the cosine."""
    return 5.0 if md.objective == "rating" else 1.0


def _vector(md: ModelDir, user_id: int | None, cold: tuple | None, rated=(), unit=True) -> np.ndarray:
    """The user's tower output (unit length, or raw: `*_outputs`, saved for ranking models): a known user's
    or a new user's saved vector, or, for a new user who named rated movies, computed with that history."""
    if rated:
        feeds = md.cold_feeds(cold) | {"history": md.history_of([0], rated)}
        return md.user_vector(feeds, unit)[0]
    if cold is None:
        return md.arrays[f"user_{'vectors' if unit else 'outputs'}"][user_id]
    return md.cold_vector(cold, unit)


def _seen(md: ModelDir, user_id: int | None, rated=()) -> np.ndarray:
    """Movies the user rated in the training split (for a new user, the movies they named)."""
    if user_id is None:
        return np.array([m for m, _ in rated], np.int64)
    rated, _, is_test = md.ratings_of(user_id)
    return rated[~is_test]


def top_k(md: ModelDir, user_id: int, k: int) -> list[tuple[int, float]]:
    """The k best-scored movies the user has not rated in the training split: (movie id, score) pairs."""
    return [(m, _scale(md) * v) for m, v in rank(md, _vector(md, user_id, None), k, _seen(md, user_id))]


def top_k_cold(md: ModelDir, cold: tuple, k: int, rated=()) -> list[tuple[int, float]]:
    """The k best-scored movies for an unknown user with these feature ids (the chapter's gender id, age index,
    job) who rated the movies `rated` ((movie row, stars) pairs: their history, with a model that reads one)."""
    vector = _vector(md, None, cold, rated)
    return [(m, _scale(md) * v) for m, v in rank(md, vector, k, _seen(md, None, rated))]


def check_rated(md: ModelDir, rated) -> None:
    """One-line error unless the model reads a history and every named movie and rating is valid: a known
    movie, and stars on the data's scale in its steps (half stars from 0.5, else whole stars)."""
    if rated and not md.history:
        raise RecsysError(
            f"{md.path} has no history input (it was trained without one): rated movies cannot change its list"
        )
    for movie, value in rated:
        history.check_rated(movie, value, md.has_movie, md.rating_scale)


def check_pair(retrieval: ModelDir, rerank: ModelDir) -> None:
    """One-line error unless `retrieval` is a retrieval model and `rerank` a rating model of the same data
    or a ranking model trained on `retrieval`'s candidates."""
    if retrieval.objective != "retrieval":
        raise RecsysError(
            f"two stages need a retrieval model first: {retrieval.path} is a {retrieval.objective} model "
            "(train one with --objective retrieval)"
        )
    if rerank.objective == "retrieval":
        raise RecsysError(
            f"--rerank needs a rating or ranking model: {rerank.path} was trained with --objective retrieval"
        )
    a, b = retrieval.meta, rerank.meta
    for key, what in (
        ("dataset", "dataset"),
        ("split", "split"),
        ("sizes", "id ranges"),
        ("users", "users"),
        ("movies", "movies"),
        ("title_words", "title vocabulary"),
        ("categories", "genres"),
        ("jobs", "jobs"),
    ):
        if a.get(key) != b.get(key):
            raise RecsysError(
                f"{retrieval.path} and {rerank.path} disagree on their {what} "
                f"({a['dataset']} {a['split']} vs {b['dataset']} {b['split']}); train both on the same data"
            )

    if rerank.objective == "ranking":
        want = rerank.meta["settings"].get("candidates_params_sha256")
        if want is None or want != topn.fingerprint(retrieval):
            raise RecsysError(
                f"{rerank.path} was trained on the candidates of another retrieval model "
                f"({rerank.meta['settings'].get('candidates_from')} as it was then), not on {retrieval.path} as "
                "it is now; give that model, or train the ranking network again on this one"
            )


CANDIDATES = 100  # the retrieval model's top N that a rating model reorders (a ranking model records its own N)


def candidates_for(rerank: ModelDir | None, given: int | None = None) -> int:
    """How many retrieval candidates the second stage reorders: `given`, else the number a ranking model was
    trained to reorder (its `--candidates`), else `CANDIDATES`."""
    if given is not None:
        return given
    if rerank is not None and rerank.objective == "ranking":
        return int(rerank.meta["settings"].get("candidates") or CANDIDATES)
    return CANDIDATES


def second_stage_scores(
    md: ModelDir, rerank: ModelDir, first: np.ndarray, second: np.ndarray, pool: np.ndarray, histories
) -> np.ndarray:
    """The second stage's scores [n, N] of each user's candidate columns `pool` [n, N] (-1: none), from the
    users' vectors in the retrieval model (`first` [n, D], unit) and in the second model (`second` [n, D]: a
    rating model's unit vectors, scored 5 cos in label space; a ranking model's raw outputs, scored by its
    head from the towers and the pair features, which read each user's history: `histories`, n arrays of
    catalogue columns)."""
    cols = np.maximum(pool, 0)
    if rerank.objective == "rating":
        return 5.0 * np.einsum("nd,npd->np", second, rerank.catalogue_vectors[cols])
    cosine = np.einsum("nd,npd->np", first, md.catalogue_vectors[cols])
    a = rerank.arrays
    features = topn.pair_features(cosine, a["log_share"], a["item_item"], histories, pool)
    movies = a["movie_outputs"][rerank.movie_ids[cols]]
    return topn.head_scores(rerank.head_params, second[:, None, :], movies, features)


def two_stage_lists(
    md: ModelDir, rerank: ModelDir, first: np.ndarray, second: np.ndarray, seen: np.ndarray, k: int, candidates: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two stages for a batch of users given by their vectors in each model (see `second_stage_scores`) and
    their seen catalogue columns [n, M] (their histories): the retrieval model's top `candidates` columns,
    and those reordered by the second model's scores, cut to k. Returns (candidates, their scores, top k)."""
    pool = topn.top_k_lists(first @ md.catalogue_vectors.T, seen, candidates)
    histories = [np.flatnonzero(row) for row in seen] if rerank.objective == "ranking" else None
    scores = second_stage_scores(md, rerank, first, second, pool, histories)
    return pool, scores, topn.rerank_pool(pool, scores, k)


def two_stage(
    md: ModelDir, rerank: ModelDir, k: int, candidates: int, user_id: int | None = None, cold=None, rated=()
) -> list[tuple[int, float, float, int]]:
    """The retrieval model's top `candidates` unrated movies, reordered by the second model's score:
    (movie id, second-stage score, retrieval cosine, retrieval rank) for the best k. The score is a rating
    model's label-space score, or a ranking model's logit."""
    first = _vector(md, user_id, cold, rated)
    second = _vector(rerank, user_id, cold, rated, unit=rerank.objective != "ranking")
    seen = np.isin(md.movie_ids, _seen(md, user_id, rated))
    pool, scores, best = (
        a[0] for a in two_stage_lists(md, rerank, first[None], second[None], seen[None], k, candidates)
    )
    place = {c: i for i, c in enumerate(pool.tolist())}
    return [
        (int(md.movie_ids[c]), float(scores[place[c]]), float(md.catalogue_vectors[c] @ first), place[c] + 1)
        for c in best.tolist() if c >= 0
    ]  # fmt: skip


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
    ap.add_argument(
        "--rerank",
        metavar="RANKING_DIR",
        help="reorder a retrieval model's candidates by this ranking network (or rating model)",
    )
    ap.add_argument(
        "--candidates",
        type=int,
        help="with --rerank: retrieval candidates (default: the number the ranking model was trained on, 100 "
        "for a rating model; a larger --top-k widens them to --top-k)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.rerank is not None and (args.top_k is None or args.similar_to is not None):
        ap.error("--rerank reorders recommendations: give it with --top-k for a user")
    if args.candidates is not None and args.candidates < 1:
        ap.error(f"--candidates must be at least 1, got {args.candidates}")
    cold = [args.gender, args.age, args.job]
    new = any(x is not None for x in cold) or bool(args.feature) or args.rated is not None
    if args.top_k is not None and args.top_k < 1:
        ap.error(f"--top-k must be at least 1, got {args.top_k}")
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


def check_ids(md: ModelDir, args) -> tuple | None:
    """One-line errors for ids the model does not know; a new user's feature ids, if any."""
    if args.user is not None and not md.has_user(args.user):
        raise RecsysError(f"unknown user id {args.user}; {md.meta['dataset']} has no such user")
    for movie in (args.movie, args.similar_to):
        if movie is not None and not md.has_movie(movie):
            raise RecsysError(f"unknown movie id {movie}; {md.meta['dataset']} has no such movie")
    if args.user is not None or args.similar_to is not None:
        return None
    if md.chapter_features:
        if args.feature or None in (args.gender, args.age, args.job):
            raise RecsysError(f"a new user needs all of --gender, --age and --job for {md.meta['dataset']}")
        return chapter_cold(md, args.gender, args.age, args.job, "--")
    if any(x is not None for x in (args.gender, args.age, args.job)):
        raise RecsysError(f"{no_chapter_features(md)} (give them with --feature NAME=VALUE)")
    return feature_ids(md, dict(_pair(f) for f in args.feature))


def no_chapter_features(md: ModelDir) -> str:
    """Why a new user of data without the chapter's gender, age and job cannot be given by them."""
    data = md.meta["dataset"]
    if not md.features:
        return f"{data} has no user features (no gender, age or job): a new user is known by the movies they rated"
    return f"{data} users have the features {', '.join(md.features)}, not the chapter's gender, age and job"


def chapter_cold(md: ModelDir, gender: str, age: int, job: int, prefix: str = "") -> tuple[int, int, int]:
    """The chapter's features as ids (gender id, age index, job), checked against the model's data."""
    n_jobs = len(md.features["job"])
    if not 0 <= job < n_jobs:
        raise RecsysError(f"{prefix}job must be 0..{n_jobs - 1} for {md.meta['dataset']}, got {job}")
    return (0 if gender == "M" else 1, age_index(age), job)


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise RecsysError(f"--feature takes NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def feature_ids(md: ModelDir, given: dict[str, str]) -> tuple[int, ...]:
    """A new user's feature values (name -> value as in the data) as ids; a feature not given is unknown."""
    out = []
    for name in given:
        if name not in md.features:
            if not md.features:
                raise RecsysError(f"{md.meta['dataset']} has no user features (got {name!r})")
            known = ", ".join(md.features)
            raise RecsysError(f"{md.meta['dataset']} has no user feature {name!r}; its features: {known}")
    for name, labels in md.features.items():
        value = str(given.get(name, ""))
        if value not in labels:
            shown = ", ".join(v for v in labels[:20] if v) + (" ..." if len(labels) > 20 else "")
            raise RecsysError(f"{name} {value!r} is not a value of {md.meta['dataset']}'s {name}: {shown}")
        out.append(labels.index(value))
    return tuple(out)


def new_user(md: ModelDir, gender=None, age=None, job=None, given: dict | None = None) -> dict:
    """A new user's features as the answers show them: the chapter's age as given, and its group; other
    data's features as given."""
    if md.chapter_features:
        return {"gender": gender, "age": age, "age_group": AGE_GROUPS[age_index(age)], "job": job}
    return dict(given or {})


def _who(user_id: int | None, features: dict | None) -> str:
    if user_id is not None or features is None:
        return f"user id {user_id}"
    if "age_group" in features:
        return f"a new user ({features['gender']}, age {features['age_group']}, job {features['job']})"
    return f"a new user ({', '.join(f'{k}={v}' for k, v in features.items()) or 'no features'})"


def _person(user_id: int | None, features: dict | None) -> dict:
    return {"user_id": user_id} if features is None else {"user": features}


def _movie(md: ModelDir, row: int, **values) -> dict:
    """One movie of an answer: its own id, title and genres, and `values`."""
    return {"movie_id": md.own_movie(row), "title": md.title(row), "genres": md.genres(row)} | values


def similar_doc(md: ModelDir, movie_id: int, k: int) -> dict:
    """`--similar-to` (the dataset's own movie id) as one JSON-able object."""
    row = md.movie_row(movie_id)
    rows = [_movie(md, m, cosine=c) for m, c in similar(md, row, k)]
    return {"movie_id": movie_id, "title": md.title(row), "genres": md.genres(row), "similar": rows}


def predict_doc(md: ModelDir, user_id: int | None, movie_id: int, cold=None, features: dict | None = None) -> dict:
    """`--movie`: the predicted rating (and the actual one, when the user rated the movie) as one object; the
    user and movie by the dataset's own ids."""
    if md.objective != "rating":
        raise RecsysError(
            f"{md.path} is a retrieval model: it ranks movies but predicts no ratings; use a rating model (or --top-k)"
        )
    row, user = md.movie_row(movie_id), None if cold is not None else md.user_row(user_id)
    score = float(predict(md, user or 0, [row], cold)[0])
    out = _person(user_id, features) | {
        "movie_id": movie_id,
        "title": md.title(row),
        "score": score,
        "stars": stars(score),
    }
    if cold is None:
        movies, given, _ = md.ratings_of(user)
        out["actual_rating"] = stars_value(given[movies == row][0]) if row in movies else None
    return out


def recommend_doc(
    md: ModelDir,
    k: int,
    user_id: int | None = None,
    cold=None,
    features: dict | None = None,
    rerank: ModelDir | None = None,
    candidates: int | None = None,
    rated=(),
) -> dict:
    """`--top-k` (one model, or two stages with `rerank`) as one object; each row says which stage ranked it.
    A new user's `rated` movies ((movie id, stars) pairs) are their history and are not recommended.
    Two stages reorder the retrieval model's top max(`candidates`, k) movies (`candidates_for`): a k above
    `candidates` widens the candidates to k (then the list is the retrieval top k, reordered). Users and
    movies go by the dataset's own ids."""
    person = _person(user_id, features) | ({"rated": [[m, stars_value(s)] for m, s in rated]} if rated else {})
    user = None if cold is not None else md.user_row(user_id)
    rated = [(md.movie_row(m), s) for m, s in rated]
    if rerank is not None:
        candidates = max(candidates_for(rerank, candidates), k)
        rows = []
        for m, s, c, r in two_stage(md, rerank, k, candidates, user, cold, rated):
            extra = {"stars": stars(s)} if rerank.objective == "rating" else {}
            rows.append(_movie(md, m, score=s, **extra, cosine=c, retrieval_rank=r))
        stages = {"stages": ["retrieval", rerank.objective], "candidates": candidates}
        return person | stages | {"recommendations": rows}
    recs = top_k(md, user, k) if cold is None else top_k_cold(md, cold, k, rated)
    if md.objective == "rating":
        rows = [_movie(md, m, score=s, stars=stars(s)) for m, s in recs]
    else:
        rows = [_movie(md, m, cosine=c) for m, c in recs]
    return person | {"stages": [md.objective], "recommendations": rows}


def _id_width(rows: list[dict]) -> int:
    """The width of the movie id column: the longest id shown, at least 5."""
    return max([5] + [len(str(r["movie_id"])) for r in rows])


def _lines(md: ModelDir, doc: dict, who: str, known: bool) -> list[str]:
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
    rows, seen = doc["recommendations"], " not rated in the training split" if known else ""
    how = {
        ("rating",): "score in 2*stars-5",
        ("retrieval",): "retrieval model, by cosine",
        (
            "retrieval",
            "rating",
        ): f"retrieval top {doc.get('candidates')} reordered by the rating model, score in 2*stars-5",
        ("retrieval", "ranking"): f"retrieval top {doc.get('candidates')} reordered by the ranking network, logit",
    }[tuple(doc["stages"])]
    lines, w = [f"Top {len(rows)} movies for {who}{seen} ({how}):"], _id_width(rows)
    for i, r in enumerate(rows, 1):
        genres = "|".join(r["genres"])
        value = f"cos {r['cosine']:.3f}" if "score" not in r else f"{r['score']:6.3f}"
        value += f" = {r['stars']:.2f} stars" if "stars" in r else ""
        origin = f"  [retrieval #{r['retrieval_rank']}]" if "retrieval_rank" in r else ""
        lines.append(f"{i:3d}. {r['movie_id']:{w}d}  {value}  {r['title']}  ({genres}){origin}")
    return lines


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    md = ModelDir.load(args.model_dir)
    rerank = None
    if args.rerank is not None:
        rerank = ModelDir.load(args.rerank)
        check_pair(md, rerank)
    cold = check_ids(md, args)
    rated = history.parse_rated(args.rated, md.has_movie, md.rating_scale) if args.rated is not None else []
    for model in (md, rerank):
        if model is not None:
            check_rated(model, rated)
    given = dict(_pair(f) for f in args.feature)
    features = None if cold is None else new_user(md, args.gender, args.age, args.job, given)
    if args.similar_to is not None:
        doc = similar_doc(md, args.similar_to, args.top_k)
    elif args.movie is not None:
        doc = predict_doc(md, args.user, args.movie, cold, features)
    else:
        doc = recommend_doc(md, args.top_k, args.user, cold, features, rerank, args.candidates, rated)
    print(json.dumps(doc) if args.json else "\n".join(_lines(md, doc, _who(args.user, features), cold is None)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
