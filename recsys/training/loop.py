"""The training loop: splits, epochs, evaluation, the model dir saved at epoch ends, `--resume`.

The model dir is saved after an epoch that ends at least `SAVE_GAP` seconds after the run's start or its last
save while saving has taken at most `SAVE_SHARE` of the run's time (every epoch with `--save-every-epoch`),
after the last complete epoch of a run that `--max-batches` cuts short (the checkpoint `--resume` continues
from), and always after the last: a killed run leaves the last saved epoch's whole dir (or the dir that was
there before), and loses at most about `SAVE_GAP` seconds and an epoch of training. The cost curves (loss.png)
are drawn in the last save. A top-N objective's evaluations before the last epoch's read a seeded sample of
test users (`BETWEEN_PAIRS`), and as many validation users for the validation lists; the last one reads all
of them (up to `EVAL_USERS`; `recsys.evaluate`: all).

`train(args, data)` runs it for a run's settings (`recsys.training.config.TrainConfig`), with the task of its
objective (`recsys.training.tasks`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import numpy as np

from recsys import topn
from recsys.data.loader import ALL
from recsys.errors import RecsysError
from recsys.movielens import MovieLens
from recsys.training import checkpoint, lock
from recsys.training.config import EVAL_USERS, TrainConfig
from recsys.training.tasks import Task, task_class

UNTESTED = "Train Loss: the training cost of the epoch's batches; the all split trains on every rating: no test split"
SAVE_SHARE = 0.05  # an epoch's end saves the model dir while saving has taken at most this share of the run
SAVE_GAP = 60.0  # ... and at least this many seconds have passed since the run's start or its last save
# A top-N objective's evaluations before its last epoch's end read a seeded sample of test users: their top-N
# lists score at most BETWEEN_PAIRS (user, movie) pairs per pair an epoch's logits hold (and at least
# BETWEEN_USERS users), and their test cost reads only their ratings. The last evaluation reads every user of
# `ranking` (up to EVAL_USERS).
BETWEEN_PAIRS = 0.05
BETWEEN_USERS = 20


def set_device(use_cuda: bool) -> None:
    import paddle

    if use_cuda and not paddle.is_compiled_with_cuda():
        raise RecsysError("this Paddle build has no CUDA; install paddlepaddle-gpu")
    if use_cuda and paddle.device.cuda.device_count() == 0:
        raise RecsysError("this Paddle build has CUDA but no GPU is visible")
    paddle.set_device("gpu" if use_cuda else "cpu")


def check_environment() -> None:
    """Refuse, before any training, a setting under which the model could not be saved."""
    if os.environ.get("FLAGS_enable_pir_api", "").strip().lower() in ("0", "false", "off"):
        raise RecsysError(
            "FLAGS_enable_pir_api=0 is set: under the legacy IR Paddle cannot save the inference model "
            "(paddle.jit.save); unset FLAGS_enable_pir_api and train again"
        )


def train(args: TrainConfig, data: MovieLens, log=print, on_eval=None) -> tuple[Task, list[dict]]:
    """Run the training loop; save the model dir (with a checkpoint) at epoch ends (see the module's text).

    `log` gets the chapter's lines; `on_eval(metrics)`, if given, runs after every evaluation (live plots).
    Only one process at a time may train into a model dir. Returns the trainer and the metrics."""
    import paddle.distributed as dist

    check_environment()
    objective = task_class(args.objective)
    with lock.locked(args.model_dir) if dist.get_rank() == 0 else contextlib.nullcontext():
        if objective.closed_form:  # fitted in one pass, no epochs (`recsys.training.closed_form`)
            return objective.fit_and_save(args, data, log)
        return Run(args, data, log, on_eval).run()


class Run:
    """One invocation of the loop: the task, its splits and progress, and what each epoch ends with."""

    def __init__(self, args: TrainConfig, data: MovieLens, log, on_eval):
        import paddle.distributed as dist

        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        if args.batch_size % self.world:
            raise RecsysError(f"--batch-size {args.batch_size} must be a multiple of the {self.world} ranks")
        self.lead = self.rank == 0  # only rank 0 logs, evaluates the test split and writes the model dir
        self.args, self.data = args, data
        self.log, self.on_eval = (log, on_eval) if self.lead else ((lambda _msg: None), None)
        self.t = task_class(args.objective).of(args, data, self.world)
        self.top_n = self.t.ranks
        self.ranking = self.val_ranking = self.val_between = self.between = None
        with self.t.phase():  # a first stage's item-item weights
            self.splits()
        # where and how, not what was trained (the checkpoint records the thread counts, which --resume keeps)
        skip = ("data_dir", "model_dir", "resume", "use_cuda", "fused", "threads", "phase_threads")
        self.settings = {k: v for k, v in vars(args).items() if k not in skip} | self.t.recorded()
        self.pr, best = checkpoint.restore(args, self.t) if args.resume else (checkpoint.Progress(), None)
        self.best_params = best if len(self.val_idx) else None
        self.start = time.perf_counter() - (self.pr.metrics[-1]["seconds"] if self.pr.metrics else 0.0)
        self.since = {"cost": 0.0, "n": 0, "samples": 0, "seconds": 0.0}
        self.saving = 0.0  # seconds this invocation spent saving
        self.saved_at = time.perf_counter()  # when this invocation last saved (or started)

    def splits(self) -> None:
        """The training, validation and test ratings, and with a top-N objective the users' positives."""
        args, data, t = self.args, self.data, self.t
        train_idx, val_idx, test_idx = t.splits(args)
        if self.top_n:  # the positives of each split; the top-N metrics rank against the whole training split
            build = topn.Interactions.build
            self.ranking = build(t.catalogue, data.user, data.movie, data.stars, data.is_test)
            self.ranking = self.ranking.sample_users(EVAL_USERS, args.seed)  # `evaluate` ranks for every user
            if len(val_idx):  # validation: ranked against the ratings the model trains on, scored on the slice
                fit = np.zeros(len(data.user), bool)
                fit[val_idx] = fit[t.fit_idx] = True
                is_val = np.zeros(len(data.user), bool)
                is_val[val_idx] = True
                self.val_ranking = build(
                    t.catalogue, data.user[fit], data.movie[fit], data.stars[fit], is_val[fit], args.positive
                ).sample_users(EVAL_USERS, args.seed)
            train_idx, val_idx, test_idx = (i[data.stars[i] >= args.positive] for i in (train_idx, val_idx, test_idx))
            if not len(train_idx) or (not len(test_idx) and data.split != ALL):
                which = "training" if not len(train_idx) else "test"
                raise RecsysError(f"the {data.split} split has no {which} ratings of {args.positive} stars or more")
            t.positives(train_idx)
            self.between = self.sample_between(train_idx, test_idx)
        self.train_idx, self.val_idx, self.test_idx = train_idx, val_idx, test_idx
        self.tested = len(test_idx) > 0  # the all split has no test ratings: the epoch lines show the training cost

    def sample_between(self, train_idx: np.ndarray, test_idx: np.ndarray) -> tuple | None:
        """The test users (top-N `Interactions`) and their test ratings that a top-N objective's evaluations
        before the last read (see `BETWEEN_PAIRS`); None where that is every user."""
        args = self.args
        pairs, per_user = self.t.pairs_per_epoch(args, len(train_idx))
        n_users = max(BETWEEN_USERS, int(pairs * BETWEEN_PAIRS) // per_user)
        sample = self.ranking.sample_users(n_users, args.seed)
        if sample is self.ranking:
            return None
        if self.val_ranking is not None:  # the validation lists too, by the same rule
            self.val_between = self.val_ranking.sample_users(n_users, args.seed)
        return sample, test_idx[np.isin(self.data.user[test_idx], sample.eval_users())]

    def finished(self) -> bool:
        args, pr = self.args, self.pr
        return pr.epoch >= args.epochs or bool(args.patience and pr.epoch - pr.best_epoch >= args.patience)

    def run(self) -> tuple[Task, list[dict]]:
        args, pr = self.args, self.pr
        if self.finished():
            more = "" if pr.epoch < args.epochs else f" (--resume --epochs N above {pr.epoch} trains on)"
            self.log(f"{args.model_dir}: training already finished at epoch {pr.epoch}{more}")
            return self.t, pr.metrics
        self.log(self.t.legend if self.tested else UNTESTED)
        for epoch in range(pr.epoch + 1, args.epochs + 1):
            if not self.epoch(epoch):
                break
        if self.lead:
            best = self.best_params is not None
            rec = [m for m in pr.metrics if m["epoch"] == pr.best_epoch][-1] if best else pr.metrics[-1]
            cost = (
                f"test cost {rec['test_cost']:.4f}, {_summary(rec, long=True)}"
                if self.tested
                else f"train cost {rec['train_cost']:.4f} (no test split)"
            )
            self.log(
                f"saved {Path(args.model_dir).resolve()}: epoch {rec['epoch']}, batch {rec['batch']}"
                f"{' (best on validation)' if best else ''}, {cost}; {pr.metrics[-1]['seconds']:.1f} s"
            )
        return self.t, pr.metrics

    def epoch(self, epoch: int) -> bool:
        """One pass over the training ratings, its evaluation and save; False when training stops here."""
        from tqdm import tqdm

        args, t, pr, since, world = self.args, self.t, self.pr, self.since, self.world
        if args.lr_schedule == "cosine":
            t.opt.set_lr(args.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / args.epochs)))
        order = t.rng.permutation(self.train_idx)  # the same on every rank (same seed); each takes its share
        order = order[: len(order) - len(order) % world][self.rank :: world] if world > 1 else order
        per_rank, total = args.batch_size // world, args.max_batches or math.inf
        n_batches = min(math.ceil(len(order) / per_rank), total - pr.step)
        if n_batches <= 0:
            return False
        bar = tqdm(
            range(n_batches), desc=f"epoch {epoch}", unit="batch", leave=False, disable=None if self.lead else True
        )
        final = epoch == args.epochs or pr.step + n_batches >= total  # its evaluation reads every test user
        tick = time.perf_counter()
        for b in bar:
            idx = order[b * per_rank : (b + 1) * per_rank]
            since["cost"] += float(t.step(idx))
            since["n"] += 1
            since["samples"] += len(idx)
            pr.step += 1
            if self.lead and args.eval_every and pr.step % args.eval_every == 0 and b + 1 < n_batches:
                since["seconds"] += time.perf_counter() - tick
                self.evaluate(epoch, b + 1)
                tick = time.perf_counter()
        bar.close()
        since["seconds"] += time.perf_counter() - tick
        record = self.evaluate(epoch, n_batches, final)
        complete = n_batches == math.ceil(len(order) / per_rank)  # --max-batches may end an epoch early
        if complete:
            pr.epoch = epoch
            if len(self.val_idx) and record["val_cost"] < pr.best_cost:
                pr.best_cost, pr.best_epoch, self.best_params = record["val_cost"], epoch, t.params()
        patience = bool(args.patience and epoch - pr.best_epoch >= args.patience)
        last = pr.step >= total or patience or epoch == args.epochs
        now = time.perf_counter()
        budget = now - self.saved_at >= SAVE_GAP and self.saving <= SAVE_SHARE * (now - self.start)
        cut_next = complete and not last and pr.step + n_batches > total  # the next epoch ends short: keep this
        if self.lead and (last or args.save_every_epoch or budget or cut_next):
            with t.phase():  # what the model dir keeps of the vectors: every user's, scored on the catalogue
                checkpoint.save(args, t, self.data, self.settings, pr, self.best_params, complete, last)
            self.saved_at = time.perf_counter()
            record["save_seconds"] = self.saved_at - now  # on disk with the next save
            self.saving += record["save_seconds"]
        if patience:
            self.log(f"early stop: no better validation cost since epoch {pr.best_epoch}")
        return not last

    def evaluate(self, epoch: int, batch: int, final: bool = False) -> dict:
        """The metrics after `batch` batches of `epoch`: appended to the progress, logged by the lead rank. Before
        the `final` evaluation, a top-N objective's test metrics read the users of `between` (`test_users` says
        how many), and its validation lists as many validation users."""
        t, pr, since, tick = self.t, self.pr, self.since, time.perf_counter()
        ranking, test_idx = (self.ranking, self.test_idx) if final or self.between is None else self.between
        record = {"epoch": epoch, "batch": batch, "step": pr.step}
        record["train_cost"] = since["cost"] / max(since["n"], 1)
        with t.phase():  # full-catalogue scoring: large products
            self.figures(record, ranking, test_idx, final)
        if not all(math.isfinite(x) for x in record.values()):
            raise RecsysError(
                f"got NaN loss at epoch {epoch}, batch {batch}; training failed (try a smaller --lr); "
                f"{self.args.model_dir} keeps the last good model"
            )
        record["samples_per_s"] = since["samples"] * self.world / max(since["seconds"], 1e-9)
        record["step_seconds"], record["eval_seconds"] = since["seconds"], time.perf_counter() - tick
        record["seconds"] = time.perf_counter() - self.start
        pr.metrics.append(record)
        since.update(cost=0.0, n=0, samples=0, seconds=0.0)
        if self.lead:
            self.log(f"EpochID {epoch}, BatchID {batch}, {_loss(record)}  ({_summary(record)})")
            if self.on_eval is not None:
                self.on_eval(pr.metrics)
        return record

    def figures(self, record: dict, ranking, test_idx: np.ndarray, final: bool) -> None:
        """`evaluate`'s figures into `record`: the validation cost, and on the lead rank the test figures of the
        ratings `test_idx` and the users of `ranking`, and the validation lists."""
        t = self.t
        if len(self.val_idx):  # every rank: early stopping must decide alike everywhere
            record.update({f"val_{k}": v for k, v in t.evaluate(self.val_idx, full=False).items() if k != "mae"})
        if self.lead and self.tested:
            record.update({f"test_{k}": v for k, v in t.evaluate(test_idx).items()})
            if self.top_n:
                top = t.top_n(ranking)
                record.update({f"test_{k}@10": top[k] for k in ("precision", "recall", "ndcg", "hr")})
                if ranking is not self.ranking:
                    record["test_users"] = len(ranking.eval_users())
        if self.lead and self.val_ranking is not None:
            val = self.val_ranking if final or self.val_between is None else self.val_between
            record["val_ndcg@10"] = t.top_n(val, full=False)["ndcg"]


def _loss(record: dict) -> str:
    """The evaluation line's cost: the test cost, or, without a test split, the training cost."""
    if "test_cost" in record:
        return f"Test Loss {record['test_cost']:0.2}"
    return f"Train Loss {record['train_cost']:0.2}"


def _summary(record: dict, long: bool = False) -> str:
    """The evaluation's figures besides the test cost, for the log line."""
    sample = f" of {record['test_users']} sampled test users" if "test_users" in record else ""
    if long:
        return (
            f"NDCG@10 {record['test_ndcg@10']:.4f}{sample}"
            if "test_ndcg@10" in record
            else f"RMSE {record['test_rmse']:.4f} stars"
        )
    val = f", validation {record['val_cost']:.3f}" if "val_cost" in record else ""
    if "test_cost" not in record:
        return f"train {record['train_cost']:.3f}{val}, no test split"
    if "test_ndcg@10" in record:
        return (
            f"train {record['train_cost']:.3f}{val}, NDCG@10 {record['test_ndcg@10']:.3f}, "
            f"Recall@10 {record['test_recall@10']:.3f}{sample}"
        )
    return f"train {record['train_cost']:.3f}{val}, RMSE {record['test_rmse']:.3f} stars, MAE {record['test_mae']:.3f}"
