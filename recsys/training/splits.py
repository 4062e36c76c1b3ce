"""The rating indices a run trains, validates and tests on: the validation rule and the ranker's held-out share."""

from __future__ import annotations

import numpy as np

from recsys.data.loader import ALL, VALIDATION, latest_mask
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


HOLDOUT_BY = ("split", "random", "time")  # `--holdout-by`; split: time on a temporal split, else random


def holdout_rule(by: str, split: str) -> str:
    """The held-out share's rule for `--holdout-by by` on the split `split`: "random" or "time" ("split": the
    rule of the split's own test ratings, time on a temporal split)."""
    if by == "split":
        return "time" if split.removesuffix(VALIDATION) == "temporal" else "random"
    return by


def holdout_mask(data: MovieLens, train_idx: np.ndarray, share: float, seed: int, by: str = "random") -> np.ndarray:
    """[n] bool: the training ratings held out for the ranker: a seeded `share` of `train_idx` ("random"), or
    each user's latest `share` of their ratings in `train_idx` by timestamp, rounded half up ("time")."""
    mask = np.zeros(len(data.user), bool)
    if share <= 0:
        return mask
    if by == "time":
        if data.timestamp is None:
            raise RecsysError(f"{data.source}: --holdout-by time needs timestamps, and the ratings have none")
        user = data.user[train_idx]
        take = np.floor(np.bincount(user) * share + 0.5).astype(np.int64)
        mask[train_idx[latest_mask(user, data.timestamp[train_idx], take)]] = True
    else:
        pick = np.random.RandomState(seed + 2).random_sample(len(train_idx)) < share
        mask[train_idx[pick]] = True
    return mask
