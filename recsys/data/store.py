"""Ratings and new users sent to the service, kept in one SQLite file (the standard library's `sqlite3`).

The file is a real database: WAL mode (readers never wait for the writer), `synchronous=FULL` (a commit is
on disk, WAL included, before it returns: the service answers 201 only after that, so a power cut after
the answer keeps the rating; WAL's usual NORMAL may lose the last commits), and a busy timeout of
`BUSY_TIMEOUT` seconds, after which a writer that cannot get the lock gets a one-line error. Several
processes may use one file at once (two servers, or a server and `train --ratings-db`).

The rule for repeats: a (user, movie) pair has one stored rating, the latest. A re-rating replaces the
row and gets a new, larger `seq`; so the rows up to a `seq` are exactly what was stored up to then, and a
training run records the largest `seq` it read and a hash of the rows (`Snapshot`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.data.schema import CHAPTER_FEATURES, MovieLens, Tables, UserInfo, age_index, age_table
from recsys.errors import RecsysError

FORMAT = 1
BUSY_TIMEOUT = 5.0  # seconds a write waits for another process's write before it fails
HEADER = b"SQLite format 3\x00"
SCHEMA = """
CREATE TABLE IF NOT EXISTS recsys_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (user_id INTEGER PRIMARY KEY, features TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS ratings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    movie_id INTEGER NOT NULL,
    rating REAL NOT NULL,
    at REAL NOT NULL,
    UNIQUE (user_id, movie_id)
);
"""


@dataclass
class Snapshot:
    """Every stored row up to `high_water` (the largest `seq`): new users and ratings, and their hash."""

    high_water: int
    sha256: str
    users: list[tuple[int, dict]]  # (user id, features as the service showed them), by id
    user: np.ndarray  # int64 [n] own user ids of the ratings, by seq
    movie: np.ndarray  # int64 [n] own movie ids
    rating: np.ndarray  # float32 [n]
    at: np.ndarray  # float64 [n] unix time of each rating

    def record(self, path: str) -> dict:
        """What a model dir says it read."""
        return {"path": path, "high_water": self.high_water, "sha256": self.sha256,
                "ratings": len(self.user), "users": len(self.users)}  # fmt: skip


class RatingsStore:
    """One ratings database for one dataset. Each thread gets its own connection."""

    def __init__(self, path: str | Path, dataset: str, create: bool = True):
        self.path, self.dataset = Path(path), dataset
        self._local = threading.local()
        self._writing = threading.Lock()  # this process's writers queue here, not in SQLite's sleeping busy handler
        _check_file(self.path, create)
        tables = self._tables()  # read before anything is written: a foreign file is left as it was
        if tables and not {"recsys_meta", "users", "ratings"} <= tables:
            raise RecsysError(f"{self.path} is a SQLite database but not a recsys ratings database; left untouched")
        if not tables and not create:
            raise RecsysError(f"ratings database {self.path} holds no ratings yet (start serve with it first)")
        if tables:
            meta = dict(self._run(lambda con: con.execute("SELECT key, value FROM recsys_meta").fetchall()))
            if meta.get("format") != str(FORMAT):
                raise RecsysError(f"ratings database {self.path} has format {meta.get('format')}, not {FORMAT}")
            if meta.get("dataset") != dataset:
                raise RecsysError(f"ratings database {self.path} holds {meta.get('dataset')} ratings, not {dataset}")
        else:
            self._run(self._create, write=True)

    def _tables(self) -> set[str]:
        try:
            con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            try:
                return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            finally:
                con.close()
        except sqlite3.DatabaseError as e:
            raise self._damaged(e) from None

    def _create(self, con) -> None:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                con.execute(statement)
        con.execute("INSERT OR IGNORE INTO recsys_meta VALUES ('format', ?)", (str(FORMAT),))
        con.execute("INSERT OR IGNORE INTO recsys_meta VALUES ('dataset', ?)", (self.dataset,))

    def _connect(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            try:
                con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
                if con.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                    raise RecsysError(f"ratings database {self.path}: cannot switch it to WAL mode")
                con.execute("PRAGMA synchronous = FULL")
            except sqlite3.DatabaseError as e:
                raise self._damaged(e) from None
            self._local.con = con  # autocommit mode: `_run` opens and ends each transaction itself
        return con

    def _damaged(self, e: Exception) -> RecsysError:
        return RecsysError(f"ratings database {self.path} cannot be used: {e}; left untouched")

    def _run(self, fn, write: bool = False):
        """`fn(connection)` in one transaction (a write takes the lock at its start), committed on return;
        SQLite's errors as one-line errors."""
        con = self._connect()
        with self._writing if write else contextlib.nullcontext():
            return self._transaction(con, fn, write)

    def _transaction(self, con: sqlite3.Connection, fn, write: bool):
        try:
            con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                out = fn(con)
                con.execute("COMMIT")
                return out
            finally:
                if con.in_transaction:
                    con.execute("ROLLBACK")
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise RecsysError(f"ratings database {self.path} stayed locked for {BUSY_TIMEOUT:g} s") from None
            raise self._damaged(e) from None
        except sqlite3.DatabaseError as e:
            raise self._damaged(e) from None

    # writes

    def add_user(self, features: dict, floor: int) -> int:
        """Store a new user with these features; their id is the next above `floor` (the data's largest user
        id) and above every stored user's."""

        def add(con):  # the id is read and taken in one write transaction
            top = con.execute("SELECT MAX(user_id) FROM users").fetchone()[0] or 0
            new = max(int(top), int(floor)) + 1
            con.execute("INSERT INTO users VALUES (?, ?, ?)", (new, json.dumps(features, sort_keys=True), time.time()))
            return new

        return self._run(add, write=True)

    def rate(self, user_id: int, movie_id: int, rating: float) -> tuple[int, bool]:
        """Store a rating (the latest of a pair replaces the one before); durable on return: (seq, replaced)."""

        def rate(con):
            gone = con.execute("DELETE FROM ratings WHERE user_id = ? AND movie_id = ?", (user_id, movie_id)).rowcount
            cur = con.execute(
                "INSERT INTO ratings (user_id, movie_id, rating, at) VALUES (?, ?, ?, ?)",
                (user_id, movie_id, float(rating), time.time()),
            )
            return int(cur.lastrowid), bool(gone)

        return self._run(rate, write=True)

    # reads

    def user(self, user_id: int) -> dict | None:
        """A stored new user's features, or None."""
        row = self._run(lambda con: con.execute("SELECT features FROM users WHERE user_id = ?", (user_id,)).fetchone())
        return None if row is None else json.loads(row[0])

    def ratings_of(self, user_id: int) -> list[tuple[int, float, int, float]]:
        """(movie id, rating, seq, unix time) of the user's stored ratings, oldest first."""
        sql = "SELECT movie_id, rating, seq, at FROM ratings WHERE user_id = ? ORDER BY seq"
        return self._run(lambda con: con.execute(sql, (user_id,)).fetchall())

    def snapshot(self, high_water: int | None = None, n_users: int | None = None) -> Snapshot:
        """Every rating up to `high_water` and the first `n_users` new users (ids only grow, so they are those
        stored then; default: all there are now), read in one transaction."""

        def read(con):
            top = con.execute("SELECT COALESCE(MAX(seq), 0) FROM ratings").fetchone()[0]
            mark = top if high_water is None else high_water
            rows = con.execute(
                "SELECT seq, user_id, movie_id, rating, at FROM ratings WHERE seq <= ? ORDER BY seq", (mark,)
            ).fetchall()
            sql = "SELECT user_id, features FROM users ORDER BY user_id LIMIT ?"
            users = con.execute(sql, (-1 if n_users is None else n_users,)).fetchall()
            return mark, rows, users

        mark, rows, users = self._run(read)
        digest = hashlib.sha256(json.dumps([rows, users]).encode()).hexdigest()
        a = np.array([r[1:] for r in rows], np.float64).reshape(-1, 4)
        return Snapshot(
            int(mark), digest, [(u, json.loads(f)) for u, f in users],
            a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), a[:, 2].astype(np.float32), a[:, 3],
        )  # fmt: skip

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


