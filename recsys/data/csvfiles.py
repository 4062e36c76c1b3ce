"""CSV layouts: the GroupLens releases (ml-latest-small, ml-latest, ml-20m, ml-25m, ml-32m) and your own files.

- `ratings.csv`: `userId,movieId,rating[,timestamp]` with a header line; columns are found by name, other
  columns are ignored. Ratings are 0.5..5 in steps of 0.5.
- `movies.csv` (optional for the `csv` layout): `movieId,title,genres`, genres `|`-separated;
  "(no genres listed)" counts as no genre. Every rated movie must be listed.
- `users.csv` (`csv` layout only, optional): `userId` plus any categorical columns, one user feature each
  (name: the header lower-cased, characters outside `[a-z0-9_]` as `_`; values: "" (unknown, id 0), then the
  distinct non-empty values sorted). Users who rated but are absent from users.csv get "" for every feature.

Rows: user row 0 is the unknown user, rows 1.. the distinct user ids (of ratings.csv and users.csv)
ascending; movie row 0 is no movie (own id -1), rows 1.. the movies of movies.csv (else the rated ones)
ascending. Every bad line is one error naming the file and its 1-based line number (the header is line 1).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from pathlib import Path

import numpy as np

from recsys.data import fetch
from recsys.data.common import Ratings, chapter_title, title_year
from recsys.data.schema import Meta, MovieInfo
from recsys.errors import RecsysError

NO_GENRE = "(no genres listed)"
RESERVED = ("user", "movie", "category", "movie_title")  # feature names whose feeds would clash with others


def _arrow():
    import pyarrow as pa
    import pyarrow.csv as pacsv

    return pa, pacsv


def _header(data: bytes, source: Path, member: str) -> list[str]:
    first = data.split(b"\n", 1)[0].decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r")
    names = next(csv.reader([first]), [])
    if not names or not any(n.strip() for n in names):
        raise RecsysError(f"{source}: {member} line 1 is not a header line (it must name the columns)")
    return [n.strip() for n in names]


def _rows(data: bytes):
    """(1-based line number, fields) of each non-blank CSV row after the header."""
    reader = csv.reader(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace", newline=""))
    next(reader, None)
    start = reader.line_num + 1
    for fields in reader:
        if fields:
            yield start, fields
        start = reader.line_num + 1


def _parses(value: str, kind: str) -> bool:
    try:
        if kind == "int":
            int(value)
        elif kind == "float":
            float(value)
        return True
    except ValueError:
        return False


def _line_of(data: bytes, index: int) -> int:
    """The line number of data row `index` (0-based, blank lines skipped as the reader skips them)."""
    for i, (line_no, _) in enumerate(_rows(data)):
        if i == index:
            return line_no
    return index + 2


def _read(data: bytes, source: Path, member: str, kinds: dict[str, str], rest_as_text: bool = False):
    """The file as a pyarrow table with the columns `kinds` names (`int`, `float`, `text`; a missing one is an
    error) plus, with `rest_as_text`, every other column as text; and the header."""
    pa, pacsv = _arrow()
    header = _header(data, source, member)
    for name in kinds:
        if name not in header:
            raise RecsysError(f"{source}: {member} line 1 has no column {name!r} (header: {','.join(header)})")
    if len(set(header)) != len(header):
        raise RecsysError(f"{source}: {member} line 1 names a column twice (header: {','.join(header)})")
    types = {"int": pa.int64(), "float": pa.float64(), "text": pa.string()}
    wanted = {n: kinds.get(n, "text") for n in header if n in kinds or rest_as_text}
    try:
        table = pacsv.read_csv(
            pa.py_buffer(data),
            read_options=pacsv.ReadOptions(use_threads=True, block_size=1 << 24),
            convert_options=pacsv.ConvertOptions(
                column_types={n: types[k] for n, k in wanted.items()},
                include_columns=list(wanted),
                strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        checks = [(header.index(n), k) for n, k in wanted.items() if k != "text"]
        for line_no, fields in _rows(data):
            if len(fields) != len(header) or not all(_parses(fields[i], k) for i, k in checks):
                raise RecsysError(
                    f"{source}: {member} line {line_no} is malformed: {','.join(fields)[:80]!r}"
                ) from None
        raise RecsysError(f"{source}: {member} is malformed: {str(e).splitlines()[0]}") from None
    for name, col in zip(table.column_names, table.columns):
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise RecsysError(f"{source}: {member} line {_line_of(data, row)} has no {name}")
    return table, header


def _np(table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


def _first_repeat(ids: np.ndarray) -> int | None:
    """Index of the first id that occurred before it, or None."""
    _, first = np.unique(ids, return_index=True)
    if len(first) == len(ids):
        return None
    seen = np.zeros(len(ids), bool)
    seen[first] = True
    return int(np.flatnonzero(~seen)[0])


def _dense(ids: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct values of `ids` and `extra` ascending, and each one's row (1-based) for both arrays."""
    both = np.concatenate([ids, extra]) if len(extra) else ids
    if not len(both):
        return both, ids.astype(np.int64), extra.astype(np.int64)
    lo, hi = int(both.min()), int(both.max())
    if hi - lo < 4 * len(both) + (1 << 20):  # a presence table: linear, no sort
        present = np.zeros(hi - lo + 1, bool)
        present[both - lo] = True
        rank = np.cumsum(present, dtype=np.int64)
        return np.flatnonzero(present) + lo, rank[ids - lo], rank[extra - lo]
    distinct, inverse = np.unique(both, return_inverse=True)
    inverse = inverse.reshape(-1) + 1
    return distinct, inverse[: len(ids)], inverse[len(ids) :]


