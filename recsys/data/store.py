"""Ratings and new users sent to the service, kept in a real database: one SQLite file by default (the
standard library's `sqlite3`), or a PostgreSQL server (`postgresql://...`, through psycopg) that several
service replicas share.

SQLite runs in WAL mode (readers never wait for the writer) with `synchronous=FULL` (a commit is on disk, WAL
included, before it returns: the service answers 201 only after that, so a power cut after the answer keeps
the rating; WAL's usual NORMAL may lose the last commits). PostgreSQL commits with `synchronous_commit=on`
(the commit is flushed to its WAL on disk before it returns). Either way a write waits at most
`BUSY_TIMEOUT` seconds for another writer's lock, then gets a one-line error; several processes may use one
database at once (servers, and `train --ratings-db`).

Deletion: a stored rating (or all of a user's) can be deleted; the row is gone from the next read on, so the
served lists stop reading it at once and the next `train --ratings-db` never sees it. A model already trained on
it keeps what it learnt from it until it is trained again: deletion forgets at the next training. The ratings of
the model's own archive are not in the database and cannot be deleted here.

The rule for repeats: a (user, movie) pair has one stored rating, the latest. A re-rating replaces the
row and gets a new, larger `seq`. Writers take the tables' write lock before they write, so rows commit in
`seq` order: the rows up to a `seq` are exactly what was stored up to then, and a training run records the
largest `seq` it read and a hash of the rows (`Snapshot`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
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
TABLES = {"recsys_meta", "users", "ratings"}
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
# the same tables in PostgreSQL's types (64-bit ids, 8-byte floats as SQLite's REAL)
PG_SCHEMA = (
    SCHEMA.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
    .replace("INTEGER", "BIGINT")
    .replace("REAL", "DOUBLE PRECISION")
)


def is_url(where: str | Path) -> bool:
    """Whether `--ratings-db` names a PostgreSQL server rather than a SQLite file."""
    return str(where).startswith(("postgresql://", "postgres://"))


def shown(where: str | Path) -> str:
    """`where` as messages and model dirs show it: a URL without its password."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", str(where))


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

    def record(self, where: str) -> dict:
        """What a model dir says it read."""
        return {"path": shown(where), "high_water": self.high_water, "sha256": self.sha256,
                "ratings": len(self.user), "users": len(self.users)}  # fmt: skip


class _SQLite:
    """A SQLite file: its connections, and how its SQL differs."""

    errors = sqlite3.DatabaseError
    begin_write = begin_create = ("BEGIN IMMEDIATE",)  # the write lock at the start: writers commit in seq order

    def __init__(self, path: Path, create: bool):
        self.path = path
        if _check_file(path, create):
            _create_private(path)

    def connect(self):
        # transactions by hand; used by one thread at a time (`RatingsStore.close` may close it from another)
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        if con.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise RecsysError(f"ratings database {self.path}: cannot switch it to WAL mode")
        con.execute("PRAGMA synchronous = FULL")
        return con

    def tables(self) -> set[str]:
        """The file's tables, once `PRAGMA quick_check` has found it whole (it only reads: a damaged file is
        refused before anything is written to it)."""
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)  # no PRAGMA: reads only
        try:
            problems = [str(r[0]) for r in con.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                found = " ".join("; ".join(problems).split())
                raise RecsysError(
                    f"ratings database {self.path} is damaged (PRAGMA quick_check: {found[:200]}); left untouched: "
                    "restore it from a backup, or give a new file"
                )
            return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()

    schema = SCHEMA

    @staticmethod
    def ours(tables: set[str]) -> set[str]:
        return tables  # the whole file: any other table makes it a foreign database

    @staticmethod
    def sql(text: str) -> str:
        return text

    @staticmethod
    def in_transaction(con) -> bool:
        return con.in_transaction

    @staticmethod
    def busy(e: Exception) -> bool:
        return isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))


class _Postgres:
    """A PostgreSQL database, through psycopg."""

    begin_write = ("BEGIN", "LOCK TABLE users, ratings IN EXCLUSIVE MODE")  # readers go on; writers queue
    begin_create = ("BEGIN",)

    def __init__(self, url: str):
        try:
            import psycopg
        except ModuleNotFoundError:
            raise RecsysError(
                f"ratings database {shown(url)}: PostgreSQL needs the psycopg driver: pip install 'psycopg[binary]'"
            ) from None
        self.psycopg, self.url, self.errors = psycopg, url, psycopg.Error

    def connect(self):
        con = self.psycopg.connect(self.url, autocommit=True, connect_timeout=int(BUSY_TIMEOUT))
        con.execute("SET synchronous_commit = on")
        con.execute(f"SET lock_timeout = '{int(BUSY_TIMEOUT * 1000)}ms'")
        return con

    def tables(self) -> set[str]:
        with self.connect() as con:
            sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            return {r[0] for r in con.execute(sql)}

    schema = PG_SCHEMA

    @staticmethod
    def ours(tables: set[str]) -> set[str]:
        return tables & TABLES  # a server's database holds other tables too

    @staticmethod
    def sql(text: str) -> str:
        return text.replace("?", "%s")

    def in_transaction(self, con) -> bool:
        return con.info.transaction_status != self.psycopg.pq.TransactionStatus.IDLE

    def busy(self, e: Exception) -> bool:
        return isinstance(e, self.psycopg.errors.LockNotAvailable)


