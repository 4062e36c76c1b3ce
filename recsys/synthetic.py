"""Write a synthetic archive in the exact ml-1m layout, for tests, benchmarks and offline demos.

Movies and users come from real `movies.dat` / `users.dat` when a folder with them is given, else they are
invented. Ratings come from a hidden latent-factor model that depends on the same features the network
sees (user, gender, age, job, movie, genres), so learning is measurable. Lines are sorted by user, like
the real `ratings.dat`.

    python -m recsys.synthetic OUT_DIR --ratings 1000209 --meta-dir ../shared/data/ml-1m
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


@cli
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m recsys.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", help="folder that receives ml-1m.zip")
    ap.add_argument("--ratings", type=int, default=1_000_209, help="number of rating lines (ml-1m has 1,000,209)")
    ap.add_argument("--meta-dir", help="folder with real movies.dat and users.dat (else invented ones)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.meta_dir and not Path(args.meta_dir, "movies.dat").is_file():
        raise RecsysError(f"{args.meta_dir} has no movies.dat")
    print(write_ml1m(args.out_dir, args.ratings, args.seed, args.meta_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
