"""A training run's settings: one typed, checked record, built by `python -m recsys.train`'s parser or from
keywords (`recsys.train.run`), and recorded in the model dir's meta.json (`settings`) as it stands.

The flags an objective does not read are None; those left out take the objective's defaults (`DEFAULTS`).
`TrainConfig.resolve` fills and checks them once; a bad value raises `ConfigError` with the text the CLI
prints after `error:`."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from recsys import modeldir, movielens
from recsys.data import store
from recsys.errors import RecsysError
from recsys.modeldir.load import NoModel
from recsys.threads import usable_cores
from recsys.topn import first_stage, neighbours
from recsys.topn.baselines import EASE_MAX_ITEMS
from recsys.topn.rerank import FEATURE_SETS
from recsys.training.splits import HOLDOUT_BY, holdout_rule

HOLDOUT = 0.1  # the retrieval model's default share of training ratings kept for a ranker (closed form: 0)
EVAL_USERS = 20_000  # top-N metrics while training: at most this many test users, drawn once (evaluate: all)
HISTORY_CAP = 50  # chosen on ml-100k validation, against every movie (0) and caps of 25, 10 and 5 (README)
# each objective's defaults of the flags left out (`lr`: by optimizer; the ranking network trains its head alone,
# on few labels: a larger step), and the objective's own flags: those of the other objectives are None in its
# settings
DEFAULTS = {
    "rating": {"optimizer": "sgd", "lr": {"sgd": 0.2, "adam": 0.001}, "epochs": 20, "lr_schedule": "constant",
               "history": False, "flags": ()},
    "retrieval": {"optimizer": "adam", "lr": {"sgd": 0.2, "adam": 0.001}, "epochs": 30, "lr_schedule": "cosine",
                  "history": True, "flags": ("positive", "temperature", "negatives", "holdout", "holdout_by",
                                             "item_share", "item_neighbours")},
    # a ranking network on labels held out by time (`--holdout-by`) trains `epochs_by_time` (chosen on validation)
    "ranking": {"optimizer": "adam", "lr": {"sgd": 0.2, "adam": 0.05}, "epochs": 3, "epochs_by_time": 10,
                "lr_schedule": "cosine",
                "history": True, "flags": ("positive", "candidates_from", "candidates", "negatives_per_positive",
                                           "hard_negatives", "positive_weight", "train_towers", "exact",
                                           "item_neighbours", "pair_features")},
    # fitted in closed form (`recsys.training.closed_form`): no network, one pass; the network's flags are unread
    "ease": {"optimizer": "sgd", "lr": {"sgd": 0.2, "adam": 0.001}, "epochs": 1, "lr_schedule": "constant",
             "history": False, "holdout": 0.0, "flags": ("holdout", "holdout_by", "ease_lambda", "ease_items")},
    "popularity": {"optimizer": "sgd", "lr": {"sgd": 0.2, "adam": 0.001}, "epochs": 1, "lr_schedule": "constant",
                   "history": False, "holdout": 0.0, "flags": ("holdout", "holdout_by")},
    "item-knn": {"optimizer": "sgd", "lr": {"sgd": 0.2, "adam": 0.001}, "epochs": 1, "lr_schedule": "constant",
                 "history": False, "holdout": 0.0, "flags": ("holdout", "holdout_by")},
}  # fmt: skip
OBJECTIVES = tuple(DEFAULTS)
OWN_FLAGS = sorted({flag for d in DEFAULTS.values() for flag in d["flags"]})
CHOICES = {
    "dataset": sorted(movielens.SPLITS),
    "objective": OBJECTIVES,
    "optimizer": ("sgd", "adam"),
    "lr_schedule": ("constant", "cosine"),
    "negatives": ("full", "in-batch"),
    "positive_weight": ("stars", "one"),
    "pair_features": tuple(FEATURE_SETS),
    "holdout_by": HOLDOUT_BY,
}
KINDS = {"bool": bool, "int": int, "float": float, "str": str}  # a field's type, by its annotation's first word


class ConfigError(RecsysError):
    """A flag's bad value: the CLI prints it as its `error:` line."""


