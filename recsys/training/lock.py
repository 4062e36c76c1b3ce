"""One trainer per model dir: an exclusive lock on `.NAME.lock` beside it."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from recsys.errors import RecsysError

_HELD: set[Path] = set()  # the locks this process holds, by their file's path


@contextlib.contextmanager
def locked(path: str | os.PathLike):
    """Make this process the model dir's only trainer while the block runs: an exclusive lock on
    `.NAME.lock` beside it, which names our pid, removed when the block ends. The kernel drops the lock when
    the process ends, however it ends, so a lock file left by a killed process is simply taken. Inside a block
    that holds it already, the lock is simply kept."""
    path = Path(path)
    where = path.with_name(f".{path.name}.lock")
    if where.absolute() in _HELD:
        yield
        return
    while True:
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(where, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RecsysError(f"cannot write the model dir {path}: {e.strerror or e} ({where.parent})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RecsysError(
                f"{path} is being trained by process {owner}; wait for it to finish or choose another --model-dir"
            ) from None
        if _same_file(where, fd):
            break
        os.close(fd)  # the trainer before us removed that file as we opened it: lock the one at `where` now
    _HELD.add(where.absolute())
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        _HELD.discard(where.absolute())
        with contextlib.suppress(OSError):
            where.unlink()  # still holding the lock, so no other trainer has it
        os.close(fd)


def _same_file(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