def feature_name(header: str) -> str:
    """A users.csv column header as a feature name: lower-cased, characters outside `[a-z0-9_]` as `_`."""
    return re.sub(r"[^a-z0-9_]", "_", header.strip().lower())


def parse(source: Path, dataset: str) -> dict[str, dict[str, np.ndarray]]:
    """The dataset's arrays: `meta` (user/movie ids, user table, the rest as JSON) and `ratings` columns."""
    data = fetch.read_member(source, dataset, "ratings.csv")
    kinds = {"userId": "int", "movieId": "int", "rating": "float"}
    header = _header(data, source, "ratings.csv")
    kinds |= {"timestamp": "int"} if "timestamp" in header else {}
    table, _ = _read(data, source, "ratings.csv", kinds)
    user, movie, rating = (_np(table, n) for n in ("userId", "movieId", "rating"))
    timestamp = _np(table, "timestamp").astype(np.int64) if "timestamp" in kinds else None
    del table
    half = rating * 2
    bad = ~((half >= 1) & (half <= 10) & (half == np.round(half)))
    if bad.any():
        i = int(np.argmax(bad))
        raise RecsysError(
            f"{source}: ratings.csv line {_line_of(data, i)} has rating {rating[i]:g}, not one of 0.5, 1, ..., 5"
        )
    half = half.astype(np.int8)
    del rating

    features, user_extra, user_columns = _users(source, dataset)
    user_ids, user_rows, extra_rows = _dense(user.astype(np.int64), user_extra)
    n_users = len(user_ids) + 1
    user_table = np.zeros((n_users, len(features)), np.int64)
    if len(features):
        user_table[extra_rows] = user_columns

    movies = _movies(source, dataset)
    if movies is None:
        movie_ids, movie_rows, _ = _dense(movie.astype(np.int64), np.zeros(0, np.int64))
        extra, movie_arrays = {"features": features, "titles": None}, {}
    else:
        movie_ids, titles, genres = movies
        at = np.minimum(np.searchsorted(movie_ids, movie), max(len(movie_ids) - 1, 0))
        unknown = movie_ids[at] != movie if len(movie_ids) else np.ones(len(movie), bool)
        if unknown.any():
            i = int(np.argmax(unknown))
            raise RecsysError(
                f"{source}: ratings.csv line {_line_of(data, i)} has movie id {movie[i]}, which movies.csv lacks"
            )
        movie_rows = at + 1
        extra, movie_arrays = _vocabularies(titles, genres)
        extra["features"] = features
    del data
    meta = {
        "user_ids": np.concatenate([[0], user_ids]).astype(np.int64),
        "movie_ids": np.concatenate([[-1], movie_ids]).astype(np.int64),
        "user_table": user_table,
        "json": np.frombuffer(json.dumps(extra).encode(), np.uint8),
        **movie_arrays,
    }
    ratings = {"user": user_rows.astype(np.int32), "movie": movie_rows.astype(np.int32), "half": half}
    return {"meta": meta, "ratings": ratings | ({} if timestamp is None else {"timestamp": timestamp})}


def _users(source: Path, dataset: str) -> tuple[dict[str, list[str]], np.ndarray, np.ndarray]:
    """users.csv's features, its user ids, and their feature ids [n, n_features] (nothing when it is absent)."""
    if dataset != "csv" or not fetch.has_member(source, dataset, "users.csv"):
        return {}, np.zeros(0, np.int64), np.zeros((0, 0), np.int64)
    data = fetch.read_member(source, dataset, "users.csv")
    table, header = _read(data, source, "users.csv", {"userId": "int"}, rest_as_text=True)
    ids = _np(table, "userId").astype(np.int64)
    repeat = _first_repeat(ids)
    if repeat is not None:
        raise RecsysError(f"{source}: users.csv line {_line_of(data, repeat)} repeats user id {ids[repeat]}")
    features, columns = {}, []
    for col in header:
        if col == "userId":
            continue
        name = feature_name(col)
        if name in features or name in RESERVED or not name.strip("_"):
            raise RecsysError(f"{source}: users.csv line 1: column {col!r} cannot be a feature named {name!r}")
        text = np.array([v.strip() for v in table.column(col).to_pylist()], dtype=object)
        values = [""] + sorted(set(text.tolist()) - {""})
        features[name] = values
        index = {v: i for i, v in enumerate(values)}
        columns.append(np.array([index[v] for v in text], np.int64))
    return features, ids, np.stack(columns, 1) if columns else np.zeros((len(ids), 0), np.int64)


