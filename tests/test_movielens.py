"""The reader: the chapter's facts, deterministic vocabularies, the vectorised path, and bad data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from recsys import movielens as ml
from recsys import synthetic
from recsys.data import fetch
from recsys.errors import RecsysError


def test_real_metadata_facts(real_meta_dir):
    d = real_meta_dir
    assert len(ml.get_movie_title_dict(d)) == 5174
    assert len(ml.movie_categories(d)) == 18
    assert ml.max_user_id(d) == 6040
    assert ml.max_movie_id(d) == 3952
    assert ml.max_job_id(d) == 20
    assert ml.user_info(d)[1].value() == [1, 1, 0, 10]
    assert str(ml.user_info(d)[1]) == "<UserInfo id(1), gender(F), age(1), job(10)>"
    assert (
        str(ml.movie_info(d)[1])
        == "<MovieInfo id(1), title(Toy Story ), categories(['Animation', \"Children's\", 'Comedy'])>"
    )


def test_movie_783_decodes_like_the_chapter(real_meta_dir):
    words = {i: w for w, i in ml.get_movie_title_dict(real_meta_dir).items()}
    cats = {i: c for c, i in ml.movie_categories(real_meta_dir).items()}
    mid, cat_ids, title_ids = ml.movie_info(real_meta_dir)[783].value()
    assert mid == 783
    assert [words[i] for i in title_ids] == ["hunchback", "of", "notre", "dame,", "the"]
    assert [cats[i] for i in cat_ids] == ["Animation", "Children's", "Musical"]


def test_first_training_sample(real_meta_dir):
    sample = next(ml.train(real_meta_dir)())
    assert sample[:5] == [1, 1, 0, 10, 1193]
    assert sample[-1] == [5.0]
    assert sample[5:7] == ml.movie_info(real_meta_dir)[1193].value()[1:]


def _chapter_counts(data_dir: Path) -> tuple[int, int]:
    """The chapter's rule written out independently: global seed 0, one np.random.random() per line."""
    with zipfile.ZipFile(data_dir / "ml-1m.zip") as z:
        lines = z.read("ml-1m/ratings.dat").decode("latin-1").splitlines()
    np.random.seed(0)
    test = sum(np.random.random() < 0.1 for _ in lines)
    return len(lines) - test, test


def test_split_counts_match_the_chapter_rule(real_meta_dir):
    n_train, n_test = _chapter_counts(real_meta_dir)
    assert sum(1 for _ in ml.train(real_meta_dir)()) == n_train
    assert sum(1 for _ in ml.test(real_meta_dir)()) == n_test
    data = ml.load(data_dir=real_meta_dir)
    assert (int((~data.is_test).sum()), int(data.is_test.sum())) == (n_train, n_test)


def test_labels_are_rating_times_two_minus_five(small_dir):
    data = ml.load(data_dir=small_dir)
    with zipfile.ZipFile(small_dir / "ml-1m.zip") as z:
        first = z.read("ml-1m/ratings.dat").decode().splitlines()[0].split("::")
    assert data.label[0, 0] == int(first[2]) * 2 - 5
    assert set(np.unique(data.label)) <= {-3.0, -1.0, 1.0, 3.0, 5.0}