@dataclass
class TrainConfig:
    """Every flag of `python -m recsys.train`, by its destination name (`--batch-size` is `batch_size`)."""

    use_cuda: bool = False
    dataset: str = "ml-1m"
    split: str = "random"
    data_dir: str | None = None
    model_dir: str = "recommender_system.inference.model"
    objective: str = "rating"
    history: bool | None = None
    history_cap: int | None = HISTORY_CAP
    epochs: int | None = None
    batch_size: int = 256
    lr: float | None = None
    seed: int = 0
    max_batches: int = 0
    eval_every: int = 0
    sparse: bool | None = None
    resume: bool = False
    save_every_epoch: bool = False
    fused: bool = True
    threads: int | None = None
    ratings_db: str | None = None
    optimizer: str | None = None
    lr_schedule: str | None = None
    weight_decay: float = 0.0
    val_ratio: float = 0.0
    patience: int = 0
    cold_start_rate: float = 0.0
    temperature: float | None = 0.25
    positive: int | None = 4
    negatives: str | None = "in-batch"
    holdout: float | None = None  # the objective's default: `DEFAULTS`, else HOLDOUT
    holdout_by: str | None = "split"  # recorded as the rule it names on the split: random or time
    item_share: float | None = first_stage.SHARE
    candidates_from: str | None = None
    candidates: int | None = 200
    negatives_per_positive: int | None = 4
    hard_negatives: float | None = 0.2
    train_towers: bool | None = False
    item_neighbours: int | None = neighbours.K
    exact: bool | None = False
    positive_weight: str | None = "stars"
    ease_lambda: float | None = 500.0
    ease_items: int | None = EASE_MAX_ITEMS
    pair_features: str | None = "latest"
    ratings_db_read: dict | None = None  # the ratings database's rows read (`recsys.train.load_data`)
    phase_threads: int | None = None  # large products' count (`Task.phase`): a resumed run's recorded one

    @classmethod
    def of(cls, **values) -> TrainConfig:
        """Settings from keywords (None: the default), each converted and checked as its flag's value would be."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        out = {}
        for name, value in values.items():
            if name not in fields or name in ("ratings_db_read", "phase_threads"):
                raise ConfigError(f"unrecognized arguments: {flag(name)}")
            if value is not None:
                out[name] = _typed(name, str(fields[name].type).split()[0], value)
        return cls(**out)

    def resolve(self, given: set[str], log=None) -> TrainConfig:
        """Fill in what the flags left out (with `--resume`, the recorded run's settings; else the objective's
        defaults) and check every value, once; `given`: the names of the flags given. Returns self."""
        self.paths()
        if self.threads is not None and not 1 <= self.threads <= usable_cores():
            raise ConfigError(
                f"--threads must be 1..{usable_cores()} (the cores this process may use), got {self.threads}"
            )
        if self.resume:  # the recorded run's settings and data, unless given
            self.recorded(given, log or (lambda msg: print(msg, file=sys.stderr)))
        self.defaults()
        self.check()
        return self

    def paths(self) -> None:
        """Paths recorded as absolute ones (they name the same thing from anywhere); no password recorded."""
        if self.candidates_from is not None:
            self.candidates_from = str(Path(self.candidates_from).resolve())
        if self.ratings_db is not None and store.shown(self.ratings_db) != self.ratings_db:
            raise ConfigError("--ratings-db: give the PostgreSQL password in PGPASSWORD or ~/.pgpass, not in the URL "
                              "(the model dir records the URL)")  # fmt: skip
        if self.ratings_db is not None and not store.is_url(self.ratings_db):
            self.ratings_db = str(Path(self.ratings_db).resolve())
        self.ratings_db_read = None  # set by `load_data`; a resumed run reads the rows its record names

    def recorded(self, given: set[str], log) -> None:
        """`--resume`: the recorded run's settings (`resume_settings`); one line when nothing was saved."""
        try:
            resume_settings(self, given, log=log)
        except NoModel:
            raise RecsysError(
                f"--resume: nothing to resume in {self.model_dir}: no run has saved a checkpoint there (a run saves "
                "its first at the end of its first epoch; one stopped sooner leaves none); start again without --resume"
            ) from None

    def defaults(self) -> None:
        """The objective's defaults of the flags left out; None for the flags it does not read."""
        table = DEFAULTS[self.objective]
        if self.optimizer is None:
            self.optimizer = table["optimizer"]
        if self.lr is None:
            self.lr = table["lr"][self.optimizer]
        if self.epochs is None:
            self.epochs = table["epochs_by_time" if "epochs_by_time" in table and self.labels_by_time() else "epochs"]
        if self.lr_schedule is None:
            self.lr_schedule = table["lr_schedule"]
        if self.history is None:
            self.history = table["history"]
        if self.holdout is None:
            self.holdout = table.get("holdout", HOLDOUT)
        if self.holdout_by is not None:
            self.holdout_by = holdout_rule(self.holdout_by, self.split)
        if not self.history:
            self.history_cap = None
        elif self.history_cap is None or self.history_cap < 0:  # None: a run recorded before the cap existed
            if self.history_cap is not None:
                raise ConfigError(f"--history-cap must be 0 (all) or more, got {self.history_cap}")
            self.history_cap = 0
        for name in OWN_FLAGS:
            if name not in table["flags"]:
                setattr(self, name, None)
        if self.item_share is not None and not self.item_share:  # the network alone: no item-item part
            self.item_neighbours = None
        if self.sparse is None:
            self.sparse = int(os.environ.get("PADDLE_TRAINERS_NUM") or 1) == 1

    def labels_by_time(self) -> bool:
        """A ranking network whose first stage held its labels out by time (`--holdout-by`): each user's latest
        ratings. False when that model dir cannot be read (training says why, in one line)."""
        if self.candidates_from is None:
            return False
        try:
            return modeldir.read_meta(self.candidates_from).get("settings", {}).get("holdout_by") == "time"
        except RecsysError:
            return False

    def check(self) -> None:
        """Every value in its range (the flags the objective reads)."""
        if self.positive is not None:
            self.need(1 <= self.positive <= 5, "--positive", "1..5")
        if self.holdout is not None:
            self.need(0 <= self.holdout < 1, "--holdout", "in [0, 1)")
        if self.temperature is not None:
            self.need(self.temperature > 0, "--temperature", "positive")
            self.need(0 <= self.item_share < 1, "--item-share", "in [0, 1)")
        if self.candidates is not None:
            if self.candidates_from is None:
                raise ConfigError("--objective ranking needs --candidates-from RETRIEVAL_DIR")
            self.need(self.candidates >= 1, "--candidates", "at least 1")
            self.need(self.negatives_per_positive >= 1, "--negatives-per-positive", "at least 1")
            self.need(0 <= self.hard_negatives <= 1, "--hard-negatives", "in [0, 1]")
        if self.item_neighbours is not None:
            self.need(self.item_neighbours >= 1, "--item-neighbours", "at least 1")
        if self.ease_lambda is not None:
            self.need(self.ease_lambda > 0 and math.isfinite(self.ease_lambda), "--ease-lambda", "positive")
            self.need(self.ease_items >= 1, "--ease-items", "at least 1")
        for name in ("epochs", "batch_size"):
            self.need(getattr(self, name) >= 1, flag(name), "at least 1")
        self.need(self.lr > 0, "--lr", "positive")
        for name in ("max_batches", "eval_every", "weight_decay", "patience"):
            self.need(getattr(self, name) >= 0, flag(name), "0 or more")
        for name in ("val_ratio", "cold_start_rate"):
            self.need(0 <= getattr(self, name) < 1, flag(name), "in [0, 1)")
        if self.patience and not self.val_ratio:
            raise ConfigError("--patience needs a validation slice: give --val-ratio")
        if self.optimizer == "adam" and self.weight_decay and self.sparse:
            raise ConfigError("--optimizer adam with --weight-decay needs dense embedding gradients: add --no-sparse")

    def need(self, ok: bool, flag: str, rule: str) -> None:
        if not ok:
            raise ConfigError(f"{flag} must be {rule}, got {getattr(self, flag[2:].replace('-', '_'))}")


