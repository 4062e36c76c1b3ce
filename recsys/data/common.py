"""What the source formats share: line iteration, one-line errors, the chapter's title rule, and the rating
columns every format hands to the loader."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.data.schema import MovieInfo
from recsys.errors import RecsysError

_TITLE = re.compile(r"^(.*)\(([0-9]{4})\)$")


@dataclass
class Ratings:
    """Rating columns in file order: user and movie ROWS, half-stars (rating * 2), timestamps (or None) and, for
    a shipped split, its test mask."""

    user: np.ndarray  # int32 [n]
    movie: np.ndarray  # int32 [n]
    half: np.ndarray  # int8 [n], 1..10
    timestamp: np.ndarray | None  # int64 [n]
    is_test: np.ndarray | None = None  # bool [n]


def lines(data: bytes) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of each non-blank line."""
    for i, raw in enumerate(data.decode("latin-1").splitlines(), 1):
        if raw.strip():
            yield i, raw.strip()


def bad_line(source: Path, member: str, line_no: int, line: str) -> RecsysError:
    return RecsysError(f"{source}: {member} line {line_no} is malformed: {line[:80]!r}")


def chapter_title(full: str) -> str:
    """The chapter's title rule: a trailing `(year)`, four digits, is dropped (the blank before it stays); other
    trailing `(digits)` are part of the title."""
    m = _TITLE.match(full)
    return m.group(1) if m else full


def title_year(full: str) -> int | None:
    """The release year a title ends with, `(1995)`, or None."""
    m = _TITLE.match(full.strip())
    return int(m.group(2)) if m and len(m.group(2)) == 4 else None


def movies_from(raw: list[tuple[int, str, list[str]]], categories: list[str]) -> tuple[dict[int, MovieInfo], list[str]]:
    """MovieInfo by row from (row, full title, genres) triples (the title's year kept apart, the title by the
    chapter's rule), and the sorted title vocabulary (lower-cased words)."""
    years = {row: title_year(t) for row, t, _ in raw}
    raw = [(row, chapter_title(t), cs) for row, t, cs in raw]
    words = {w: i for i, w in enumerate(sorted({w.lower() for _, t, _ in raw for w in t.split()}))}
    cat_ids = {c: i for i, c in enumerate(categories)}
    movies = {
        row: MovieInfo(row, cs, t, [cat_ids[c] for c in cs], [words[w.lower()] for w in t.split()], years[row])
        for row, t, cs in raw
    }
    return movies, list(words)


def int_rows(data: bytes, source: Path, member: str) -> np.ndarray:
    """`user, movie, rating, timestamp` lines (`::` or tab separated) as an int64 [n, 4] array."""
    text = data.replace(b"::", b"\t")
    n = text.count(b"\n") + (not text.endswith(b"\n"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            arr = np.fromstring(text, dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning):
        arr = np.zeros(0, np.int64)
    if arr.size != 4 * n:  # blank lines, or a malformed one: find out which, line by line
        n = 0
        for i, line in lines(data):
            parts = line.replace("::", "\t").split("\t")
            if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
                raise bad_line(source, member, i, line)
            n += 1
        if arr.size != 4 * n:
            raise RecsysError(f"{source}: {member} is malformed")
    return arr.reshape(n, 4)


def whole_star_ratings(parts: list[np.ndarray], meta, source: Path, members: list[str]) -> Ratings:
    """Ratings of the chapter's layouts (row == own id, whole stars 1..5) from `int_rows` arrays, checked."""
    for rows, member in zip(parts, members):
        for col, known, what in ((0, meta.users, "user"), (1, meta.movies, "movie")):
            bad = ~np.isin(rows[:, col], np.fromiter(known, np.int64))
            if bad.any():
                raise RecsysError(
                    f"{source}: {member} line {int(np.argmax(bad)) + 1} has unknown {what} id {rows[bad, col][0]}"
                )
        bad = (rows[:, 2] < 1) | (rows[:, 2] > 5)
        if bad.any():
            raise RecsysError(
                f"{source}: {member} line {int(np.argmax(bad)) + 1} has rating {rows[bad, 2][0]} outside 1..5"
            )
    rows = np.concatenate(parts)
    is_test = None if len(parts) == 1 else np.repeat([False, True], [len(parts[0]), len(parts[1])])
    return Ratings(
        rows[:, 0].astype(np.int32),
        rows[:, 1].astype(np.int32),
        (rows[:, 2] * 2).astype(np.int8),
        rows[:, 3].astype(np.int64),
        is_test,
    )
