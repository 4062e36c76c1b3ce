"""CSV layouts (GroupLens releases and your own files), the row mapping, the temporal split, bad CSV input and
the download of a CSV release; every expected value below is worked out by hand from the files written here."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from recsys import movielens as ml
from recsys import synthetic
from recsys.data import DATASETS
from recsys.errors import RecsysError

RATINGS = "userId,movieId,rating,timestamp\n1,10,4.0,100\n1,7,3.5,200\n1000000,10,0.5,50\n3,20,5.0,10\n"
MOVIES = (
    "movieId,title,genres\n"
    "7,Toy Story (1995),Adventure|Animation\n"
    '10,"American President, The (1995)",Comedy|Romance\n'
    "20,Unknown Film,(no genres listed)\n"
    "30,Never Rated (2001),Drama\n"
)
WORDS = ["american", "film", "never", "president,", "rated", "story", "the", "toy", "unknown"]


def _write(folder: Path, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.csv").write_text(text)
    return folder


def _release_zip(path: Path, name: str = "ml-latest-small", ratings: str = RATINGS, movies: str = MOVIES) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/ratings.csv", ratings)
        z.writestr(f"{name}/movies.csv", movies)
        z.writestr(f"{name}/links.csv", "movieId,imdbId,tmdbId\n")
    return path


def _check_release(data: ml.MovieLens) -> None:
    meta = data.meta
    np.testing.assert_array_equal(meta.user_ids, [0, 1, 3, 1000000])
    np.testing.assert_array_equal(meta.movie_ids, [-1, 7, 10, 20, 30])
    np.testing.assert_array_equal(data.user, [1, 1, 3, 2])
    np.testing.assert_array_equal(data.movie, [2, 1, 2, 3])
    assert data.user.dtype == data.movie.dtype == np.int64
    assert data.stars.dtype == np.float32 and data.stars.tolist() == [4.0, 3.5, 0.5, 5.0]
    assert data.label.tolist() == [[3.0], [2.0], [-4.0], [5.0]]
    assert data.timestamp.dtype == np.int64 and data.timestamp.tolist() == [100, 200, 50, 10]
    assert data.is_test.tolist() == [False] * 4  # seed 0's first four draws: .549 .715 .603 .545
    assert meta.features == {} and meta.users == {} and meta.jobs == []
    assert meta.categories == ["Adventure", "Animation", "Comedy", "Drama", "Romance"]
    assert meta.title_words == WORDS
    assert meta.feed_names() == ("user_id", "movie_id", "category_id", "movie_title")
    assert meta.known_users().tolist() == [1, 2, 3]
    assert (
        str(meta.movies[2]) == "<MovieInfo id(2), title(American President, The ), categories(['Comedy', 'Romance'])>"
    )
    assert meta.movies[3].value() == [3, [], [8, 1]]
    assert meta.display_title(1) == "Toy Story"
    assert data.tables.user.shape == (4, 0)
    assert data.tables.category.tolist() == [[5, 5], [0, 1], [2, 4], [5, 5], [3, 5]]
    assert data.tables.title.tolist() == [[9, 9, 9], [7, 5, 9], [0, 3, 6], [8, 1, 9], [2, 4, 9]]
    feeds = data.tables.features(data.user, data.movie)
    assert tuple(feeds) == meta.feed_names()
    assert feeds["category_id"].tolist() == [[2, 4], [0, 1], [2, 4], [5, 5]]
    assert data.tables.movie_features([3])["category_id"].tolist() == [[5]]
    assert data.sizes() == {
        "n_users": 4,
        "n_movies": 5,
        "n_categories": 5,
        "n_title_words": 9,
        "user_features": {},
    }
    assert meta.user_row([1000000, 3, 1, 2, 0]).tolist() == [3, 2, 1, -1, -1]
    assert meta.movie_row([30, 7, 8, -1]).tolist() == [4, 1, -1, -1]
    assert (meta.own_user(3), meta.own_movie(4)) == (1000000, 30)


def test_release_zip_folder_and_bare_folder_agree(tmp_path):
    _release_zip(tmp_path / "z" / "ml-latest-small.zip")
    _check_release(ml.load("ml-latest-small", tmp_path / "z"))
    _check_release(ml.load("ml-latest-small", tmp_path / "z"))  # again, from the cache
    assert sorted(p.name for p in (tmp_path / "z").iterdir()) == [
        "ml-latest-small.zip",
        "ml-latest-small.zip.meta.recsys-v4.npz",
        "ml-latest-small.zip.ratings.recsys-v4.npz",
    ]
    _check_release(ml.load("ml-25m", _write(tmp_path / "f" / "ml-25m", ratings=RATINGS, movies=MOVIES).parent))
    _check_release(ml.load("ml-32m", _write(tmp_path / "bare", ratings=RATINGS, movies=MOVIES)))
    _check_release(ml.load("csv", _write(tmp_path / "own", ratings=RATINGS, movies=MOVIES)))


def test_chapter_api_reads_a_release(tmp_path):
    folder = _write(tmp_path / "ml-latest", ratings=RATINGS, movies=MOVIES)
    assert list(ml.train(folder, dataset="ml-latest")()) == [
        [1, 2, [2, 4], [0, 3, 6], [3.0]],
        [1, 1, [0, 1], [7, 5], [2.0]],
        [3, 2, [2, 4], [0, 3, 6], [-4.0]],
        [2, 3, [], [8, 1], [5.0]],
    ]
    assert list(ml.test(folder, dataset="ml-latest")()) == []
    assert (ml.max_user_id(folder, "ml-latest"), ml.max_movie_id(folder, "ml-latest")) == (3, 4)
    assert ml.get_movie_title_dict(folder, "ml-latest") == {w: i for i, w in enumerate(WORDS)}


def test_own_csv_with_users_and_without_movies(tmp_path):
    folder = _write(
        tmp_path / "own",
        ratings="userId,movieId,rating,note\n42,700,2.5,x\n7,5,1,y\n42,5,4.5,z\n",
        users="userId,Country,gender\n42,FR,F\n99,DE,\n",
    )
    data = ml.load("csv", folder)
    meta = data.meta
    assert meta.features == {"country": ["", "DE", "FR"], "gender": ["", "F"]}
    np.testing.assert_array_equal(meta.user_ids, [0, 7, 42, 99])  # 99 rated nothing but is a user
    np.testing.assert_array_equal(meta.movie_ids, [-1, 5, 700])
    assert data.tables.user.tolist() == [[0, 0], [0, 0], [2, 1], [1, 0]]  # 7 is absent from users.csv: ""
    assert data.user.tolist() == [2, 1, 2] and data.movie.tolist() == [2, 1, 1]
    assert data.stars.tolist() == [2.5, 1.0, 4.5] and data.timestamp is None
    assert meta.categories == [] and meta.title_words == []
    assert meta.movies[2].title == "movie 700" and meta.movies[2].value() == [2, [], []]
    assert meta.feed_names() == ("user_id", "country_id", "gender_id", "movie_id")
    feeds = data.tables.features(data.user, data.movie)
    assert list(feeds) == list(meta.feed_names())
    assert feeds["country_id"].tolist() == [2, 0, 2] and feeds["gender_id"].tolist() == [1, 0, 1]
    assert data.sizes() == {
        "n_users": 4,
        "n_movies": 3,
        "n_categories": 0,
        "n_title_words": 0,
        "user_features": {"country": 3, "gender": 2},
    }
    assert meta.known_users().tolist() == [1, 2, 3]
    with pytest.raises(RecsysError, match="temporal split needs timestamps") as e:
        ml.load("csv", folder, split="temporal")
    assert "\n" not in str(e.value)


def test_edited_csv_is_read_again(tmp_path):
    folder = _write(tmp_path / "own", ratings="userId,movieId,rating\n1,1,3\n")
    assert ml.load("csv", folder).stars.tolist() == [3.0]
    (folder / "ratings.csv").write_text("userId,movieId,rating\n1,1,2\n2,1,5\n")
    os.utime(folder / "ratings.csv", ns=(1, 1))
    assert ml.load("csv", folder).stars.tolist() == [2.0, 5.0]


def test_temporal_split_by_hand(tmp_path):
    # user 1: 12 ratings -> (12+5)//10 = 1 test, the latest (ts 300). user 2: 15 ratings -> 2 test: three
    # share the latest ts 50, the last two in file order are the test ones. user 3: 5 -> 1 (0.5 rounds up);
    # user 4: 4 -> 0.
    rows = [(1, ts) for ts in (100, 300, 200, 50, 60, 70, 80, 90, 10, 20, 30, 40)]
    rows += [(2, 50)] + [(2, ts) for ts in range(1, 13)] + [(2, 50), (2, 50)]
    rows += [(3, ts) for ts in (9, 8, 7, 6, 5)] + [(4, ts) for ts in (1, 2, 3, 4)]
    order = [0, 12, 1, 13, 2, 14, 3, 15, 4, 16, 5, 17, 6, 18, 7, 19, 8, 20, 9, 21, 10, 22, 11, 23, 24, 25, 26]
    order += list(range(27, len(rows)))  # the users interleaved in the file
    rows = [rows[i] for i in order]
    text = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},3,{ts}\n" for i, (u, ts) in enumerate(rows))
    folder = _write(tmp_path / "t", ratings=text)
    data = ml.load("csv", folder, split="temporal")
    got = {
        (int(data.meta.own_user(u)), int(ts)) for u, ts in zip(data.user[data.is_test], data.timestamp[data.is_test])
    }
    assert got == {(1, 300), (2, 50), (3, 9)}
    assert int(data.is_test.sum()) == 4
    last_two_of_user2 = [i for i, (u, ts) in enumerate(rows) if u == 2 and ts == 50][1:]
    assert np.flatnonzero(data.is_test & (data.user == 2)).tolist() == last_two_of_user2
    val = ml.load("csv", folder, split="temporal:val")
    assert len(val.user) == len(rows) - 4
    got = {(int(val.meta.own_user(u)), int(ts)) for u, ts in zip(val.user[val.is_test], val.timestamp[val.is_test])}
    assert got == {(1, 200), (2, 50)}
    first_of_user2 = [i for i, (u, ts) in enumerate(rows) if u == 2 and ts == 50][0]
    assert np.flatnonzero(val.is_test & (val.user == 2)).tolist() == [first_of_user2]  # file order: no drops before it


def test_ml1m_keeps_its_schema_and_splits_by_time(tmp_path):
    synthetic.write_ml1m(tmp_path, 3_000, seed=7)
    data = ml.load(data_dir=tmp_path)
    meta = data.meta
    assert meta.feed_names() == ml.FEED_NAMES
    assert list(meta.features) == ["gender", "age", "job"] and meta.features["age"] == ml.AGE_GROUPS
    np.testing.assert_array_equal(meta.user_ids, np.arange(max(meta.users) + 1))
    np.testing.assert_array_equal(meta.movie_ids, np.arange(max(meta.movies) + 1))
    assert meta.known_users().tolist() == sorted(meta.users)
    assert data.stars.dtype == np.float32 and set(np.unique(data.stars)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert set(data.sizes()) == {"n_users", "n_ages", "n_jobs", "n_movies", "n_categories", "n_title_words"}
    temporal = ml.load(data_dir=tmp_path, split="temporal")
    counts = np.bincount(temporal.user)
    np.testing.assert_array_equal(
        np.bincount(temporal.user[temporal.is_test], minlength=len(counts)), (counts + 5) // 10
    )
    for u in np.unique(temporal.user)[:20]:  # no training rating is later than a test one of the same user
        mine = temporal.user == u
        if temporal.is_test[mine].any():
            assert (
                temporal.timestamp[mine & ~temporal.is_test].max() <= temporal.timestamp[mine & temporal.is_test].min()
            )


BAD = [
    ("ratings", "userId,movieId,rating,timestamp\n1,7,4,5\n1,7\n", "ratings.csv line 3 is malformed"),
    ("ratings", "userId,movieId,rating,timestamp\n1,7,4,5\n1,x,4,5\n", "ratings.csv line 3 is malformed"),
    ("ratings", "userId,movieId,rating,timestamp\n1,7,5.5,5\n", "ratings.csv line 2 has rating 5.5"),
    ("ratings", "userId,movieId,rating,timestamp\n1,7,4,5\n\n1,7,3.3,5\n", "ratings.csv line 4 has rating 3.3"),
    ("ratings", "userId,movieId,rating,timestamp\n1,7,0,5\n", "ratings.csv line 2 has rating 0"),
    ("ratings", "userId,movieId,rating,timestamp\n1,7,4,5\nuserId,movieId,rating,timestamp\n", "line 3 is malformed"),
    ("ratings", "userId,movieId,timestamp\n1,7,5\n", "ratings.csv line 1 has no column 'rating'"),
    ("ratings", "userId,movieId,rating,timestamp\n1,7,4,5\n1,8,4,5\n", "ratings.csv line 3 has movie id 8"),
    ("ratings", "userId,movieId,rating,timestamp\n1,7,,5\n", "ratings.csv line 2 has no rating"),
    ("movies", "movieId,title,genres\n7,Toy Story (1995),Comedy\nseven,Heat (1995),Action\n", "movies.csv line 3"),
    ("movies", "movieId,title,genres\n7,Toy Story (1995),Comedy\n7,Heat (1995),Action\n", "movies.csv line 3 repeats"),
    ("users", "userId,country\n1,FR\n1,DE\n", "users.csv line 3 repeats user id 1"),
    ("users", "userId,user\n1,FR\n", "users.csv line 1"),
]


@pytest.mark.parametrize("member, text, needle", BAD)
def test_bad_csv_is_one_line_naming_file_and_line(tmp_path, member, text, needle):
    files = {"ratings": "userId,movieId,rating,timestamp\n1,7,4,5\n", "movies": "movieId,title,genres\n7,A (1),B\n"}
    folder = _write(tmp_path / "own", **(files | {member: text}))
    with pytest.raises(RecsysError) as e:
        ml.load("csv", folder)
    assert needle in str(e.value) and str(folder) in str(e.value) and "\n" not in str(e.value)


def test_bad_line_in_a_release_zip_names_the_zip(tmp_path):
    _release_zip(tmp_path / "ml-20m.zip", "ml-20m", ratings=RATINGS + "1,7,abc,1\n")
    with pytest.raises(RecsysError, match=r"ml-20m\.zip: ratings\.csv line 6 is malformed"):
        ml.load("ml-20m", tmp_path)


def test_csv_errors_through_the_cli(tmp_path):
    proc = run_cli("recsys.train", "--dataset", "csv", "--model-dir", str(tmp_path / "m"))
    assert_one_line_error(proc, "the csv layout needs --data-dir DIR")
    folder = _write(tmp_path / "own", ratings="userId,movieId,rating\n1,1,4\n")
    proc = run_cli("recsys.train", "--dataset", "csv", "--data-dir", str(folder), "--split", "temporal")
    assert_one_line_error(proc, "the temporal split needs timestamps")
    assert not (tmp_path / "m").exists()


def test_every_layout_is_known():
    assert set(DATASETS) == {"ml-1m", "ml-100k", "ml-latest-small", "ml-latest", "ml-20m", "ml-25m", "ml-32m", "csv"}
    assert set(ml.SPLITS) == set(DATASETS) and all("temporal" in s for s in ml.SPLITS.values())


def test_release_download_checks_the_published_md5(tmp_path, http_dir, monkeypatch):
    root, url = http_dir
    payload = _release_zip(root / "ml-latest-small.zip").read_bytes()
    (root / "ml-latest-small.zip.md5").write_text(f"MD5 (ml-latest-small.zip) = {hashlib.md5(payload).hexdigest()}\n")
    monkeypatch.setenv("RECSYS_MIRROR", url)
    dest = tmp_path / "dl"
    dest.mkdir()
    _check_release(ml.load("ml-latest-small", dest))
    assert (dest / "ml-latest-small.zip").read_bytes() == payload
    (root / "ml-latest-small.zip.md5").write_text("MD5 (ml-latest-small.zip) = " + "0" * 32 + "\n")
    (tmp_path / "dl2").mkdir()
    with pytest.raises(RecsysError, match=f"MD5 {hashlib.md5(payload).hexdigest()} is not the expected 0{{32}}") as e:
        ml.load("ml-latest-small", tmp_path / "dl2")
    assert "\n" not in str(e.value)
    assert list((tmp_path / "dl2").iterdir()) == []
