"""A new user as the data knows its users: the chapter's gender, age and job (ml-1m, ml-100k), or the data's own
features (name -> value), checked against a model dir and turned into the feature ids its towers read."""

from __future__ import annotations

import numpy as np

from recsys.data.schema import AGE_GROUPS, age_index
from recsys.errors import RecsysError
from recsys.modeldir import ModelDir


def no_chapter_features(md: ModelDir) -> str:
    """Why a new user of this data cannot be given by the chapter's gender, age and job."""
    dataset = md.meta["dataset"]
    if not md.features:
        return f"{dataset} has no user features (no gender, age or job): a new user is known by the movies they rated"
    return f"{dataset} users have the features {', '.join(md.features)}, not the chapter's gender, age and job"


def parse(md: ModelDir, gender, age, job, features: dict | None) -> tuple[tuple[int, ...], dict]:
    """A new user's feature ids, and the features as the answers show them; one error line for a bad one."""
    dataset = md.meta["dataset"]
    if not md.chapter_features:
        if any(x is not None for x in (gender, age, job)):
            raise RecsysError(no_chapter_features(md))
        given = {str(k): str(v) for k, v in (features or {}).items()}
        return feature_ids(md, given), given
    if features:
        raise RecsysError(f"{dataset} takes a new user's gender, age and job, not features")
    if None in (gender, age, job):
        raise RecsysError(f"a new user needs all of gender, age and job for {dataset}")
    if gender not in ("M", "F"):
        raise RecsysError(f"gender must be M or F, got {gender!r}")
    if isinstance(age, bool) or not isinstance(age, int | np.integer) or not 1 <= age <= 120:
        raise RecsysError(f"age must be a number of years, 1..120 (or a bucket code: 1, 18, 25, ...), got {age!r}")
    n_jobs = len(md.features["job"])
    if isinstance(job, bool) or not isinstance(job, int | np.integer) or not 0 <= job < n_jobs:
        raise RecsysError(f"job must be 0..{n_jobs - 1} for {dataset}, got {job!r}")
    shown = {"gender": gender, "age": int(age), "age_group": AGE_GROUPS[age_index(age)], "job": int(job)}
    return (0 if gender == "M" else 1, age_index(age), int(job)), shown


def feature_ids(md: ModelDir, given: dict[str, str]) -> tuple[int, ...]:
    """A new user's feature values (name -> value as in the data) as ids; a feature not given is unknown."""
    dataset = md.meta["dataset"]
    for name in given:
        if name not in md.features:
            if not md.features:
                raise RecsysError(f"{dataset} has no user features (got {name!r})")
            raise RecsysError(f"{dataset} has no user feature {name!r}; its features: {', '.join(md.features)}")
    out = []
    for name, labels in md.features.items():
        value = given.get(name, "")
        if value not in labels:
            shown = ", ".join(v for v in labels[:20] if v) + (" ..." if len(labels) > 20 else "")
            raise RecsysError(f"{name} {value!r} is not a value of {dataset}'s {name}: {shown}")
        out.append(labels.index(value))
    return tuple(out)