class RatingsStore:
    """One ratings database for one dataset: a SQLite file (`where` a path) or a PostgreSQL database (`where`
    a `postgresql://` URL). Each thread gets its own connection."""

    def __init__(self, where: str | Path, dataset: str, create: bool = True):
        self.where, self.dataset = shown(where), dataset
        self._db = _Postgres(str(where)) if is_url(where) else _SQLite(Path(where), create)
        self._local = threading.local()
        self._open, self._opened = [], threading.Lock()  # every thread's connection, for `close`
        self._writing = threading.Lock()  # this process's writers queue here, not in the database's busy wait
        try:
            tables = self._db.ours(
                self._db.tables()
            )  # read before anything is written: a foreign one is left as it was
        except self._db.errors as e:
            raise self._failed(e) from None
        if tables and not TABLES <= tables:
            raise RecsysError(f"{self.where} is a database but not a recsys ratings database; left untouched")
        if not tables and not create:
            raise RecsysError(f"ratings database {self.where} holds no ratings yet (start serve with it first)")
        if tables:
            meta = dict(self._run(lambda q: q("SELECT key, value FROM recsys_meta").fetchall()))
            if meta.get("format") != str(FORMAT):
                raise RecsysError(f"ratings database {self.where} has format {meta.get('format')}, not {FORMAT}")
            if meta.get("dataset") != dataset:
                raise RecsysError(f"ratings database {self.where} holds {meta.get('dataset')} ratings, not {dataset}")
        else:
            self._run(self._create, begin=self._db.begin_create)

    def _create(self, q) -> None:
        for statement in self._db.schema.split(";"):
            if statement.strip():
                q(statement)
        for key, value in (("format", str(FORMAT)), ("dataset", self.dataset)):
            q("INSERT INTO recsys_meta VALUES (?, ?) ON CONFLICT DO NOTHING", (key, value))

    def _connect(self):
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self._db.connect()  # autocommit: `_run` opens and ends each transaction
            with self._opened:
                self._open.append(con)
        return con

    def _damaged(self, e: Exception) -> RecsysError:
        if "file is not a database" in str(e):
            return RecsysError(f"{self.where} is not a SQLite database; left untouched")
        return RecsysError(f"ratings database {self.where} cannot be used: {' '.join(str(e).split())}; left untouched")

    def _failed(self, e: Exception) -> RecsysError:
        if self._db.busy(e):
            return RecsysError(f"ratings database {self.where} stayed locked for {BUSY_TIMEOUT:g} s")
        return self._damaged(e)

    def _run(self, fn, begin: tuple[str, ...] | None = None):
        """`fn(q)` in one transaction, `q(sql, params)` running a statement in `?` style: a read, or a write
        begun by the statements `begin` (they take the write lock). Committed on return; the database's errors
        as one-line errors."""
        db = self._db
        with contextlib.nullcontext() if begin is None else self._writing:
            try:
                con = self._connect()
                for statement in begin or ("BEGIN",):
                    con.execute(statement)
                try:
                    out = fn(lambda sql, params=(): con.execute(db.sql(sql), params))
                    con.execute("COMMIT")
                    return out
                finally:
                    if db.in_transaction(con):
                        con.execute("ROLLBACK")
            except db.errors as e:
                self.close()  # a connection in an unknown state is not used again
                raise self._failed(e) from None

    # writes

    def add_user(self, features: dict, floor: int) -> int:
        """Store a new user with these features; their id is the next above `floor` (the data's largest user
        id) and above every stored user's."""

        def add(q):  # the id is read and taken in one write transaction
            top = q("SELECT MAX(user_id) FROM users").fetchone()[0] or 0
            new = max(int(top), int(floor)) + 1
            q("INSERT INTO users VALUES (?, ?, ?)", (new, json.dumps(features, sort_keys=True), time.time()))
            return new

        return self._run(add, self._db.begin_write)

    def rate(self, user_id: int, movie_id: int, rating: float) -> tuple[int, bool]:
        """Store a rating (the latest of a pair replaces the one before); durable on return: (seq, replaced)."""

        def rate(q):
            gone = q("DELETE FROM ratings WHERE user_id = ? AND movie_id = ?", (user_id, movie_id)).rowcount
            sql = "INSERT INTO ratings (user_id, movie_id, rating, at) VALUES (?, ?, ?, ?) RETURNING seq"
            return int(q(sql, (user_id, movie_id, float(rating), time.time())).fetchone()[0]), gone > 0

        return self._run(rate, self._db.begin_write)

    def delete_rating(self, user_id: int, movie_id: int) -> bool:
        """Delete the user's stored rating of the movie, durable on return: whether there was one."""
        sql = "DELETE FROM ratings WHERE user_id = ? AND movie_id = ?"
        return self._run(lambda q: q(sql, (user_id, movie_id)).rowcount > 0, self._db.begin_write)

    def delete_ratings(self, user_id: int) -> int:
        """Delete every stored rating of the user in one transaction, durable on return: how many there were."""
        return self._run(
            lambda q: q("DELETE FROM ratings WHERE user_id = ?", (user_id,)).rowcount, self._db.begin_write
        )

    # reads

    def user(self, user_id: int) -> dict | None:
        """A stored new user's features, or None."""
        row = self._run(lambda q: q("SELECT features FROM users WHERE user_id = ?", (user_id,)).fetchone())
        return None if row is None else json.loads(row[0])

    def ratings_of(self, user_id: int) -> list[tuple[int, float, int, float]]:
        """(movie id, rating, seq, unix time) of the user's stored ratings, oldest first."""
        sql = "SELECT movie_id, rating, seq, at FROM ratings WHERE user_id = ? ORDER BY seq"
        return [tuple(r) for r in self._run(lambda q: q(sql, (user_id,)).fetchall())]

    def snapshot(self, high_water: int | None = None, n_users: int | None = None) -> Snapshot:
        """Every rating up to `high_water` and the first `n_users` new users (ids only grow, so they are those
        stored then; default: all there are now), read in one transaction."""

        def read(q):
            top = q("SELECT COALESCE(MAX(seq), 0) FROM ratings").fetchone()[0]
            mark = top if high_water is None else high_water
            sql = "SELECT seq, user_id, movie_id, rating, at FROM ratings WHERE seq <= ? ORDER BY seq"
            rows = [list(r) for r in q(sql, (mark,)).fetchall()]
            users = "SELECT user_id, features FROM users ORDER BY user_id"
            users = q(users + ("" if n_users is None else f" LIMIT {int(n_users)}")).fetchall()
            return mark, rows, [list(u) for u in users]

        mark, rows, users = self._run(read)
        digest = hashlib.sha256(json.dumps([rows, users]).encode()).hexdigest()
        a = np.array([r[1:] for r in rows], np.float64).reshape(-1, 4)
        return Snapshot(
            int(mark), digest, [(u, json.loads(f)) for u, f in users],
            a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), a[:, 2].astype(np.float32), a[:, 3],
        )  # fmt: skip

    def close(self, every_thread: bool = False) -> None:
        """Close this thread's connection (`every_thread`: every thread's, as a server stopping does)."""
        con = getattr(self._local, "con", None)
        self._local.con = None
        with self._opened:
            gone = list(self._open) if every_thread else [c for c in self._open if c is con]
            self._open = [c for c in self._open if c not in gone]
        for c in gone:
            c.close()


def _check_file(path: Path, create: bool) -> bool:
    """A one-line error for a path that cannot be a ratings database file, by its metadata alone: the file is
    never opened here. (Closing any descriptor of a file drops every POSIX lock this process holds on it, the
    locks by which SQLite knows that a connection is open: another process closing its last connection could
    then take the WAL away from under this process's connections. SQLite reads the header itself.) True when
    there is no file yet, to be created."""
    if path.is_dir():
        raise RecsysError(f"ratings database {path} is a folder, not a file")
    if not path.exists():
        if not create:
            raise RecsysError(f"ratings database {path} does not exist")
        if not path.parent.is_dir():
            raise RecsysError(f"ratings database {path}: its folder {path.parent} does not exist")
        return True
    if not os.access(path, os.R_OK):
        raise RecsysError(f"cannot read ratings database {path}: permission denied")
    if path.stat().st_size == 0 and not create:
        raise RecsysError(f"ratings database {path} is empty")
    return False


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only (0600): SQLite gives its `-wal` and `-shm` files
    the database's mode. A file another process created just now is left as it is."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass
    except OSError as e:
        raise RecsysError(f"cannot create ratings database {path}: {e.strerror or e}") from None


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