def test_vocabulary_ids_do_not_depend_on_hash_seed(real_meta_dir):
    code = (
        "import json, sys; from recsys import movielens as ml; d = sys.argv[1]; "
        "print(json.dumps([ml.get_movie_title_dict(d), ml.movie_categories(d), ml.movie_info(d)[783].value()]))"
    )
    outs = []
    for seed in ("1", "12345"):
        proc = subprocess.run(
            [sys.executable, "-c", code, str(real_meta_dir)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        outs.append(json.loads(proc.stdout))
    assert outs[0] == outs[1]
    assert outs[0][0] == {w: i for i, w in enumerate(sorted(outs[0][0]))}


def test_vectorised_arrays_agree_with_generators(small_dir):
    data = ml.load(data_dir=small_dir)
    for is_test, reader in ((False, ml.train(small_dir)), (True, ml.test(small_dir))):
        idx = np.flatnonzero(data.is_test == is_test)
        feeds = data.tables.features(data.user[idx], data.movie[idx])
        samples = list(reader())
        assert len(samples) == len(idx)
        for j, s in enumerate(samples):
            assert s[:5] == [int(feeds[k][j]) for k in ml.FEED_NAMES[:5]]
            cats, title = feeds["category_id"][j], feeds["movie_title"][j]
            assert s[5] == cats[cats != len(data.meta.categories)].tolist()
            assert s[6] == title[title != len(data.meta.title_words)].tolist()
            assert s[7] == [float(data.label[idx[j], 0])]


def test_cache_is_written_beside_the_archive_and_refreshed(tmp_path):
    path = synthetic.write_ml1m(tmp_path, 5_000, seed=3)
    first = ml.load(data_dir=tmp_path)
    caches = list(tmp_path.glob("ml-1m.zip.*.npz"))
    assert len(caches) == 1
    again = ml.load(data_dir=tmp_path)
    np.testing.assert_array_equal(first.stars, again.stars)
    synthetic.write_ml1m(tmp_path, 4_000, seed=4)  # a new archive in place: the cache must not be reused
    os.utime(path, ns=(1, 1))
    assert len(ml.load(data_dir=tmp_path).stars) == 4_000


def test_read_only_archive_caches_in_data_home(tmp_path):
    src = tmp_path / "ro"
    synthetic.write_ml1m(src, 3_000, seed=5)
    src.chmod(0o555)  # marked read-only: respected even when running as root
    try:
        ml.load(data_dir=src)
        assert sorted(p.name for p in src.iterdir()) == ["ml-1m.zip"]
        assert list((fetch.data_home() / "cache").glob("*-ml-1m.zip.random.*.npz"))
    finally:
        src.chmod(0o755)


def test_extracted_folder_and_paddle_cache_name(tmp_path, small_dir):
    with zipfile.ZipFile(small_dir / "ml-1m.zip") as z:
        z.extractall(tmp_path / "extracted")
    from_zip = ml.load(data_dir=small_dir)
    from_folder = ml.load(data_dir=tmp_path / "extracted")
    np.testing.assert_array_equal(from_zip.movie, from_folder.movie)
    home = Path(os.environ["RECSYS_DATA_HOME"])
    shutil.copy(small_dir / "ml-1m.zip", home / "movielens%2Fml-1m.zip")
    try:
        assert ml.load().source == home / "movielens%2Fml-1m.zip"
    finally:
        (home / "movielens%2Fml-1m.zip").unlink()


@pytest.mark.parametrize(
    "member, content, needle",
    [
        ("ratings.dat", b"1::1::5::1\n1::oops::3::2\n", "ratings.dat line 2 is malformed"),
        ("ratings.dat", b"1::1::5::1\n1::99999::3::2\n", "unknown movie id 99999"),
        ("ratings.dat", b"1::1::9::1\n", "rating 9 outside 1..5"),
        ("users.dat", b"1::X::1::10::48067\n", "users.dat line 1 is malformed"),
        ("movies.dat", b"1::Toy Story (1995)\n", "movies.dat line 1 is malformed"),
    ],
)
def test_malformed_data_is_one_clear_error(tmp_path, small_dir, member, content, needle):
    with zipfile.ZipFile(small_dir / "ml-1m.zip") as src, zipfile.ZipFile(tmp_path / "ml-1m.zip", "w") as dst:
        for name in src.namelist():
            dst.writestr(name, content if name.endswith(member) else src.read(name))
    with pytest.raises(RecsysError, match=needle.replace("(", r"\(")):
        ml.load(data_dir=tmp_path)


def test_corrupt_zip_and_missing_member_through_the_cli(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ml-1m.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    proc = run_cli("recsys.train", "--data-dir", str(tmp_path / "bad"), "--model-dir", str(tmp_path / "m"))
    assert_one_line_error(proc, "not a readable zip", str(tmp_path / "bad" / "ml-1m.zip"))
    (tmp_path / "partial" / "ml-1m").mkdir(parents=True)
    (tmp_path / "partial" / "ml-1m" / "movies.dat").write_text("1::Toy Story (1995)::Comedy\n")
    (tmp_path / "partial" / "ml-1m" / "users.dat").write_text("1::F::1::10::48067\n")
    proc = run_cli("recsys.train", "--data-dir", str(tmp_path / "partial"), "--model-dir", str(tmp_path / "m"))
    assert_one_line_error(proc, "has no ratings.dat")
    assert not (tmp_path / "m").exists()


def test_no_network_is_one_clear_error_and_leaves_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli("recsys.train", "--data-dir", str(tmp_path / "empty"), "--model-dir", str(tmp_path / "m"))
    assert_one_line_error(proc, "could not download ml-1m", "with --data-dir DIR (make demo DATA_DIR=DIR)")
    assert list((tmp_path / "empty").glob("*")) == []


def test_download_with_wrong_md5_leaves_no_file(tmp_path, http_dir, small_dir, monkeypatch):
    root, url = http_dir
    shutil.copy(small_dir / "ml-1m.zip", root / "ml-1m.zip")  # a valid zip, but not the official one
    monkeypatch.setenv("RECSYS_MIRROR", url)
    dest = tmp_path / "dl"
    dest.mkdir()
    with pytest.raises(RecsysError, match="MD5 .* is not the expected c4d9eecfca2ab87c1945afe126590906"):
        ml.load(data_dir=dest)
    assert list(dest.iterdir()) == []


def test_download_checks_the_published_md5(tmp_path, http_dir, monkeypatch):
    import hashlib

    root, url = http_dir
    payload = b"pretend archive"
    (root / "ml-100k.zip").write_bytes(payload)
    (root / "ml-100k.zip.md5").write_text(f"MD5 (ml-100k.zip) = {hashlib.md5(payload).hexdigest()}\n")
    monkeypatch.setenv("RECSYS_MIRROR", url)
    (tmp_path / "dl").mkdir()
    got = fetch.locate("ml-100k", tmp_path / "dl")
    assert got.read_bytes() == payload
    (root / "ml-100k.zip.md5").write_text("MD5 (ml-100k.zip) = " + "0" * 32)
    with pytest.raises(RecsysError, match="MD5"):
        fetch.fetch(fetch.ARCHIVES["ml-100k"], tmp_path / "dl2" / "ml-100k.zip")
    assert list((tmp_path / "dl2").iterdir()) == []
