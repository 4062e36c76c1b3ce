"""Write a synthetic archive in the exact ml-1m layout, for tests, benchmarks and offline demos.

Movies and users come from real `movies.dat` / `users.dat` when a folder with them is given, else they are
invented. Ratings come from a hidden latent-factor model that depends on the same features the network
sees (user, gender, age, job, movie, genres), so learning is measurable. Lines are sorted by user, like
the real `ratings.dat`.

    python -m recsys.synthetic OUT_DIR        ml-1m's size: 1,000,209 ratings, 6,040 invented users, 3,883 movies
    python -m recsys.synthetic OUT_DIR --ratings 1000209 --meta-dir ../shared/data/ml-1m   the real movies and users

`--layout ml-32m` (or `ml-latest-small`) writes GroupLens' CSV layout instead: `OUT_DIR/ml-32m/ratings.csv`
and `movies.csv` (or `OUT_DIR/ml-32m.zip` with `--zip`), invented movies with sparse ids, half-star ratings,
every user with at least 20 ratings, sorted by user then timestamp:

    python -m recsys.synthetic OUT_DIR --layout ml-32m --ratings 32000204 --users 200948 --movies 87585
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from recsys.errors import ArgumentParser, RecsysError, cli
from recsys.movielens import ML1M_JOBS, age_table

GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_WORDS = (
    "the",
    "of",
    "night",
    "love",
    "star",
    "return",
    "city",
    "dark",
    "last",
    "man",
    "story",
    "king",
    "dead",
    "wild",
    "blue",
    "house",
    "a",
    "in",
    "lost",
    "secret",
    "river",
    "war",
    "little",
    "big",
    "ghost",
    "summer",
    "dream",
    "island",
    "moon",
    "heart",
    "road",
    "fire",
    "game",
    "shadow",
    "time",
    "girl",
    "boy",
    "world",
)


def _invent_movies(rng: np.random.RandomState, n: int) -> bytes:
    lines = []
    for mid in range(1, n + 1):
        words = rng.choice(_WORDS, rng.randint(1, 6))
        title = " ".join(w.capitalize() for w in words)
        genres = "|".join(rng.choice(GENRES, rng.randint(1, 4), replace=False))
        lines.append(f"{mid}::{title} ({rng.randint(1920, 2001)})::{genres}")
    return ("\n".join(lines) + "\n").encode("latin-1")


def _invent_users(rng: np.random.RandomState, n: int) -> bytes:
    lines = []
    for uid in range(1, n + 1):
        gender, age, job = "MF"[rng.randint(2)], rng.choice(age_table), rng.randint(len(ML1M_JOBS))
        lines.append(f"{uid}::{gender}::{age}::{job}::{rng.randint(10000, 99999)}")
    return ("\n".join(lines) + "\n").encode("latin-1")


def _columns(data: bytes, n_cols: int) -> list[list[str]]:
    rows = [ln.split("::") for ln in data.decode("latin-1").splitlines() if ln.strip()]
    return [list(c) for c in zip(*rows)][:n_cols]


def make_ratings(
    movies: bytes, users: bytes, n_ratings: int, seed: int = 0, dim: int = 8, head: tuple[str, ...] = ()
) -> bytes:
    """`ratings.dat` text for the given movies/users from a hidden latent-factor model, after the `head` lines."""
    rng = np.random.RandomState(seed)
    mids, _, genres = _columns(movies, 3)
    uids, genders, ages, jobs = _columns(users, 4)
    mids, uids = np.array(mids, np.int64), np.array(uids, np.int64)
    n_m, n_u = len(mids), len(uids)
    if n_ratings > n_m * n_u // 2:
        raise RecsysError(f"{n_ratings} ratings is too many for {n_u} users x {n_m} movies")
    # hidden factors: users from gender/age/job plus their own part; movies from genres plus their own part
    g = np.array([ln == "F" for ln in genders], np.int64)
    a = np.array([age_table.index(int(x)) for x in ages])
    j = np.array(jobs, np.int64)
    p = rng.normal(0, 0.5, (2, dim))[g] + rng.normal(0, 0.5, (7, dim))[a] + rng.normal(0, 0.3, (j.max() + 1, dim))[j]
    p += rng.normal(0, 0.5, (n_u, dim))
    gvec = {name: v for name, v in zip(GENRES, rng.normal(0, 0.6, (len(GENRES), dim)))}
    q = np.array([sum((gvec.get(x, 0) for x in gs.split("|")), np.zeros(dim)) for gs in genres])
    q += rng.normal(0, 0.4, (n_m, dim))
    b_u, b_m = rng.normal(0, 0.35, n_u), rng.normal(0, 0.45, n_m)
    # who rates what: heavy-tailed activity and popularity; at least 20 ratings per rating user, like ml-1m
    pop = rng.pareto(1.0, n_m) + 0.05
    raters = np.sort(rng.choice(n_u, min(n_u, max(1, n_ratings // 40)), replace=False))
    act = rng.pareto(1.5, len(raters)) + 0.2
    floor = min(20, n_ratings // len(raters))
    per_user = np.zeros(n_u, np.int64)
    wanted = np.clip((act / act.sum() * n_ratings).astype(np.int64), floor, n_m // 2)
    per_user[raters] = _fit_total(wanted, n_ratings, floor, n_m // 2, rng)
    who = np.repeat(np.arange(n_u), per_user)
    movies_of = np.empty(n_ratings, np.int64)
    at = 0
    for k in per_user[per_user > 0]:  # sample without replacement per user (Gumbel top-k on popularity)
        keys = np.log(pop) - np.log(-np.log(rng.random_sample(n_m)))
        movies_of[at : at + k] = np.argpartition(-keys, k - 1)[:k] if k < n_m else np.arange(n_m)
        at += k
    score = 3.8 + b_u[who] + b_m[movies_of] + np.einsum("nd,nd->n", p[who], q[movies_of]) / np.sqrt(dim)
    stars = np.clip(np.rint(score + rng.normal(0, 0.7, n_ratings)), 1, 5).astype(np.int64)
    ts = 956703932 + rng.randint(0, 90_000_000, n_ratings)
    cols = np.stack([uids[who], mids[movies_of], stars, ts], 1)
    if head:  # the given lines come first; drop generated lines for the same pairs, keep the count
        pairs = {tuple(int(x) for x in ln.split("::")[:2]) for ln in head}
        keep = np.array([(u, m) not in pairs for u, m in cols[:, :2].tolist()])
        cols = cols[keep][: n_ratings - len(head)]
    lines = list(head) + ["::".join(r) for r in cols.astype(str).tolist()]
    return ("\n".join(lines) + "\n").encode()


def _fit_total(counts: np.ndarray, total: int, low: int, high: int, rng: np.random.RandomState) -> np.ndarray:
    """Move counts by one (random entries, staying within low..high) until they sum to `total`."""
    counts = counts.copy()
    while (diff := total - int(counts.sum())) != 0:
        room = np.flatnonzero(counts < high) if diff > 0 else np.flatnonzero(counts > low)
        if len(room) == 0:
            raise RecsysError(f"cannot spread {total} ratings over {len(counts)} users ({low}..{high} each)")
        counts[rng.choice(room, min(abs(diff), len(room)), replace=False)] += 1 if diff > 0 else -1
    return counts


ML1M_USERS, ML1M_MOVIES = 6_040, 3_883  # the real ml-1m's numbers: the CLI invents as many users and movies


def write_ml1m(
    out_dir: str | Path,
    n_ratings: int = 100_000,
    seed: int = 0,
    meta_dir: str | Path | None = None,
    n_users: int = 600,
    n_movies: int = 400,
    head: tuple[str, ...] = (),
) -> Path:
    """Write `out_dir/ml-1m.zip` (`ml-1m/movies.dat`, `users.dat`, `ratings.dat`) and return its path.

    `head` lines (`uid::mid::rating::timestamp`) open `ratings.dat`, before the generated ones."""
    rng = np.random.RandomState(seed)
    if meta_dir is not None:
        movies = Path(meta_dir, "movies.dat").read_bytes()
        users = Path(meta_dir, "users.dat").read_bytes()
    else:
        movies, users = _invent_movies(rng, n_movies), _invent_users(rng, n_users)
    ratings = make_ratings(movies, users, n_ratings, seed, head=head)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ml-1m.zip"
    tmp = out / ".ml-1m.zip.tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name, data in (("movies.dat", movies), ("users.dat", users), ("ratings.dat", ratings)):
            z.writestr(f"ml-1m/{name}", data)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------- GroupLens CSV layouts

CSV_GENRES = GENRES[:3] + ("Children",) + GENRES[4:11] + ("IMAX",) + GENRES[11:]
# layout: (ratings, users, movies, largest movie id) of the real archive
CSV_LAYOUTS = {"ml-32m": (32_000_204, 200_948, 87_585, 292_757), "ml-latest-small": (100_836, 610, 9_742, 193_609)}
_FIRST_TS, _LAST_TS = 789_652_009, 1_697_164_147  # the real ml-32m's first and last timestamps
_STARS = np.array([b"0.5", b"1.0", b"1.5", b"2.0", b"2.5", b"3.0", b"3.5", b"4.0", b"4.5", b"5.0"])


def csv_bytes(header: str, columns: list[np.ndarray], chunk: int = 1 << 20) -> bytes:
    """CSV text of non-negative integer columns and fixed-width byte-string columns (`S` dtype), built with
    numpy alone: a header line, then one line per row (each field written right-aligned into a fixed-width
    byte matrix, then the integers' leading zeros dropped)."""
    widths = [len(str(int(c.max()))) if c.dtype.kind in "iu" and len(c) else c.dtype.itemsize for c in columns]
    parts = [header.encode() + b"\n"]
    for s in range(0, len(columns[0]), chunk):
        cols = [c[s : s + chunk] for c in columns]
        n = len(cols[0])
        line = np.full((n, sum(widths) + len(widths)), ord(","), np.uint8)
        keep = np.ones(line.shape, bool)
        at = 0
        for col, width in zip(cols, widths):
            if col.dtype.kind in "iu":
                v = col.astype(np.int64)
                for p in range(width):  # digit p from the right
                    line[:, at + width - 1 - p] = ord("0") + (v // 10**p) % 10
                    if p:
                        keep[:, at + width - 1 - p] = v >= 10**p
            else:
                line[:, at : at + width] = np.frombuffer(col.tobytes(), np.uint8).reshape(n, width)
            at += width + 1
        line[:, -1] = ord("\n")
        parts.append(line[keep].tobytes())
    return b"".join(parts)


def _csv_movies(rng: np.random.RandomState, n: int, max_id: int) -> tuple[np.ndarray, list[list[int]], bytes]:
    """(sorted sparse ids, genre indices per movie, movies.csv): ids denser at the start, as in the real file."""
    if max_id < n:
        raise RecsysError(f"{n} movies need ids up to at least {n}")
    ids = np.arange(1, max_id + 1)
    keys = -np.log(1 + ids / (max_id / 8)) - np.log(-np.log(rng.random_sample(max_id)))  # Gumbel top-n
    ids = np.sort(ids[np.argpartition(-keys, n - 1)[:n]]) if n < max_id else ids
    genres, lines = [], ["movieId,title,genres"]
    for mid in ids.tolist():
        words = [w.capitalize() for w in rng.choice(_WORDS, rng.randint(1, 5))]
        title = " ".join(words)
        if rng.random_sample() < 0.05:  # "Secret, The (1990)": quoted, like the real file
            title = f'"{title}, The'
        elif rng.random_sample() < 0.02:
            title += f" (a.k.a. Café {words[0]})"
        year = 1900 + int(min(123, rng.gamma(9.0, 10.0)))
        title += f" ({year})" + ('"' if title.startswith('"') else "")
        pick = [] if rng.random_sample() < 0.05 else rng.choice(len(CSV_GENRES), rng.randint(1, 4), replace=False)
        genres.append(sorted(int(g) for g in pick))
        names = "|".join(CSV_GENRES[g] for g in genres[-1]) or "(no genres listed)"
        lines.append(f"{mid},{title},{names}")
    return ids, genres, ("\n".join(lines) + "\n").encode()


def _per_user(rng: np.random.RandomState, n_ratings: int, n_users: int, high: int) -> np.ndarray:
    """Heavy-tailed ratings per user: at least 20 each (a few thousand at most), summing to n_ratings."""
    low = 20
    if n_ratings < low * n_users or n_ratings > high * n_users:
        raise RecsysError(f"{n_ratings} ratings cannot give {n_users} users {low}..{high} ratings each")
    act = rng.lognormal(0.0, 1.6, n_users)
    counts = np.minimum(low + np.floor(act / act.sum() * (n_ratings - low * n_users)).astype(np.int64), high)
    while (diff := n_ratings - int(counts.sum())) > 0:  # hand the rounding and the capped excess to others
        room = np.flatnonzero(counts < high)
        counts[rng.choice(room, min(diff, len(room)), replace=False)] += 1
    return counts


def _pick_movies(rng: np.random.RandomState, counts: np.ndarray, pop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user, movie) index pairs sorted by user then movie: `counts[u]` distinct movies for user u, drawn by
    popularity `pop` (with replacement; duplicates drawn again, twice as many as missing, extras dropped)."""
    cdf = np.cumsum(pop / pop.sum())
    n_m = len(pop)
    have = np.zeros(0, np.int64)  # sorted keys user * n_m + movie
    need, draws = counts.copy(), counts.copy()
    while need.sum() > 0:
        user = np.repeat(np.arange(len(counts)), draws)
        movie = np.minimum(np.searchsorted(cdf, rng.random_sample(len(user)), side="right"), n_m - 1)
        new = np.sort(user * n_m + movie)
        new = new[np.concatenate([[True], new[1:] != new[:-1]])]
        if len(have):
            at = np.minimum(np.searchsorted(have, new), len(have) - 1)
            new = new[have[at] != new]
        got = np.bincount(new // n_m, minlength=len(counts))
        if (got > need).any():  # keep a random `need[u]` of user u's new movies
            order = np.lexsort((rng.random_sample(len(new)), new // n_m))
            first = np.repeat(np.cumsum(got) - got, got)
            new = np.sort(new[order][np.arange(len(new)) - first < np.repeat(need, got)])
            got = np.minimum(got, need)
        have = np.sort(np.concatenate([have, new]), kind="stable")  # a merge of two sorted runs
        need -= got
        draws = 2 * need + (need > 0)
    return have // n_m, have % n_m


def make_csv_ratings(
    n_ratings: int, n_users: int, movie_genres: list[list[int]], seed: int = 0, dim: int = 8
) -> tuple[np.ndarray, ...]:
    """(user index, movie index, stars x 2 (1..10), timestamp) of `n_ratings` ratings from a hidden latent
    model over user, movie and genres; sorted by user then timestamp."""
    rng = np.random.RandomState(seed)
    n_m = len(movie_genres)
    counts = _per_user(rng, n_ratings, n_users, max(20, min(n_m // 5, 20 * max(1, n_ratings // n_users))))
    pop = 1.0 / (rng.permutation(n_m) + 20.0) + 0.02 / n_m  # long-tailed, shuffled over ids
    pop[: n_m // 10] *= 3.0  # older (smaller) ids a little more popular
    user, movie = _pick_movies(rng, counts, pop)
    gvec = rng.normal(0, 0.6, (len(CSV_GENRES), dim))
    q = rng.normal(0, 0.4, (n_m, dim))
    for i, gs in enumerate(movie_genres):
        q[i] += gvec[gs].sum(0)
    p = rng.normal(0, 0.7, (n_users, dim))
    b_u, b_m = rng.normal(0, 0.4, n_users), rng.normal(0, 0.4, n_m) + 0.3 * np.log(pop / pop.mean()) / 3
    stars = np.empty(n_ratings, np.int8)
    for s in range(0, n_ratings, 1 << 22):
        u, m = user[s : s + (1 << 22)], movie[s : s + (1 << 22)]
        score = 3.5 + b_u[u] + b_m[m] + np.einsum("nd,nd->n", p[u], q[m]) / np.sqrt(dim)
        score += rng.normal(0, 0.6, len(u))
        half = rng.random_sample(len(u)) < 0.3  # whole stars are the more common, as in the real data
        stars[s : s + len(u)] = np.where(half, np.rint(score * 2), np.rint(score) * 2).clip(1, 10)
    # each user rates at a few moments over a heavy-tailed span; movies come in a random order
    order = np.argsort(user + rng.random_sample(n_ratings), kind="stable")
    movie, stars = movie[order], stars[order]
    start = _FIRST_TS + (_LAST_TS - _FIRST_TS) * rng.random_sample(n_users) ** 0.8
    span = np.minimum(rng.lognormal(10.0, 3.0, n_users), _LAST_TS - start)
    gaps = rng.exponential(1.0, n_ratings + n_users)
    ends = np.cumsum(counts + 1)
    total = np.cumsum(gaps)
    base = np.repeat(np.concatenate([[0.0], total[ends[:-1] - 1]]), counts)
    last = np.repeat(total[ends - 1] - np.concatenate([[0.0], total[ends[:-1] - 1]]), counts)
    within = np.delete(total, ends - 1) - base  # sorted per user, in (0, last)
    ts = np.repeat(start, counts) + np.repeat(span, counts) * within / last
    return user, movie, stars, ts.astype(np.int64)


def write_csv(
    out_dir: str | Path,
    layout: str = "ml-latest-small",
    n_ratings: int | None = None,
    n_users: int | None = None,
    n_movies: int | None = None,
    seed: int = 0,
    zipped: bool = False,
) -> Path:
    """Write `out_dir/LAYOUT/ratings.csv` and `movies.csv` (or `out_dir/LAYOUT.zip` holding them when
    `zipped`) in GroupLens' CSV layout; sizes default to the real archive's. Returns the folder or zip."""
    if layout not in CSV_LAYOUTS:
        raise RecsysError(f"unknown layout {layout!r} (choose from {', '.join(CSV_LAYOUTS)})")
    real = CSV_LAYOUTS[layout]
    n_ratings, n_users, n_movies = (r if v is None else v for v, r in zip((n_ratings, n_users, n_movies), real))
    if min(n_ratings, n_users, n_movies) < 1:
        raise RecsysError("ratings, users and movies must be at least 1")
    rng = np.random.RandomState(seed)
    ids, genres, movies = _csv_movies(rng, n_movies, max(n_movies, round(n_movies * real[3] / real[2])))
    user, movie, stars, ts = make_csv_ratings(n_ratings, n_users, genres, seed + 1)
    ratings = csv_bytes("userId,movieId,rating,timestamp", [user + 1, ids[movie], _STARS[stars - 1], ts])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = (("movies.csv", movies), ("ratings.csv", ratings))
    if zipped:
        path, tmp = out / f"{layout}.zip", out / f".{layout}.zip.tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            for name, data in files:
                z.writestr(f"{layout}/{name}", data)
        tmp.replace(path)
        return path
    path = out / layout
    path.mkdir(exist_ok=True)
    for name, data in files:
        (path / f".{name}.tmp").write_bytes(data)
        (path / f".{name}.tmp").replace(path / name)
    return path


@cli
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m recsys.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", help="folder that receives ml-1m.zip (or the CSV layout's folder or zip)")
    ap.add_argument("--layout", choices=["ml-1m", *CSV_LAYOUTS], default="ml-1m", help="default: %(default)s")
    ap.add_argument("--ratings", type=int, help="number of ratings (default: the real archive's, 1,000,209 for ml-1m)")
    ap.add_argument("--users", type=int, help="CSV layouts: number of users (default: the real archive's)")
    ap.add_argument("--movies", type=int, help="CSV layouts: number of movies (default: the real archive's)")
    ap.add_argument("--zip", action="store_true", help="CSV layouts: write OUT_DIR/LAYOUT.zip instead of a folder")
    ap.add_argument("--meta-dir", help="ml-1m: folder with real movies.dat and users.dat (else invented ones)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.layout != "ml-1m":
        if args.meta_dir:
            raise RecsysError("--meta-dir is for the ml-1m layout")
        print(write_csv(args.out_dir, args.layout, args.ratings, args.users, args.movies, args.seed, args.zip))
        return 0
    if args.users is not None or args.movies is not None or args.zip:
        raise RecsysError("--users, --movies and --zip are for the CSV layouts")
    if args.meta_dir and not Path(args.meta_dir, "movies.dat").is_file():
        raise RecsysError(f"{args.meta_dir} has no movies.dat")
    ratings = 1_000_209 if args.ratings is None else args.ratings
    if ratings < 1:
        raise RecsysError(f"--ratings must be at least 1, got {ratings}")
    print(write_ml1m(args.out_dir, ratings, args.seed, args.meta_dir, ML1M_USERS, ML1M_MOVIES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
