"""Find a MovieLens archive on disk, or download it (mirror, MD5 check, atomic rename)."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from recsys.errors import RecsysError


@dataclass(frozen=True)
class Archive:
    """Where one MovieLens release lives and what it must contain."""

    name: str  # also the folder inside the zip
    members: tuple[str, ...]  # file names inside that folder
    zip_names: tuple[str, ...]  # names the zip may have on disk (first one is used for downloads)
    urls: tuple[str, ...]
    md5: str | None  # None: read the checksum published at url + ".md5"


ARCHIVES = {
    "ml-1m": Archive(
        name="ml-1m",
        members=("movies.dat", "users.dat", "ratings.dat"),
        zip_names=("ml-1m.zip", "movielens%2Fml-1m.zip"),
        urls=(
            "https://dataset.bj.bcebos.com/movielens%2Fml-1m.zip",
            "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        ),
        md5="c4d9eecfca2ab87c1945afe126590906",
    ),
    "ml-100k": Archive(
        name="ml-100k",
        members=("u.data", "u.item", "u.user", "u.genre", "u.occupation"),
        zip_names=("ml-100k.zip",),
        urls=("https://files.grouplens.org/datasets/movielens/ml-100k.zip",),
        md5=None,
    ),
}
GROUPLENS = "https://files.grouplens.org/datasets/movielens"
# the GroupLens CSV releases: <name>.zip holding <name>/ratings.csv and <name>/movies.csv (MD5 published beside it)
CSV_RELEASES = ("ml-latest-small", "ml-latest", "ml-20m", "ml-25m", "ml-32m")
for _name in CSV_RELEASES:
    ARCHIVES[_name] = Archive(
        _name, ("ratings.csv", "movies.csv"), (f"{_name}.zip",), (f"{GROUPLENS}/{_name}.zip",), None
    )
# your own CSV files: --data-dir DIR holding ratings.csv (and optionally movies.csv, users.csv); never downloaded
ARCHIVES["csv"] = Archive("csv", ("ratings.csv",), (), (), None)


def data_home() -> Path:
    """`$RECSYS_DATA_HOME`, else the folder where Paddle itself caches MovieLens."""
    home = Path(os.environ.get("RECSYS_DATA_HOME") or "~/.cache/paddle/dataset/movielens").expanduser()
    return Path(os.path.abspath(home))


def archive(dataset: str) -> Archive:
    try:
        return ARCHIVES[dataset]
    except KeyError:
        raise RecsysError(f"unknown dataset {dataset!r}; choose one of {', '.join(ARCHIVES)}") from None


def locate(dataset: str = "ml-1m", data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Path of the dataset's zip or extracted folder in `data_dir` (else the data home); download if absent."""
    arc = archive(dataset)
    if not arc.urls:
        return _own_folder(arc, data_dir)
    folder = Path(os.path.abspath(Path(data_dir).expanduser())) if data_dir else data_home()
    if data_dir and not folder.exists():  # a typo: never create it, never download into it
        raise RecsysError(
            f"--data-dir {data_dir} does not exist; give the folder that holds {arc.zip_names[0]} "
            f"(or leave --data-dir out to use, and download into, {data_home()})"
        )
    candidates = [folder / z for z in arc.zip_names] + [folder / arc.name, folder]
    for c in candidates:
        if c.is_file() or (c.is_dir() and (c.name == arc.name or (c / arc.members[0]).exists())):
            return c
    if not download:
        raise RecsysError(f"no {arc.zip_names[0]} or {arc.name}/ folder in {folder}")
    return fetch(arc, folder / arc.zip_names[0])


def _own_folder(arc: Archive, data_dir: str | os.PathLike | None) -> Path:
    """The folder of a layout that is never downloaded: it must be given, and hold the layout's first file."""
    if not data_dir:
        raise RecsysError(f"the {arc.name} layout needs --data-dir DIR, the folder that holds {arc.members[0]}")
    folder = Path(os.path.abspath(Path(data_dir).expanduser()))
    if not (folder / arc.members[0]).is_file():
        raise RecsysError(
            f"--data-dir {data_dir} has no {arc.members[0]} (the {arc.name} layout reads DIR/{arc.members[0]})"
        )
    return folder


def has_member(path: Path, dataset: str, member: str) -> bool:
    """Whether the dataset's zip or folder holds `member`."""
    if path.is_dir():
        return (path / member).is_file()
    try:
        with zipfile.ZipFile(path) as z:
            return f"{archive(dataset).name}/{member}" in z.NameToInfo
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, ValueError, OSError):
        return False


def read_member(path: Path, dataset: str, member: str) -> bytes:
    """Bytes of one file of the dataset, from its zip or extracted folder; one clear error when unreadable."""
    arc = archive(dataset)
    if path.is_dir():
        f = path / member
        if not f.is_file():
            raise RecsysError(f"{path} has no {member}; the {arc.name} folder is incomplete")
        return f.read_bytes()
    try:
        with zipfile.ZipFile(path) as z:
            return z.read(f"{arc.name}/{member}")
    except KeyError:
        raise RecsysError(f"{path} has no member {arc.name}/{member}; is it the {arc.name} archive?") from None
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, ValueError) as e:
        raise RecsysError(f"{path} is not a readable zip ({e}); delete it and run again to download it") from None
    except OSError as e:
        raise RecsysError(f"cannot read {path}: {e.strerror or e}") from None


def mirrors(arc: Archive) -> list[str]:
    """Download URLs: `$RECSYS_MIRROR/<zip>` when that variable is set, else the official ones."""
    base = os.environ.get("RECSYS_MIRROR")
    return [f"{base.rstrip('/')}/{arc.zip_names[0]}"] if base else list(arc.urls)


def fetch(arc: Archive, dest: Path) -> Path:
    """Download `arc` to `dest`, trying each mirror; verify its MD5; never leave a partial file."""
    problems = []
    for url in mirrors(arc):
        try:
            expected = arc.md5 or _published_md5(url)
            got = _download(url, dest, expected)
            if got == expected:
                return dest
            problems.append(f"{url}: MD5 {got} is not the expected {expected}")
        except (OSError, ValueError) as e:
            problems.append(f"{url}: {getattr(e, 'reason', None) or e}")
    raise RecsysError(
        f"could not download {arc.name} ({'; '.join(problems)}); "
        f"put {arc.zip_names[0]} in {dest.parent}, or give the folder that holds it with --data-dir DIR "
        "(make demo DATA_DIR=DIR)"
    )


def _published_md5(url: str) -> str:
    with urllib.request.urlopen(url + ".md5", timeout=30) as r:
        m = re.search(r"\b[0-9a-fA-F]{32}\b", r.read().decode("ascii", "replace"))
    if not m:
        raise ValueError(f"no checksum in {url}.md5")
    return m.group(0).lower()


def _download(url: str, dest: Path, expected_md5: str) -> str:
    """Stream `url` into a temp file beside `dest`; rename it into place only when its MD5 matches."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    md5 = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
        if md5.hexdigest() == expected_md5:
            os.replace(tmp, dest)
        return md5.hexdigest()
    finally:
        tmp.unlink(missing_ok=True)