def _movies(source: Path, dataset: str) -> tuple[np.ndarray, list[str], list[list[str]]] | None:
    """movies.csv's ids (ascending) with their titles and genres, or None when there is no movies.csv."""
    if dataset == "csv" and not fetch.has_member(source, dataset, "movies.csv"):
        return None
    data = fetch.read_member(source, dataset, "movies.csv")
    table, _ = _read(data, source, "movies.csv", {"movieId": "int", "title": "text", "genres": "text"})
    ids = _np(table, "movieId").astype(np.int64)
    repeat = _first_repeat(ids)
    if repeat is not None:
        raise RecsysError(f"{source}: movies.csv line {_line_of(data, repeat)} repeats movie id {ids[repeat]}")
    order = np.argsort(ids, kind="stable")
    titles, genres = table.column("title").to_pylist(), table.column("genres").to_pylist()
    return ids[order], [titles[i] for i in order], [genres[i] for i in order]


def _vocabularies(titles: list[str], genres: list[str]) -> tuple[dict, dict[str, np.ndarray]]:
    """Titles (the chapter's rule), categories and title words (sorted), and each movie's category / title
    word ids as flat arrays with per-movie lengths (what the cache keeps, so a cached load builds no vocabulary)."""
    years = [title_year(t) for t in titles]
    titles = [chapter_title(t) for t in titles]
    genres = [[g for g in (gs or "").split("|") if g and g != NO_GENRE] for gs in genres]
    categories = sorted({g for gs in genres for g in gs})
    words = sorted({w.lower() for t in titles for w in t.split()})
    cat_ids, word_ids = {c: i for i, c in enumerate(categories)}, {w: i for i, w in enumerate(words)}
    cats = [[cat_ids[g] for g in gs] for gs in genres]
    title_ids = [[word_ids[w.lower()] for w in t.split()] for t in titles]
    arrays = {
        "category_flat": np.fromiter(itertools.chain.from_iterable(cats), np.int64),
        "category_len": np.array([len(c) for c in cats], np.int64),
        "title_flat": np.fromiter(itertools.chain.from_iterable(title_ids), np.int64),
        "title_len": np.array([len(t) for t in title_ids], np.int64),
    }
    return {"titles": titles, "years": years, "categories": categories, "words": words}, arrays


def meta_from(dataset: str, arrays) -> Meta:
    """The Meta of `parse`'s `meta` arrays (fresh, or read back from the cache)."""
    extra = json.loads(bytes(arrays["json"]).decode())
    user_ids, movie_ids = np.asarray(arrays["user_ids"]), np.asarray(arrays["movie_ids"])
    if extra["titles"] is None:
        movies = {row: MovieInfo(row, [], f"movie {movie_ids[row]}", [], []) for row in range(1, len(movie_ids))}
        categories, words = [], []
    else:
        categories, words = extra["categories"], extra["words"]
        cat_flat, title_flat = arrays["category_flat"].tolist(), arrays["title_flat"].tolist()
        cat_end, title_end = np.cumsum(arrays["category_len"]).tolist(), np.cumsum(arrays["title_len"]).tolist()
        movies, c0, t0 = {}, 0, 0
        years = extra.get("years") or [None] * len(extra["titles"])
        for row, (title, c1, t1, year) in enumerate(zip(extra["titles"], cat_end, title_end, years), 1):
            cs = cat_flat[c0:c1]
            movies[row] = MovieInfo(row, [categories[c] for c in cs], title, cs, title_flat[t0:t1], year)
            c0, t0 = c1, t1
    return Meta(
        dataset,
        {},
        movies,
        categories,
        words,
        [],
        extra["features"],
        user_ids,
        movie_ids,
        np.asarray(arrays["user_table"]),
        np.arange(1, len(user_ids), dtype=np.int64),
    )


def ratings_from(arrays) -> Ratings:
    """The Ratings of `parse`'s `ratings` arrays."""
    ts = arrays["timestamp"] if "timestamp" in arrays else None
    return Ratings(arrays["user"], arrays["movie"], arrays["half"], ts)
