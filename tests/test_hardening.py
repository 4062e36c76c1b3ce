"""What a careless user or an attacker can put in the way: odd entries in a model dir, a model dir edited with
a matching manifest, a damaged ratings database, a trainer stopped by SIGTERM, two trainers at once, a flag
abbreviated, a dependency missing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from recsys.modeldir import ModelDir
from recsys.modeldir import save as modelsave

TOP3 = ["--user", "1", "--top-k", "3"]


@pytest.fixture
def model(one_epoch) -> Path:
    """One epoch on the small archive (conftest's, trained once for the session)."""
    return one_epoch


@pytest.fixture
def work(model, tmp_path) -> Path:
    """A copy of the model dir to spoil."""
    out = tmp_path / "work"
    shutil.copytree(model, out)
    return out


def _infer(model_dir: Path, *flags: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m recsys.infer` on this dir; a run that hangs (a FIFO opened for reading) fails the test."""
    return subprocess.run([sys.executable, "-m", "recsys.infer", "--model-dir", str(model_dir), *(flags or TOP3)],
                          capture_output=True, text=True, timeout=60, cwd=cwd)  # fmt: skip


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _replace(path: Path, kind: str) -> None:
    """Put something that is not a regular file where `path` was."""
    path.unlink()
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink loop":
        os.symlink(path.name, path)
    else:  # a device
        os.symlink("/dev/zero", path)


# model-dir entries that are no regular file


def test_a_subfolder_and_a_fifo_the_manifest_does_not_list_are_ignored(model, work):
    (work / ".ipynb_checkpoints").mkdir()
    (work / ".ipynb_checkpoints" / "meta-checkpoint.json").write_text("{}")
    os.mkfifo(work / "stray.fifo")
    proc = _infer(work)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout == _infer(model).stdout


@pytest.mark.parametrize("kind, what", [("fifo", "a FIFO, not a file"), ("folder", "a folder, not a file"),
                                        ("symlink loop", "a symlink loop"),
                                        ("device", "a character device, not a file")])  # fmt: skip
@pytest.mark.parametrize("name", ["meta.json", "arrays.npz"])
def test_a_fifo_folder_device_or_symlink_loop_where_the_manifest_expects_a_file_is_one_line(work, name, kind, what):
    _replace(work / name, kind)
    assert_one_line_error(_infer(work), f"model dir {work} is damaged: {name} ({what})")


def test_a_folder_of_model_dirs_or_dot_is_one_line_naming_them(model, tmp_path):
    shelf = tmp_path / "shelf"
    for name in ("first", "second"):
        shutil.copytree(model, shelf / name)
    (shelf / "notes").mkdir()
    needle = "is not a model dir but holds model dirs (first, second); give one of them as --model-dir"
    assert_one_line_error(_infer(shelf), f"{shelf} {needle}")
    assert_one_line_error(_infer(Path("."), cwd=shelf), f". {needle}")
    assert_one_line_error(_infer(Path("."), cwd=shelf / "notes"), "no trained model in .; train first")


def test_fifty_reloads_of_a_bad_dir_keep_the_descriptors_and_say_what_is_wrong(work):
    from recsys.service.reload import Holder

    holder = Holder(work, interval=0)
    try:
        _replace(work / "metrics.json", "folder")
        holder.stamp = ()  # the next check loads again
        assert holder.check() is False
        before = _fds()
        for _ in range(50):
            holder.stamp = ()
            assert holder.check() is False
        assert _fds() == before
        assert holder.last_error == f"model dir {work} is damaged: metrics.json (a folder, not a file); train again: " \
                                    "python -m recsys.train"  # fmt: skip
        (work / "metrics.json").rmdir()
        os.mkfifo(work / "metrics.json")
        done = threading.Event()
        threading.Thread(target=lambda: (holder.check(), done.set()), daemon=True).start()
        assert done.wait(60), "a reload hangs on a FIFO"
        assert "metrics.json (a FIFO, not a file)" in holder.last_error and "\n" not in holder.last_error
    finally:
        holder.close()


# a model dir edited together with its manifest


def _edit(work: Path, name: str = "arrays.npz", **changes) -> None:
    """Change arrays of an npz and write the manifest again, as a careful forger would."""
    with np.load(work / name) as z:
        arrays = {k: z[k] for k in z.files}
    for key, change in changes.items():
        arrays[key] = change(arrays[key])
    np.savez(work / name, **arrays)
    _remanifest(work)


def _remanifest(work: Path) -> None:
    (work / "manifest.json").unlink()
    modelsave.write_manifest(work)


def _out_of_range(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flat[len(a.flat) // 2] = 10**6
    return a


@pytest.mark.parametrize(
    "key, change, needle",
    [
        ("rated_movie", _out_of_range, "rated_movie holds ids outside 0..400"),
        ("movie_category", _out_of_range, "movie_category holds ids outside 0..18"),
        ("user_table", _out_of_range, "user_table holds values of feature"),
        ("user_vectors", lambda a: a[:-1], "user_vectors has shape [600, 200], expected 601 x N"),
        ("movie_vectors", lambda a: a[:, :-1], "movie_vectors has shape [401, 199], expected 401 x 200"),
        ("rated_indptr", lambda a: a.astype(np.float32), "rated_indptr is float32 [602], expected int"),
        ("rated_stars", lambda a: a[:-5], "rated_stars has shape"),
    ],
)
def test_arrays_of_the_wrong_shape_kind_or_range_are_one_line(work, key, change, needle):
    _edit(work, **{key: change})
    assert_one_line_error(_infer(work), f"model dir {work} is damaged: arrays.npz ({needle}")


def test_parameters_of_another_shape_are_one_line_not_random_weights(work):
    from recsys.errors import RecsysError

    _edit(work, "params.npz", **{"user_tower.fc.weight": lambda a: a[:, :10]})
    md = ModelDir.load(work)
    with pytest.raises(RecsysError) as e:
        md.network  # noqa: B018 -- what answers new users and histories that no saved vector covers
    needle = "params.npz (user_tower.fc.weight is float32 [80, 10], expected [80, 200])"
    assert str(e.value) == f"model dir {work} is damaged: {needle}; train again: python -m recsys.train"


def test_a_catalogue_movie_outside_the_arrays_is_one_line(work):
    meta = json.loads((work / "meta.json").read_text())
    meta["movies"]["5000"] = ["Nowhere (2000)", ["Drama"]]
    (work / "meta.json").write_text(json.dumps(meta))
    _remanifest(work)
    assert_one_line_error(_infer(work), "meta.json's movies are not rows 0..400")


def _npy(shape: tuple, body: bytes) -> bytes:
    """A .npy file of float32 `shape` whose data is `body` (which need not fill it)."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + body


def test_an_npz_member_whose_header_promises_terabytes_is_one_line(work):
    with zipfile.ZipFile(work / "arrays.npz", "a") as z:
        z.writestr("huge.npy", _npy((10**12,), b"\0" * 64))
    _remanifest(work)
    assert_one_line_error(_infer(work), "arrays.npz (member huge.npy declares 4000000000000 bytes")


def _bomb(member: str, size: int) -> bytes:
    """An npz of one deflated member: a float32 .npy of `size` zero bytes (a multiple of 1 MiB), a few MiB in all.
    After a full flush the compressor starts afresh, so every MiB of zeros compresses to the same block."""
    npy, mib = _npy((size // 4,), b""), b"\0" * 2**20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(npy) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    stream = head + block * (size // 2**20) + c.flush()
    crc = zlib.crc32(npy)
    for _ in range(size // 2**20):
        crc = zlib.crc32(mib, crc)
    name, sizes = member.encode(), (crc, len(stream), len(npy) + size)
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0x21, *sizes, len(name), 0) + name
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, *sizes, len(name), 0, 0, 0, 0, 0, 0)
    central += name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(stream), 0)
    return local + stream + central + end


def test_an_npz_that_unpacks_to_gigabytes_is_one_line(work):
    bomb = _bomb("user_table.npy", 3 * 2**30)
    with zipfile.ZipFile(io.BytesIO(bomb)) as z:  # a well-formed zip that says what it unpacks to
        assert z.infolist()[0].file_size > 3 * 10**9 and len(bomb) < 4 * 2**20
    (work / "arrays.npz").write_bytes(bomb)
    _remanifest(work)
    assert_one_line_error(_infer(work), "arrays.npz (member user_table.npy is compressed")


# the ratings database


def _store(path: Path, n_users: int = 200) -> None:
    """A ratings database as the service leaves it, with n_users x 100 ratings (a few hundred KiB)."""
    from recsys.data.store import RatingsStore

    RatingsStore(path, "ml-1m").close()
    with sqlite3.connect(path) as con:
        rows = [(u, m, 4.0, 1.0) for u in range(1, n_users + 1) for m in range(1, 101)]
        con.executemany("INSERT INTO ratings (user_id, movie_id, rating, at) VALUES (?, ?, ?, ?)", rows)
    con.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_database_damaged_in_its_middle_is_refused_and_left_as_it_was(model, tmp_path):
    from recsys.data.store import RatingsStore
    from recsys.errors import RecsysError

    db = tmp_path / "ratings.db"
    _store(db)
    assert RatingsStore(db, "ml-1m").snapshot().user.size == 20_000  # whole, it opens
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.seek(size // 2)
        f.write(np.random.default_rng(0).bytes(8192))
    before = _sha256(db)
    with pytest.raises(RecsysError) as e:
        RatingsStore(db, "ml-1m")
    assert str(e.value).startswith(f"ratings database {db} ") and "\n" not in str(e.value), e.value
    assert "left untouched" in str(e.value)
    proc = run_cli("recsys.serve", "--model-dir", str(model), "--ratings-db", str(db), "--port", "1")
    assert_one_line_error(proc, f"ratings database {db} ", "left untouched")
    assert _sha256(db) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ratings.db"]


def test_the_database_and_its_wal_files_are_created_for_their_owner_only(tmp_path):
    from recsys.data.store import RatingsStore

    old = os.umask(0o022)
    try:
        store = RatingsStore(tmp_path / "ratings.db", "ml-1m")
        store.rate(1, 1, 4.0)
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()}
        store.close(every_thread=True)
    finally:
        os.umask(old)
    assert modes == {"ratings.db": "0o600", "ratings.db-wal": "0o600", "ratings.db-shm": "0o600"}


# the commands


@pytest.mark.parametrize("module, install", [("numpy", 'pip install -e "."'), ("numba", 'pip install -e "."'),
                                             ("paddle", 'pip install -e ".[cpu]"')])  # fmt: skip
def test_a_missing_dependency_is_one_line_with_the_install_command(model, tmp_path, module, install):
    (tmp_path / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None  # not installed\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli("recsys.infer", "--model-dir", str(model), "--user", "1", "--movie", "5", env=env)
    assert_one_line_error(proc, f"(no module named {module!r})", install)


def test_sigterm_stops_training_as_ctrl_c_does_and_keeps_the_saved_model(small_dir, tmp_path):
    model = tmp_path / "model"
    cmd = [sys.executable, "-m", "recsys.train", "--data-dir", str(small_dir), "--model-dir", str(model),
           "--epochs", "100", "--batch-size", "4096", "--save-every-epoch"]  # fmt: skip
    trainer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in trainer.stdout:  # epoch 1 was saved before epoch 2 ends
            if line.startswith("EpochID 2"):
                break
    finally:
        trainer.send_signal(signal.SIGTERM)
        _out, err = trainer.communicate(timeout=120)
    assert trainer.returncode == 2 and err.strip().splitlines() == ["error: interrupted"], err
    md = ModelDir.load(model)
    for name in md.files.expected:
        md.files.read(name)  # each file whole: its size and SHA-256 as the manifest has them
    assert md.checkpoint()[0]["epoch"] >= 1
    assert not (tmp_path / ".model.lock").exists() and not (tmp_path / ".model.previous").exists()


def test_ctrl_c_during_a_swap_takes_effect_once_the_new_dir_is_in(model, tmp_path, monkeypatch):
    path, new = tmp_path / "model", tmp_path / ".model.1.tmp"
    shutil.copytree(model, path)
    shutil.copytree(model, new)
    (new / "saved").write_text("the new save")
    replace = os.replace

    def interrupted(src, dst):  # Ctrl-C just as the old dir is renamed away
        replace(src, dst)
        if dst.name == ".model.previous":  # to this thread: a process-wide signal may land on another one first
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", interrupted)
    # Ctrl-C as a shell delivers it: Python's handler, SIGINT not blocked (whatever a test before left in this
    # worker's thread)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        with pytest.raises(KeyboardInterrupt):
            modelsave._swap(new, path)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGINT, handler)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"] and (path / "saved").exists()


def test_a_second_trainer_is_refused_before_it_loads_its_data(tmp_path):
    from recsys.training.lock import locked

    model = tmp_path / "model"
    empty = tmp_path / "no-data"  # loading it would fail: the refusal must come first
    empty.mkdir()
    with locked(model):
        proc = run_cli("recsys.train", "--data-dir", str(empty), "--model-dir", str(model), "--epochs", "1")
    assert_one_line_error(proc, f"{model} is being trained by process {os.getpid()}")


def test_resume_where_no_run_saved_says_what_happened_and_how_to_start(small_dir, tmp_path):
    model = tmp_path / "model"
    proc = run_cli("recsys.train", "--data-dir", str(small_dir), "--model-dir", str(model), "--resume")
    assert_one_line_error(proc, f"--resume: nothing to resume in {model}: no run has saved a checkpoint there",
                          "start again without --resume")  # fmt: skip


def test_abbreviated_flags_are_refused(capsys):
    from recsys import evaluate, infer, serve, synthetic, train

    cases = [(train.parse_args, ["--epoch", "1"]), (infer.main, ["--top", "3"]), (evaluate.main, ["--model", "m"]),
             (serve.main, ["--model", "m"]), (synthetic.main, ["--rating", "10"])]  # fmt: skip
    for parse, argv in cases:
        with pytest.raises(SystemExit) as e:
            parse(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(f"error: unrecognized arguments: {argv[0]}"), err
        assert len(err.splitlines()) == 1, err


def test_the_readmes_ratings_files_are_ignored_by_git():
    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    names = ["ratings.db", "ratings.db-wal", "ratings.db-shm", "write.token"]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *names], cwd=root, capture_output=True, text=True)
    assert proc.stdout.split() == names, proc.stdout
