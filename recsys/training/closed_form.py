"""Objectives fitted in closed form, with no network and no epochs: a first stage (`recsys.topn.closed_form`)
whose `fit` turns the training ratings (less those `--holdout` keeps for a ranker) into the arrays its model dir
keeps. `closed_form(name, stage)` makes
one an objective of `python -m recsys.train` (`recsys.training.registry`); the loop hands it the run whole
(`fit_and_save`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from recsys import topn
from recsys.modeldir import save as modelsave
from recsys.movielens import MovieLens
from recsys.topn.closed_form import EaseStage, PopularityStage, ScoredStage
from recsys.topn.item_knn import ItemKnnStage
from recsys.training import splits
from recsys.training.config import DEFAULTS, EVAL_USERS, TrainConfig
from recsys.training.registry import register
from recsys.training.task import catalogue

SKIP = ("data_dir", "model_dir", "resume", "use_cuda", "fused", "threads")  # not recorded: where and how


@dataclass
class Fitted:
    """What a fitted stage reads before its model dir exists: its arrays and the catalogue."""

    arrays: dict[str, np.ndarray]
    movie_ids: np.ndarray


def fit_ratings(data: MovieLens, args: TrainConfig) -> np.ndarray:
    """The rating indices a closed-form stage is fitted on: the training ratings less the validation slice
    (`--val-ratio`) and the share `--holdout` keeps for a ranker, drawn as a retrieval model draws them."""
    train_idx = splits.carve(np.flatnonzero(~data.is_test), args.val_ratio, args.seed)[0]
    held = splits.holdout_mask(data, train_idx, args.holdout or 0.0, args.seed, args.holdout_by)
    return train_idx[~held[train_idx]]


class ClosedForm:
    """An objective fitted in one pass: `stage` fits the arrays, the model dir keeps them (no network)."""

    name = ""  # the objective's name (`recsys.training.registry.register`)
    closed_form = True  # the loop calls `fit_and_save` instead of training epochs
    stage: type[ScoredStage]

    @classmethod
    def fit_and_save(cls, args: TrainConfig, data: MovieLens, log=print) -> tuple[ClosedForm, list[dict]]:
        """Fit on the training split, save the model dir, and log one line with the test metrics (when the
        split has a test set). Returns the objective and its one metrics record."""
        start, movies = time.perf_counter(), catalogue(data)
        ranking = topn.Interactions.build(movies, data.user, data.movie, data.stars, data.is_test)
        fit = fit_ratings(data, args)
        fitting = replace(ranking, train_user=data.user[fit], train_col=np.searchsorted(movies, data.movie[fit]))
        arrays = cls.stage.fit(fitting, **{name: getattr(args, name) for name in DEFAULTS[cls.name]["flags"]})
        record = {"epoch": 1, "batch": 0, "step": 0, "train_ratings": len(fit)}
        if len(ranking.eval_users()):
            ranker = cls.stage(Fitted(arrays, movies)).ranker()
            top = topn.evaluate(ranker, ranking.sample_users(EVAL_USERS, args.seed), 10)
            record |= {f"test_{k}@10": top[k] for k in ("precision", "recall", "ndcg", "hr")}
        record["seconds"] = time.perf_counter() - start
        settings = {k: v for k, v in vars(args).items() if k not in SKIP}
        modelsave.save_fitted(args.model_dir, data, settings, arrays, [record], cls.stage.uses_history,
                              cls.stage.score)  # fmt: skip
        summary = f"NDCG@10 {record['test_ndcg@10']:.4f}" if "test_ndcg@10" in record else "no test split"
        log(f"saved {Path(args.model_dir).resolve()}: {cls.name} fitted on {record['train_ratings']:,} training "
            f"ratings, {summary}; {record['seconds']:.1f} s")  # fmt: skip
        return cls(), [record]


def closed_form(name: str, stage: type[ScoredStage]) -> type[ClosedForm]:
    """Register `stage` as the closed-form objective `name`."""
    return register(name)(type(f"{stage.__name__}Objective", (ClosedForm,), {"stage": stage}))


closed_form("popularity", PopularityStage)
closed_form("ease", EaseStage)
closed_form("item-knn", ItemKnnStage)
