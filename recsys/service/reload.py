"""The model dirs a long-running server answers from, reloaded whole when a training run saves a newer one."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from recsys.errors import RecsysError
from recsys.recommender import Recommender


def _stamp(path: Path | None) -> tuple:
    """What changes when a save swaps the dir in: its inode and its manifest's (or meta's) mtime."""
    if path is None:
        return ()
    st = os.stat(path)
    inner = path / "manifest.json" if (path / "manifest.json").exists() else path / "meta.json"
    return (st.st_ino, os.stat(inner).st_mtime_ns)


def load(paths: tuple[Path, Path | None], candidates: int | None, search: str) -> tuple[Recommender, tuple]:
    """Load and check the pair, and build the predictor, the history models' networks and read the index now,
    before any request needs them; with the stamp of what was loaded."""
    try:
        stamp = (_stamp(paths[0]), _stamp(paths[1]))  # before loading: a save after it shows as a change
    except OSError:
        stamp = ()  # ModelDir.load says what is missing
    rec = Recommender.load(paths[0], paths[1], candidates, search)
    rec.warm()
    return rec, stamp


class Holder:
    """The current `Recommender`, replaced whole by a background thread when a newer save appears."""

    def __init__(self, model_dir, rerank=None, interval: float = 2.0, candidates: int | None = None, search="auto"):
        self.paths = (Path(model_dir), Path(rerank) if rerank is not None else None)
        self.candidates, self.search = candidates, search
        self.current, self.stamp = load(self.paths, candidates, search)
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
            if stamp == self.stamp:
                return False
            self.current, self.stamp = load(self.paths, self.candidates, self.search)
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
