"""Train the chapter's recommender and save the inference model: `python -m recsys.train [--use-cuda]`.

The chapter's recipe by default: SGD, learning rate 0.2, batch 256, 20 passes, sparse embedding updates,
mean square error on `rating*2-5`. `--objective retrieval` trains the same two towers as the chapter's
candidate-generation network instead: a softmax over the catalogue of each liked movie (Adam, 1e-3).
Batches come straight from the reader's arrays. The model dir is written after every epoch, with a
checkpoint that `--resume` continues from. Under `python -m paddle.distributed.launch` each rank trains on
its shard of every batch (data parallel).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from recsys import movielens, topn
from recsys.errors import ArgumentParser, RecsysError, cli
from recsys.movielens import MovieLens
from recsys.training import checkpoint, lock
from recsys.training import ranking as stacking
from recsys.training.trainer import Trainer

OBJECTIVES = ("rating", "retrieval", "ranking")
HOLDOUT = 0.1  # the retrieval model's default share of training ratings kept for a ranker
HISTORY_CAP = 50  # chosen on ml-100k validation: 0.1977 mean NDCG@10 vs 0.1955 with every movie (0)
EVAL_USERS = 20_000  # top-N metrics while training: at most this many test users, drawn once (evaluate: all)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = ArgumentParser(prog="python -m recsys.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--use-cuda", action="store_true", help="train on the GPU (needs paddlepaddle-gpu)")
    ap.add_argument("--dataset", default="ml-1m", choices=sorted(movielens.SPLITS), help="default: %(default)s")
    ap.add_argument(
        "--split",
        default="random",
        help="random: the chapter's 10%% rule; ml-100k: also u1..u5, ua, ub; NAME:val: NAME's validation split "
        "(a tenth of its training ratings as the test set)",
    )
    ap.add_argument("--data-dir", help="folder with the archive (zip or extracted); default $RECSYS_DATA_HOME")
    ap.add_argument("--model-dir", default="recommender_system.inference.model", help="default: %(default)s")
    ap.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="rating",
        help="rating: the chapter's regression on stars; retrieval: the candidate-generation softmax (top-N); "
        "ranking: the ranking network over a retrieval model's candidates (needs --candidates-from)",
    )
    ap.add_argument(
        "--history",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="feed the user tower the mean embedding of the movies the user rated in training "
        "(default: on for retrieval and ranking, off for rating: the chapter's network)",
    )
    ap.add_argument(
        "--history-cap",
        type=int,
        default=HISTORY_CAP,
        help="with --history: a training example reads at most this many of the user's movies, drawn at random "
        "each step (0: all of them; the saved model reads all) (default: %(default)s)",
    )
    ap.add_argument(
        "--epochs",
        type=int,
        help="passes over the training split (default: the chapter's PASS_NUM 20; retrieval 30; ranking 10)",
    )
    ap.add_argument("--batch-size", type=int, default=256, help="global batch size (default: %(default)s)")
    ap.add_argument("--lr", type=float, help="learning rate (default: 0.2 for sgd, 0.001 for adam, 0.05 ranking)")
    ap.add_argument("--seed", type=int, default=0, help="parameter initialisation and shuffling")
    ap.add_argument("--max-batches", type=int, default=0, help="stop after this many batches in all (0: no limit)")
    ap.add_argument("--eval-every", type=int, default=0, help="also evaluate every N batches (0: at epoch ends only)")
    ap.add_argument(
        "--sparse",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sparse embedding gradients, the chapter's IS_SPARSE (default: on in one process; off across ranks, "
        "where Paddle all-reduces dense gradients faster -- plain SGD gives the same numbers either way)",
    )
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoint in --model-dir")
    ap.add_argument(
        "--fused",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the fused training step on the CPU (recsys.fused.step: the same numbers, without a Paddle op per layer); "
        "--no-fused: the plain layers under autograd",
    )
    recipe = ap.add_argument_group("recipe options (off by default: the chapter's recipe)")
    recipe.add_argument("--optimizer", choices=("sgd", "adam"), help="default: sgd (rating), adam (retrieval)")
    recipe.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        help="cosine: decay the learning rate towards 0 over the epochs (default: constant; retrieval cosine)",
    )
    recipe.add_argument(
        "--weight-decay",
        type=float,
        default=0.0,
        help="L2 penalty on every parameter (sgd) or decoupled weight decay (adam: AdamW)",
    )
    recipe.add_argument(
        "--val-ratio",
        type=float,
        default=0.0,
        help="carve this share of the training split as a validation slice; the saved model "
        "is then the epoch best on it",
    )
    recipe.add_argument(
        "--patience",
        type=int,
        default=0,
        help="with --val-ratio: stop after this many epochs without improvement (0: never)",
    )
    recipe.add_argument(
        "--cold-start-rate",
        type=float,
        default=0.0,
        help="share of training samples whose user id is replaced by the unknown-user id 0, "
        "so that users the model never saw get a meaningful vector",
    )
    retrieval = ap.add_argument_group("retrieval options (with --objective retrieval)")
    retrieval.add_argument(
        "--temperature", type=float, default=0.25, help="logits are cos(user, movie) / T (default: %(default)s)"
    )
    retrieval.add_argument(
        "--positive", type=int, default=4, help="training ratings of this many stars or more are the positives"
    )
    retrieval.add_argument(
        "--negatives",
        choices=("full", "in-batch"),
        default="in-batch",
        help="full: softmax over the whole catalogue every step; in-batch: the batch's other positives, "
        "log-Q corrected (default: %(default)s)",
    )
    retrieval.add_argument(
        "--holdout",
        type=float,
        default=HOLDOUT,
        help="leave this share of the training ratings out of training and of the histories, as the labels a "
        "ranking network learns from (default: %(default)s)",
    )
    ranking = ap.add_argument_group("ranking options (with --objective ranking)")
    ranking.add_argument(
        "--candidates-from", metavar="RETRIEVAL_DIR", help="the retrieval model whose candidates the ranker orders"
    )
    ranking.add_argument(
        "--candidates",
        type=int,
        default=200,
        help="the retrieval model's top N per user that the ranker learns to reorder, and reorders at inference "
        "(default: %(default)s)",
    )
    ranking.add_argument(
        "--negatives-per-positive", type=int, default=4, help="negatives drawn per positive (default: %(default)s)"
    )
    ranking.add_argument(
        "--hard-negatives",
        type=float,
        default=0.5,
        help="share of the negatives drawn from the user's candidates, the rest from the catalogue "
        "(default: %(default)s)",
    )
    ranking.add_argument(
        "--train-towers",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="train the towers (copied from the retrieval model) with the head; default: only the head learns",
    )
    ranking.add_argument(
        "--positive-weight",
        choices=("stars", "one"),
        default="stars",
        help="weight of a positive in the logistic loss: its stars, or 1 (negatives weigh 1; default: %(default)s)",
    )
    args = ap.parse_args(argv)
    if args.candidates_from is not None:  # recorded as an absolute path: it names the same dir from anywhere
        args.candidates_from = str(Path(args.candidates_from).resolve())
    if args.resume:  # the recorded run's settings and data, unless given
        checkpoint.resume_settings(args, ap.given(argv), log=lambda msg: print(msg, file=sys.stderr))
    objective = args.objective
    adam = objective != "rating"
    if args.optimizer is None:
        args.optimizer = "adam" if adam else "sgd"
    if args.lr is None:  # the ranking network trains its head alone, on few labels: a larger step
        args.lr = (0.05 if objective == "ranking" else 0.001) if args.optimizer == "adam" else 0.2
    if args.epochs is None:
        args.epochs = {"rating": 20, "retrieval": 30, "ranking": 10}[objective]
    if args.lr_schedule is None:
        args.lr_schedule = "cosine" if adam else "constant"
    if args.history is None:
        args.history = objective != "rating"
    if not args.history:
        args.history_cap = None
    elif args.history_cap is None or args.history_cap < 0:  # None: a run recorded before the cap existed
        if args.history_cap is not None:
            ap.error(f"--history-cap must be 0 (all) or more, got {args.history_cap}")
        args.history_cap = 0
    if objective != "retrieval":
        args.temperature = args.negatives = args.holdout = None
    if objective != "ranking":
        args.candidates_from = args.candidates = args.negatives_per_positive = None
        args.hard_negatives = args.positive_weight = args.train_towers = None
    if objective == "rating":
        args.positive = None  # not part of the chapter's recipe
    elif not 1 <= args.positive <= 5:
        ap.error("--positive must be 1..5")
    if objective == "retrieval" and not (args.temperature > 0 and 0 <= args.holdout < 1):
        ap.error("--temperature must be positive and --holdout in [0, 1)")
    if objective == "ranking":
        if args.candidates_from is None:
            ap.error("--objective ranking needs --candidates-from RETRIEVAL_DIR")
        if args.candidates < 1 or args.negatives_per_positive < 1 or not 0 <= args.hard_negatives <= 1:
            ap.error("--candidates and --negatives-per-positive must be at least 1, --hard-negatives in [0, 1]")
    if args.sparse is None:
        args.sparse = int(os.environ.get("PADDLE_TRAINERS_NUM") or 1) == 1
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr <= 0 or args.max_batches < 0 or args.eval_every < 0:
        ap.error("--lr must be positive, --max-batches and --eval-every not negative")
    if not (0 <= args.val_ratio < 1 and 0 <= args.cold_start_rate < 1) or args.weight_decay < 0 or args.patience < 0:
        ap.error("--val-ratio and --cold-start-rate must be in [0, 1), --weight-decay and --patience not negative")
    if args.patience and not args.val_ratio:
        ap.error("--patience needs a validation slice: give --val-ratio")
    if args.optimizer == "adam" and args.weight_decay and args.sparse:
        ap.error("--optimizer adam with --weight-decay needs dense embedding gradients: add --no-sparse")
    return args


def set_device(use_cuda: bool) -> None:
    import paddle

    if use_cuda and not paddle.is_compiled_with_cuda():
        raise RecsysError("this Paddle build has no CUDA; install paddlepaddle-gpu")
    if use_cuda and paddle.device.cuda.device_count() == 0:
        raise RecsysError("this Paddle build has CUDA but no GPU is visible")
    paddle.set_device("gpu" if use_cuda else "cpu")


def split_indices(data: MovieLens, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training, validation (carved from the training split, never the test split) and test rating indices."""
    train_idx, test_idx = np.flatnonzero(~data.is_test), np.flatnonzero(data.is_test)
    if len(train_idx) == 0 or len(test_idx) == 0:
        which = "training" if len(train_idx) == 0 else "test"
        raise RecsysError(f"{data.source}: the {data.split} split leaves no {which} ratings")
    n_val = int(round(len(train_idx) * val_ratio))
    carve = np.random.RandomState(seed + 1).permutation(train_idx)
    return np.sort(carve[n_val:]), np.sort(carve[:n_val]), test_idx


