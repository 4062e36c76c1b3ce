"""A model dir's files as one save: every file opened at once, each checked against the manifest."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import sys
import zipfile
from pathlib import Path

import numpy as np

from recsys.errors import RecsysError
from recsys.modeldir import checks

MANIFEST = "manifest.json"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def damaged(path: Path, name: str, why: str) -> RecsysError:
    return RecsysError(f"model dir {path} is damaged: {name} ({why}); train again: python -m recsys.train")


def _kind(mode: int) -> str:
    """What a directory entry that is not a regular file is, for a message."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))  # fmt: skip
    return next((f"{what}, not a file" for test, what in kinds if test(mode)), "not a regular file")


def _open_file(name: str, dir_fd: int) -> io.BufferedReader | str:
    """The regular file `name` in the dir open as `dir_fd`, opened for reading (a symlink followed); else what
    it is instead, in words. Nothing else is ever opened (a FIFO would block, a device act on being opened),
    and no descriptor outlives a refusal."""
    try:
        mode = os.stat(name, dir_fd=dir_fd).st_mode
        if not stat.S_ISREG(mode):
            return _kind(mode)
        # O_NONBLOCK: should the entry turn into a FIFO between the stat and the open, the open cannot hang
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:  # a symlink loop or a broken one, no permission, gone since the listing
        return "a symlink loop" if e.errno == errno.ELOOP else f"cannot be opened: {e.strerror or e}"
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return _kind(mode)
        os.set_blocking(fd, True)
        f, fd = open(fd, "rb"), None  # the file object owns the descriptor now
        return f
    finally:
        if fd is not None:
            os.close(fd)


class Files:
    """Every file of one model dir, opened at once: later reads see this save even if the dir is swapped.
    Only regular files are opened; other entries (a subfolder such as `.ipynb_checkpoints/`, a FIFO) are
    ignored unless the manifest names them, which makes the dir damaged."""

    def __init__(self, path: Path):
        self.path = path
        self.open: dict[str, io.BufferedReader] = {}
        self.other: dict[str, str] = {}  # entries that are no regular file: name -> what they are instead
        self.expected: dict[str, dict] | None = None  # from the manifest; None for a dir saved before it
        self.verified: set[str] = set()
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            st = os.fstat(dir_fd)
            self.inode = st.st_dev, st.st_ino
            for name in os.listdir(dir_fd):
                f = _open_file(name, dir_fd)
                if isinstance(f, str):
                    self.other[name] = f
                else:
                    self.open[name] = f
        except BaseException:
            self.close()
            raise
        finally:
            os.close(dir_fd)

    def missing(self, name: str) -> RecsysError:
        """The error for a file this dir should have and has not (or has as something else)."""
        return damaged(self.path, name, self.other.get(name, "missing"))

    def close(self) -> None:
        for f in self.open.values():
            f.close()

    def check(self, meta: dict) -> None:
        """Against the manifest: every file present with its size (hashes wait for each file's first read)."""
        if MANIFEST not in self.open:
            if meta.get("manifest"):
                raise self.missing(MANIFEST)
            notice = f"notice: model dir {self.path} has no manifest (saved by an older recsys); files not checked"
            print(notice, file=sys.stderr)
            return
        for name, want in self.expected.items():
            if name not in self.open:
                raise self.missing(name)
            size = os.fstat(self.open[name].fileno()).st_size
            if size != want["size"]:
                raise damaged(self.path, name, f"size {size}, expected {want['size']}")

    def read_manifest(self) -> None:
        if MANIFEST not in self.open:
            return
        try:
            doc = json.loads(self.open[MANIFEST].read())
            self.expected = {
                str(k): {"size": int(v["size"]), "sha256": str(v["sha256"])} for k, v in doc["files"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            raise damaged(self.path, MANIFEST, "unreadable") from None

    def read(self, name: str) -> bytes:
        """The whole file, checked against its manifest entry."""
        if name not in self.open:
            raise self.missing(name)
        f = self.open[name]
        f.seek(0)
        data = f.read()
        if self.expected is not None and name not in self.verified:
            want = self.expected.get(name)
            if want is None:
                raise damaged(self.path, name, "not in the manifest")
            if len(data) != want["size"]:
                raise damaged(self.path, name, f"size {len(data)}, expected {want['size']}")
            if sha256_hex(data) != want["sha256"]:
                raise damaged(self.path, name, "checksum mismatch")
            self.verified.add(name)
        return data

    def json(self, name: str):
        try:
            return json.loads(self.read(name))
        except (ValueError, UnicodeDecodeError):
            raise damaged(self.path, name, "unreadable") from None

    def npz(self, name: str) -> dict[str, np.ndarray]:
        """Every array of the npz file, once its members are known to unpack to no more than it holds."""
        data = self.read(name)
        try:
            checks.npz_members(data)
        except checks.Bad as e:
            raise damaged(self.path, name, str(e)) from None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            raise damaged(self.path, name, "unreadable") from None


def still_at(path: Path, where: Path, files: Files) -> bool:
    """Whether the files just opened from `where` are one whole save: the dir is still there, and, when it
    was `.NAME.previous`, `path` is still missing (a save removes `.NAME.previous` only after that)."""
    try:
        st = os.stat(where)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == files.inode and (where == path or not path.exists())
