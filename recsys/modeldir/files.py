"""A model dir's files as one save: every file opened at once, each checked against the manifest."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

from recsys.errors import RecsysError

MANIFEST = "manifest.json"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def damaged(path: Path, name: str, why: str) -> RecsysError:
    return RecsysError(f"model dir {path} is damaged: {name} ({why}); train again: python -m recsys.train")


class Files:
    """Every file of one model dir, opened at once: later reads see this save even if the dir is swapped."""

    def __init__(self, path: Path):
        self.path = path
        self.open: dict[str, io.BufferedReader] = {}
        self.expected: dict[str, dict] | None = None  # from the manifest; None for a dir saved before it
        self.verified: set[str] = set()
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.inode = os.fstat(dir_fd).st_dev, os.fstat(dir_fd).st_ino
            for name in os.listdir(dir_fd):
                try:
                    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
                except IsADirectoryError:
                    continue
                f = open(fd, "rb")
                if os.fstat(fd).st_mode & 0o170000 == 0o100000:  # a regular file
                    self.open[name] = f
                else:
                    f.close()
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        for f in self.open.values():
            f.close()

    def check(self, meta: dict) -> None:
        """Against the manifest: every file present with its size (hashes wait for each file's first read)."""
        if MANIFEST not in self.open:
            if meta.get("manifest"):
                raise damaged(self.path, MANIFEST, "missing")
            notice = f"notice: model dir {self.path} has no manifest (saved by an older recsys); files not checked"
            print(notice, file=sys.stderr)
            return
        for name, want in self.expected.items():
            if name not in self.open:
                raise damaged(self.path, name, "missing")
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
            raise damaged(self.path, name, "missing")
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
        try:
            with np.load(io.BytesIO(self.read(name)), allow_pickle=False) as z:
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