def check_environment() -> None:
    """Refuse, before any training, a setting under which the model could not be saved."""
    if os.environ.get("FLAGS_enable_pir_api", "").strip().lower() in ("0", "false", "off"):
        raise RecsysError(
            "FLAGS_enable_pir_api=0 is set: under the legacy IR Paddle cannot save the inference model "
            "(paddle.jit.save); unset FLAGS_enable_pir_api and train again"
        )


def train(args: argparse.Namespace, data: MovieLens, log=print, on_eval=None) -> tuple[Trainer, list[dict]]:
    """Run the training loop; save the model dir (with a checkpoint) after every epoch.

    `log` gets the chapter's lines; `on_eval(metrics)`, if given, runs after every evaluation (live plots).
    Only one process at a time may train into a model dir. Returns the trainer and the metrics."""
    import paddle.distributed as dist

    check_environment()
    with lock.locked(args.model_dir) if dist.get_rank() == 0 else contextlib.nullcontext():
        return _train(args, data, log, on_eval)


def _train(args: argparse.Namespace, data: MovieLens, log, on_eval) -> tuple[Trainer, list[dict]]:
    import paddle.distributed as dist
    from tqdm import tqdm

    world, rank = dist.get_world_size(), dist.get_rank()
    if args.batch_size % world:
        raise RecsysError(f"--batch-size {args.batch_size} must be a multiple of the {world} ranks")
    lead = rank == 0  # only rank 0 logs, evaluates the test split and writes the model dir
    if not lead:
        log, on_eval = (lambda _msg: None), None
    top_n = args.objective != "rating"
    t = Trainer(
        data, args.lr, args.sparse, args.seed, args.optimizer, args.weight_decay, args.cold_start_rate, world,
        args.objective, args.temperature, args.negatives, args.history, args.fused,
    )  # fmt: skip
    t.history_cap = args.history_cap or 0
    if args.objective == "ranking":
        train_idx, val_idx, test_idx = stacking.prepare(t, args, data)
    else:
        train_idx, val_idx, test_idx = split_indices(data, args.val_ratio, args.seed)
        held = stacking.holdout_mask(len(data.user), train_idx, args.holdout or 0.0, args.seed)
        train_idx = train_idx[~held[train_idx]]
        t.use_history(train_idx)
    ranking = val_ranking = None
    if top_n:  # the positives of each split; the top-N metrics rank against the whole training split
        ranking = topn.Interactions.build(t.catalogue, data.user, data.movie, data.stars, data.is_test)
        ranking = ranking.sample_users(EVAL_USERS, args.seed)  # `evaluate` ranks for every user
        if len(val_idx):  # validation: ranked against the ratings the model trains on, scored on the slice
            fit = np.zeros(len(data.user), bool)
            fit[val_idx] = fit[t.fit_idx if args.objective == "ranking" else train_idx] = True
            is_val = np.zeros(len(data.user), bool)
            is_val[val_idx] = True
            val_ranking = topn.Interactions.build(
                t.catalogue, data.user[fit], data.movie[fit], data.stars[fit], is_val[fit], args.positive
            ).sample_users(EVAL_USERS, args.seed)
        train_idx, val_idx, test_idx = (i[data.stars[i] >= args.positive] for i in (train_idx, val_idx, test_idx))
        if not len(train_idx) or not len(test_idx):
            which = "training" if not len(train_idx) else "test"
            raise RecsysError(f"the {data.split} split has no {which} ratings of {args.positive} stars or more")
        t.sample_from(train_idx)
    skip = ("data_dir", "model_dir", "resume", "use_cuda", "fused")  # where and how, not what was trained
    settings = {k: v for k, v in vars(args).items() if k not in skip}
    if args.objective == "ranking":  # the retrieval model it reorders: its parameters' hash
        settings["candidates_params_sha256"] = t.retrieval_fingerprint
    pr, best_params = checkpoint.restore(args, t) if args.resume else (checkpoint.Progress(), None)
    best_params = best_params if len(val_idx) else None
    if pr.epoch >= args.epochs or (args.patience and pr.epoch - pr.best_epoch >= args.patience):
        more = "" if pr.epoch < args.epochs else f" (--resume --epochs N above {pr.epoch} trains on)"
        log(f"{args.model_dir}: training already finished at epoch {pr.epoch}{more}")
        return t, pr.metrics
    total = args.max_batches or math.inf
    start = time.perf_counter() - (pr.metrics[-1]["seconds"] if pr.metrics else 0.0)
    since = {"cost": 0.0, "n": 0, "samples": 0, "seconds": 0.0}

    def evaluate(epoch: int, batch: int) -> dict:
        record = {"epoch": epoch, "batch": batch, "step": pr.step}
        record["train_cost"] = since["cost"] / max(since["n"], 1)
        if len(val_idx):  # every rank: early stopping must decide alike everywhere
            record.update({f"val_{k}": v for k, v in t.evaluate(val_idx, full=False).items() if k != "mae"})
        if lead:
            record.update({f"test_{k}": v for k, v in t.evaluate(test_idx).items()})
            if top_n:
                top = t.top_n(ranking)
                record.update({f"test_{k}@10": top[k] for k in ("precision", "recall", "ndcg", "hr")})
                if val_ranking is not None:
                    record["val_ndcg@10"] = t.top_n(val_ranking, full=False)["ndcg"]
        if not all(math.isfinite(x) for x in record.values()):
            raise RecsysError(
                f"got NaN loss at epoch {epoch}, batch {batch}; training failed (try a smaller --lr); "
                f"{args.model_dir} keeps the last good model"
            )
        record["samples_per_s"] = since["samples"] * world / max(since["seconds"], 1e-9)
        record["seconds"] = time.perf_counter() - start
        pr.metrics.append(record)
        since.update(cost=0.0, n=0, samples=0, seconds=0.0)
        if not lead:
            return record
        log(f"EpochID {epoch}, BatchID {batch}, Test Loss {record['test_cost']:0.2}  ({_summary(record)})")
        if on_eval is not None:
            on_eval(pr.metrics)
        return record

    per_rank = args.batch_size // world
    for epoch in range(pr.epoch + 1, args.epochs + 1):
        if args.lr_schedule == "cosine":
            t.opt.set_lr(args.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / args.epochs)))
        order = t.rng.permutation(train_idx)  # the same on every rank (same seed); each takes its share
        order = order[: len(order) - len(order) % world][rank::world] if world > 1 else order
        n_batches = min(math.ceil(len(order) / per_rank), total - pr.step)
        if n_batches <= 0:
            break
        bar = tqdm(range(n_batches), desc=f"epoch {epoch}", unit="batch", leave=False, disable=None if lead else True)
        tick = time.perf_counter()
        for b in bar:
            idx = order[b * per_rank : (b + 1) * per_rank]
            since["cost"] += float(t.step(idx))
            since["n"] += 1
            since["samples"] += len(idx)
            pr.step += 1
            if lead and args.eval_every and pr.step % args.eval_every == 0 and b + 1 < n_batches:
                since["seconds"] += time.perf_counter() - tick
                evaluate(epoch, b + 1)
                tick = time.perf_counter()
        bar.close()
        since["seconds"] += time.perf_counter() - tick
        record = evaluate(epoch, n_batches)
        complete = b + 1 == math.ceil(len(order) / per_rank)  # --max-batches may end an epoch early
        if complete:
            pr.epoch = epoch
            if len(val_idx) and record["val_cost"] < pr.best_cost:
                pr.best_cost, pr.best_epoch, best_params = record["val_cost"], epoch, t.params()
        stop = pr.step >= total or (args.patience and epoch - pr.best_epoch >= args.patience)
        if lead:
            checkpoint.save(args, t, data, settings, pr, best_params, complete)
        if stop:
            if args.patience and epoch - pr.best_epoch >= args.patience:
                log(f"early stop: no better validation cost since epoch {pr.best_epoch}")
            break
    if lead:
        best = best_params is not None
        rec = [m for m in pr.metrics if m["epoch"] == pr.best_epoch][-1] if best else pr.metrics[-1]
        log(
            f"saved {Path(args.model_dir).resolve()}: epoch {rec['epoch']}, batch {rec['batch']}"
            f"{' (best on validation)' if best else ''}, test cost {rec['test_cost']:.4f}, "
            f"{_summary(rec, long=True)}; {pr.metrics[-1]['seconds']:.1f} s"
        )
    return t, pr.metrics