def _check_file(path: Path, create: bool) -> None:
    """A one-line error for a path that is no SQLite file (the file is left as it is)."""
    if path.is_dir():
        raise RecsysError(f"ratings database {path} is a folder, not a file")
    if not path.exists():
        if not create:
            raise RecsysError(f"ratings database {path} does not exist")
        if not path.parent.is_dir():
            raise RecsysError(f"ratings database {path}: its folder {path.parent} does not exist")
        return
    try:
        with open(path, "rb") as f:
            head = f.read(len(HEADER))
    except OSError as e:
        raise RecsysError(f"cannot read ratings database {path}: {e.strerror or e}") from None
    if head and head != HEADER:
        raise RecsysError(f"{path} is not a SQLite database; left untouched")
    if not head and not create:
        raise RecsysError(f"ratings database {path} is empty")


def with_stored(data: MovieLens, snap: Snapshot) -> tuple[MovieLens, dict]:
    """`data` with the stored new users and ratings added to its training split. A stored rating replaces
    the same user's training rating of the movie (the latest counts); one of a movie the user rated in the
    test split is left out, so the test split is never touched. Returns the data and what was added."""
    data = _with_users(data, snap.users)
    meta = data.meta
    user, movie = meta.user_row(snap.user), meta.movie_row(snap.movie)
    known = (user >= 0) & (movie >= 0)
    user, movie, rating, at = user[known], movie[known], snap.rating[known], snap.at[known]
    n_movies = len(meta.movie_ids)
    stored_key, archive_key = user * n_movies + movie, data.user * n_movies + data.movie
    in_test = np.isin(stored_key, archive_key[data.is_test])
    replaced = ~data.is_test & np.isin(archive_key, stored_key)
    add = ~in_test
    keep = ~replaced
    ts = None if data.timestamp is None else np.concatenate([data.timestamp[keep], at[add].astype(np.int64)])
    out = dataclasses.replace(
        data,
        user=np.concatenate([data.user[keep], user[add]]),
        movie=np.concatenate([data.movie[keep], movie[add]]),
        stars=np.concatenate([data.stars[keep], rating[add]]).astype(np.float32),
        is_test=np.concatenate([data.is_test[keep], np.zeros(int(add.sum()), bool)]),
        timestamp=ts,
    )
    added = {"ratings": int(add.sum()), "replaced": int(replaced.sum()), "left_out_test": int(in_test.sum()),
             "left_out_unknown": int((~known).sum()), "new_users": len(snap.users)}  # fmt: skip
    return out, added


