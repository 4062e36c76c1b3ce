"""The ranking network's sparse item-item model against EASE's dense weights computed here in NumPy, and the
sorted keys that stand in for a users x movies "rated" table."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.topn import neighbours
from recsys.topn.lists import contains, rating_keys


def _histories(seed: int, n_users: int = 40, n_movies: int = 12) -> tuple[np.ndarray, sp.csr_matrix]:
    x = np.random.RandomState(seed).random_sample((n_users, n_movies)) < 0.3
    x[:, 5] = False  # a movie nobody rated
    user, col = np.nonzero(x)
    return x, neighbours.history_matrix(n_users, n_movies, np.r_[user, user[:3]], np.r_[col, col[:3]])  # repeats


def _ease(x: np.ndarray, lam: float) -> np.ndarray:
    """EASE by its definition: P = (X'X + lam I)^-1, B = -P / diag(P), diag(B) = 0."""
    p = np.linalg.inv(x.T.astype(np.float64) @ x + lam * np.eye(x.shape[1]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def test_every_weight_kept_is_eases_dense_matrix():
    x, history = _histories(0)
    assert np.array_equal(history.toarray(), x.astype(np.float32))  # a repeated rating counts once
    got = neighbours.fit(history, k=100, lam=3.0).toarray()
    np.testing.assert_allclose(got, _ease(x, 3.0), rtol=1e-5, atol=1e-6)


def test_each_column_keeps_its_k_strongest_weights_of_either_sign():
    x, history = _histories(1)
    dense = _ease(x, 2.0)
    got = neighbours.fit(history, k=3, lam=2.0).toarray()
    for j in range(dense.shape[1]):
        strongest = np.lexsort((np.arange(len(dense)), -np.abs(dense[:, j])))[:3]  # ties: the smaller movie
        strongest = strongest[dense[strongest, j] != 0]
        want = np.zeros(len(dense))
        want[strongest] = dense[strongest, j]
        np.testing.assert_allclose(got[:, j], want, rtol=1e-5, atol=1e-6)
    assert (got < 0).any() and (got > 0).any()
    assert not got[:, 5].any() and not got[5].any()  # no one rated movie 5: no weight into or out of it


def test_a_capped_model_covers_the_most_rated_movies_only():
    x, history = _histories(2)
    counts = x.sum(0)
    top = np.sort(np.lexsort((np.arange(12), -counts))[:6])
    got = neighbours.fit(history, k=100, lam=1.0, max_items=6).toarray()
    np.testing.assert_allclose(got[np.ix_(top, top)], _ease(x[:, top], 1.0), rtol=1e-5, atol=1e-6)
    rest = np.setdiff1d(np.arange(12), top)
    assert not got[rest].any() and not got[:, rest].any()


def test_pair_scores_are_the_history_dotted_with_the_column():
    x, history = _histories(3)
    weights = neighbours.fit(history, k=4, lam=5.0)
    users, cols = np.array([0, 7, 7, 39, 0]), np.array([1, 2, 11, 0, 1])
    want = (x.astype(np.float64) @ weights.toarray())[users, cols]
    for w in (weights, weights.tocsc()):  # by row, or by column (as a loaded model and the trainer hold them)
        np.testing.assert_allclose(neighbours.scores(history, w, users, cols), want, rtol=1e-5, atol=1e-6)
    every = np.random.RandomState(3).permutation(40 * 12)  # every pair, users interleaved
    users, cols = every // 12, every % 12
    want = (x.astype(np.float64) @ weights.toarray())[users, cols]
    for w in (weights, weights.tocsc()):
        np.testing.assert_allclose(neighbours.scores(history, w, users, cols), want, rtol=1e-5, atol=1e-6)


def test_rated_keys_answer_what_a_dense_table_would():
    x, _ = _histories(4)
    user, col = np.nonzero(x)
    keys = rating_keys(user, col, x.shape[1])
    qu, qc = np.meshgrid(np.arange(x.shape[0]), np.arange(x.shape[1]), indexing="ij")
    got = contains(keys, qu.ravel() * x.shape[1] + qc.ravel())
    assert np.array_equal(got, x.ravel())
    assert not contains(keys[:0], np.array([0, 5])).any()