# what a setting was before it existed: a run recorded before it resumes as it was trained
BEFORE = {"objective": "rating", "history": False, "holdout": None, "holdout_by": "random", "history_cap": None,
          "item_share": None}  # fmt: skip
# recorded settings that hold for one invocation only: a resumed run takes them from its own command line
FREE = ("max_batches", "eval_every", "save_every_epoch")


def resume_settings(args: TrainConfig, given: set[str], log=print) -> None:
    """`--resume`: continue the run recorded in --model-dir. Every setting it recorded (any flag) that the
    command line does not give is taken from the record, and so is its data (the archive it was trained on),
    except --max-batches and --eval-every, which hold for one invocation. A given flag must agree with the
    record, except those two and --epochs above the recorded number, which extends the run. The run computes on
    the thread count its checkpoint recorded (a matmul's rounding depends on it): a --threads given must equal
    it. A cosine schedule then follows the longer run's curve from the next epoch on (`log` says so): the
    learning rate steps up, and the result differs from a run trained that long from the start."""
    md = modeldir.ModelDir.load(args.model_dir)
    ckpt = md.checkpoint()
    if ckpt is None:
        raise RecsysError(f"{args.model_dir} has no checkpoint to resume; train without --resume")
    state, saved = ckpt[0], BEFORE | ckpt[0]["settings"]
    conflicts = []
    for key, value in saved.items():
        if not hasattr(args, key) or key in FREE or key in ("data_dir", "model_dir", "resume", "use_cuda"):
            continue  # a setting this recsys no longer has, or one for a single invocation
        if key not in given:
            setattr(args, key, value)
        elif key == "epochs" and args.epochs < value:
            conflicts.append(f"--epochs {value} (not {args.epochs}: --epochs can only extend a run)")
        elif key != "epochs" and getattr(args, key) != value:
            conflicts.append(f"{flag(key)} {value!r}" + ("" if value is None else f" (not {getattr(args, key)!r})"))
    if "threads" in state:  # the math's rounding depends on it: the recorded counts, never others
        if "threads" in given and args.threads != state["threads"]:
            conflicts.append(f"--threads {state['threads']} (not {args.threads}: the rounding depends on it)")
        args.threads = state["threads"]
        args.phase_threads = state.get("phase_threads", state["threads"])  # before it was recorded: one count
    if conflicts:
        raise RecsysError(
            f"--resume continues the run in {args.model_dir}, which was trained with {', '.join(conflicts)}; "
            "leave those flags out, or train a new --model-dir"
        )
    if args.data_dir is None and args.dataset == md.meta["dataset"]:
        args.data_dir = str(md.source())
    done, recorded = state["epoch"], saved.get("epochs", args.epochs)
    if args.epochs > recorded and args.lr_schedule == "cosine" and done < args.epochs:
        before = 0.5 * (1 + math.cos(math.pi * (done - 1) / recorded)) if done else 1.0
        after = 0.5 * (1 + math.cos(math.pi * done / args.epochs))
        log(
            f"notice: extending a cosine schedule from {recorded} to {args.epochs} epochs: from epoch {done + 1} on "
            f"it follows the {args.epochs}-epoch curve, so the learning rate goes from {before:.3f} to "
            f"{after:.3f} times --lr; the result differs from a run of {args.epochs} epochs from the start"
        )


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _typed(name: str, kind: str, value):
    """`value` as the flag `name` of type `kind` takes it from a command line, or `ConfigError` with argparse's text."""
    want = KINDS[kind]
    if want is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"argument {flag(name)}: expected True or False, got {value!r}")
        return value
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, want) or isinstance(value, bool):
        try:
            value = want(str(value))
        except ValueError:
            raise ConfigError(f"argument {flag(name)}: invalid {want.__name__} value: {str(value)!r}") from None
    if name in CHOICES and value not in CHOICES[name]:
        choices = ", ".join(map(repr, CHOICES[name]))
        raise ConfigError(f"argument {flag(name)}: invalid choice: {value!r} (choose from {choices})")
    return value
