"""The rating indices a run trains, validates and tests on: the validation rule and the ranker's held-out share."""

from __future__ import annotations

import numpy as np

from recsys.data.loader import ALL
from recsys.errors import RecsysError
from recsys.movielens import MovieLens


def carve(idx: np.ndarray, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The validation rule: a seeded share `val_ratio` of the ratings `idx` (rounded) is the validation slice.
    Returns the rest and the slice, each sorted."""
    n_val = int(round(len(idx) * val_ratio))
    shuffled = np.random.RandomState(seed + 1).permutation(idx)
    return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val])


def split_indices(data: MovieLens, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training, validation (carved from the training split, never the test split) and test rating indices (none
    for the all split)."""
    train_idx, test_idx = np.flatnonzero(~data.is_test), np.flatnonzero(data.is_test)
    if len(train_idx) == 0 or (len(test_idx) == 0 and data.split != ALL):
        which = "training" if len(train_idx) == 0 else "test"
        raise RecsysError(f"{data.source}: the {data.split} split leaves no {which} ratings")
    return (*carve(train_idx, val_ratio, seed), test_idx)


def holdout_mask(n: int, train_idx: np.ndarray, share: float, seed: int) -> np.ndarray:
    """[n] bool: the training ratings held out for the ranker (a seeded `share` of `train_idx`)."""
    mask = np.zeros(n, bool)
    if share > 0:
        pick = np.random.RandomState(seed + 2).random_sample(len(train_idx)) < share
        mask[train_idx[pick]] = True
    return mask
