"""The model dirs a long-running server answers from, reloaded whole when a training run saves a newer one."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys import infer
from recsys.errors import RecsysError
from recsys.modeldir import ModelDir


@dataclass(frozen=True)
class Models:
    """The model dirs one request is answered by."""

    main: ModelDir
    rerank: ModelDir | None
    stamp: tuple
    rating_counts: np.ndarray  # per movie id: number of ratings in the archive
    star_sums: np.ndarray  # per movie id: their stars, summed

    @property
    def rating(self) -> ModelDir | None:
        """The model that predicts ratings: the main one or the reranker, whichever is a rating model."""
        return next((m for m in (self.main, self.rerank) if m is not None and m.objective == "rating"), None)


def _stamp(path: Path | None) -> tuple:
    """What changes when a save swaps the dir in: its inode and its manifest's (or meta's) mtime."""
    if path is None:
        return ()
    st = os.stat(path)
    inner = path / "manifest.json" if (path / "manifest.json").exists() else path / "meta.json"
    return (st.st_ino, os.stat(inner).st_mtime_ns)


def load_models(model_dir: str | os.PathLike, rerank: str | os.PathLike | None = None) -> Models:
    """Load and check the pair, and build the predictor now, before any request needs it."""
    paths = Path(model_dir), (Path(rerank) if rerank is not None else None)
    try:
        stamp = (_stamp(paths[0]), _stamp(paths[1]))  # before loading: a save after it shows as a change
    except OSError:
        stamp = ()  # ModelDir.load says what is missing
    main = ModelDir.load(paths[0])
    second = ModelDir.load(paths[1]) if paths[1] is not None else None
    if second is not None:
        infer.check_pair(main, second)
    a, n = main.arrays, len(main.arrays["movie_vectors"])
    counts, sums = np.bincount(a["rated_movie"], minlength=n), np.bincount(a["rated_movie"], a["rated_stars"], n)
    models = Models(main, second, stamp, counts, sums)
    if models.rating is not None:
        models.rating.predictor  # noqa: B018 -- created here, off the request path
    return models


class Holder:
    """The current `Models`, replaced whole by a background thread when a newer save appears."""

    def __init__(self, model_dir, rerank=None, interval: float = 2.0):
        self.paths = (Path(model_dir), Path(rerank) if rerank is not None else None)
        self.current = load_models(*self.paths)
        self.last_error: str | None = None
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True) if interval > 0 else None
        if self._thread is not None:
            self._thread.start()

    def check(self) -> bool:
        """Load a newer save if there is one; True when the models changed."""
        try:
            stamp = (_stamp(self.paths[0]), _stamp(self.paths[1]))
            if stamp == self.current.stamp:
                return False
            self.current = load_models(*self.paths)
            self.last_error = None
            return True
        except (OSError, RecsysError) as e:  # mid-swap or damaged: keep serving what we have
            self.last_error = str(e)
            return False

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def close(self) -> None:
        self._stop.set()