def _summary(record: dict, long: bool = False) -> str:
    """The evaluation's figures besides the test cost, for the log line."""
    if long:
        return (
            f"NDCG@10 {record['test_ndcg@10']:.4f}"
            if "test_ndcg@10" in record
            else f"RMSE {record['test_rmse']:.4f} stars"
        )
    val = f", validation {record['val_cost']:.3f}" if "val_cost" in record else ""
    if "test_ndcg@10" in record:
        return (
            f"train {record['train_cost']:.3f}{val}, NDCG@10 {record['test_ndcg@10']:.3f}, "
            f"Recall@10 {record['test_recall@10']:.3f}"
        )
    return f"train {record['train_cost']:.3f}{val}, RMSE {record['test_rmse']:.3f} stars, MAE {record['test_mae']:.3f}"


@cli
def main(argv: list[str] | None = None) -> int:
    import paddle.distributed as dist
    from tqdm import tqdm

    args = parse_args(argv)
    check_environment()
    set_device(args.use_cuda)
    if int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1:
        dist.init_parallel_env()
    data = movielens.load(args.dataset, args.data_dir, args.split)
    n_test = int(data.is_test.sum())
    if dist.get_rank() == 0:
        tqdm.write(
            f"{data.meta.dataset} from {data.source}: {len(data.user) - n_test} training and {n_test} test ratings"
        )
    train(args, data, tqdm.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