def _with_users(data: MovieLens, users: list[tuple[int, dict]]) -> MovieLens:
    """`data` with rows for the stored new users that it does not have yet (a model trained on them has)."""
    meta = data.meta
    new = [(u, f) for u, f in users if meta.user_row([u])[0] < 0]
    if not new:
        return data
    if list(meta.features) == list(CHAPTER_FEATURES) and meta.users:  # the chapter's layouts: row == own id
        people = dict(meta.users)
        for u, f in new:
            people[u] = UserInfo(u, f["gender"], age_table[age_index(int(f["age"]))], int(f["job"]))
        meta = dataclasses.replace(meta, users=people, user_ids=None, user_table=None, known_user_rows=None)
    else:
        rows = np.arange(len(meta.user_ids), len(meta.user_ids) + len(new), dtype=np.int64)
        ids = [[labels.index(f.get("features", {}).get(name, "")) for name, labels in meta.features.items()]
               for _u, f in new]  # fmt: skip
        meta = dataclasses.replace(
            meta,
            user_ids=np.concatenate([meta.user_ids, [u for u, _f in new]]).astype(np.int64),
            user_table=np.concatenate([meta.user_table, np.array(ids, np.int64).reshape(len(new), -1)]),
            known_user_rows=np.concatenate([meta.known_user_rows, rows]),
        )
    return dataclasses.replace(data, meta=meta, tables=Tables.from_meta(meta))
