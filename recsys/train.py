"""Train the chapter's recommender and save the inference model: `python -m recsys.train [--use-cuda]`.

The chapter's recipe by default: SGD, learning rate 0.2, batch 256, 20 passes, sparse embedding updates,
mean square error on `rating*2-5`. `--objective retrieval` trains the same two towers as the chapter's
candidate-generation network instead: a softmax over the catalogue of each liked movie (Adam, 1e-3).
Batches come straight from the reader's arrays. The model dir is written at epoch ends (the first, the
last, and those between while saving stays within 5% of the run's time), with a checkpoint that `--resume`
continues from. Under `python -m paddle.distributed.launch` each rank trains on
its shard of every batch (data parallel).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading

from recsys import movielens
from recsys.data import store
from recsys.errors import ArgumentParser, RecsysError, cli
from recsys.modeldir import index
from recsys.training.config import CHOICES, ConfigError, TrainConfig
from recsys.training.lock import locked
from recsys.training.loop import check_environment, set_device, train
from recsys.training.splits import split_indices

__all__ = ["main", "parse_args", "run", "split_indices", "train"]

D = TrainConfig()  # the flags' defaults


def parse_args(argv: list[str] | None = None, raise_errors: bool = False) -> TrainConfig:
    """The flags as settings, checked; `raise_errors`: a bad one raises `RecsysError` instead of exiting."""
    ap = parser()
    ap.raise_errors = raise_errors
    config = TrainConfig(**vars(ap.parse_args(argv)))
    try:
        return config.resolve(ap.given(argv))
    except ConfigError as e:
        ap.error(str(e))


def parser() -> ArgumentParser:
    """The command line's flags; their defaults are `TrainConfig`'s."""
    ap = ArgumentParser(prog="python -m recsys.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--use-cuda", action="store_true", help="train on the GPU (needs paddlepaddle-gpu)")
    ap.add_argument("--dataset", default=D.dataset, choices=CHOICES["dataset"], help="default: %(default)s")
    ap.add_argument(
        "--split",
        default=D.split,
        help="random: the chapter's 10%% rule; temporal: each user's last tenth by time; ml-100k: also u1..u5, "
        "ua, ub; NAME:val: NAME's validation split (a tenth of its training ratings as the test set); all: every "
        "rating trains, no test set (a model to serve)",
    )
    ap.add_argument("--data-dir", help="folder with the archive (zip or extracted); default $RECSYS_DATA_HOME")
    ap.add_argument("--model-dir", default=D.model_dir, help="default: %(default)s")
    ap.add_argument(
        "--objective",
        choices=CHOICES["objective"],
        default=D.objective,
        help="rating: the chapter's regression on stars; retrieval: the candidate-generation softmax (top-N); "
        "ranking: the ranking network over a retrieval model's candidates (needs --candidates-from); ease, "
        "popularity, item-knn: first stages fitted in closed form, no network",
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
        default=D.history_cap,
        help="with --history: a training example reads at most this many of the user's movies, drawn at random "
        "each step (0: all of them; the saved model reads all) (default: %(default)s)",
    )
    ap.add_argument(
        "--epochs",
        type=int,
        help="passes over the training split (default: the chapter's PASS_NUM 20; retrieval 30; ranking 3)",
    )
    ap.add_argument("--batch-size", type=int, default=D.batch_size, help="global batch size (default: %(default)s)")
    ap.add_argument("--lr", type=float, help="learning rate (default: 0.2 for sgd, 0.001 for adam, 0.05 ranking)")
    ap.add_argument("--seed", type=int, default=D.seed, help="parameter initialisation and shuffling")
    ap.add_argument(
        "--max-batches", type=int, default=D.max_batches, help="stop after this many batches in all (0: no limit)"
    )
    ap.add_argument(
        "--eval-every", type=int, default=D.eval_every, help="also evaluate every N batches (0: at epoch ends only)"
    )
    ap.add_argument(
        "--sparse",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sparse embedding gradients, the chapter's IS_SPARSE (default: on in one process; off across ranks, "
        "where Paddle all-reduces dense gradients faster -- plain SGD gives the same numbers either way)",
    )
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoint in --model-dir")
    ap.add_argument(
        "--save-every-epoch",
        action="store_true",
        help="save the model dir after every epoch (default: the last, and those a minute or more after the last "
        "save while saving stays within 5%% of the run's time)",
    )
    ap.add_argument(
        "--fused",
        action=argparse.BooleanOptionalAction,
        default=D.fused,
        help="the fused training step on the CPU (recsys.fused.step: the same numbers, without a Paddle op per layer); "
        "--no-fused: the plain layers under autograd",
    )
    ap.add_argument(
        "--threads",
        type=int,
        help="threads of all the training math (NumPy's BLAS, faiss, the first stage's pools), at most this "
        "process's cores (default: the steps on 1: batch 256's products are too small to share, and beside a busy "
        "process a second thread waits for its core; evaluation, item-item weights and candidate pools on 1 or all "
        "cores, whichever a product timed at start-up runs faster); --resume computes on the counts the run "
        "recorded, bit for bit, and refuses another",
    )
    ap.add_argument(
        "--ratings-db",
        metavar="PATH_OR_URL",
        help="also train on the ratings (and new users) that `serve --ratings-db` stored (a SQLite file, or a "
        "postgresql:// URL); the model dir records the rows read (the largest seq and a hash); the test split "
        "is never touched",
    )
    recipe = ap.add_argument_group("recipe options (off by default: the chapter's recipe)")
    recipe.add_argument("--optimizer", choices=CHOICES["optimizer"], help="default: sgd (rating), adam (retrieval)")
    recipe.add_argument(
        "--lr-schedule",
        choices=CHOICES["lr_schedule"],
        help="cosine: decay the learning rate towards 0 over the epochs (default: constant; retrieval cosine)",
    )
    recipe.add_argument(
        "--weight-decay",
        type=float,
        default=D.weight_decay,
        help="L2 penalty on every parameter (sgd) or decoupled weight decay (adam: AdamW)",
    )
    recipe.add_argument(
        "--val-ratio",
        type=float,
        default=D.val_ratio,
        help="carve this share of the training split as a validation slice; the saved model "
        "is then the epoch best on it",
    )
    recipe.add_argument(
        "--patience",
        type=int,
        default=D.patience,
        help="with --val-ratio: stop after this many epochs without improvement (0: never)",
    )
    recipe.add_argument(
        "--cold-start-rate",
        type=float,
        default=D.cold_start_rate,
        help="share of training samples whose user id is replaced by the unknown-user id 0, "
        "so that users the model never saw get a meaningful vector",
    )
    retrieval = ap.add_argument_group("retrieval options (with --objective retrieval)")
    retrieval.add_argument(
        "--temperature",
        type=float,
        default=D.temperature,
        help="logits are cos(user, movie) / T (default: %(default)s)",
    )
    retrieval.add_argument(
        "--positive", type=int, default=D.positive, help="training ratings of this many stars or more are the positives"
    )
    retrieval.add_argument(
        "--negatives",
        choices=CHOICES["negatives"],
        default=D.negatives,
        help="full: softmax over the whole catalogue every step; in-batch: the batch's other positives, "
        "log-Q corrected (default: %(default)s)",
    )
    retrieval.add_argument(
        "--holdout",
        type=float,
        default=D.holdout,
        help="leave this share of the training ratings out of training and of the histories, as the labels a "
        "ranking network learns from (default: 0.1 for retrieval; 0 for ease, popularity and item-knn, whose "
        "lists are then evaluate's baseline rows: give 0.1 to stack a ranking network on them)",
    )
    retrieval.add_argument(
        "--holdout-by",
        choices=CHOICES["holdout_by"],
        default=D.holdout_by,
        help="which training ratings --holdout leaves out: a seeded random share (random), each user's latest "
        "share by timestamp (time), or the rule of the split's own test ratings (split: time on a temporal "
        "split, random otherwise; default: %(default)s)",
    )
    retrieval.add_argument(
        "--item-share",
        type=float,
        default=D.item_share,
        help="the first stage scores a movie by the network's cosine plus the item-item score of the user's "
        "history (sparse EASE, fitted on the ratings the network trains on); this is the item-item part's share, "
        "each score in units of its spread, in [0, 1) (0: the network alone; default: %(default)s)",
    )
    ranking = ap.add_argument_group("ranking options (with --objective ranking)")
    ranking.add_argument(
        "--candidates-from", metavar="RETRIEVAL_DIR", help="the retrieval model whose candidates the ranker orders"
    )
    ranking.add_argument(
        "--candidates",
        type=int,
        default=D.candidates,
        help="the retrieval model's top N per user that the ranker learns to reorder, and reorders at inference "
        "(default: %(default)s)",
    )
    ranking.add_argument(
        "--negatives-per-positive",
        type=int,
        default=D.negatives_per_positive,
        help="negatives drawn per positive (default: %(default)s)",
    )
    ranking.add_argument(
        "--hard-negatives",
        type=float,
        default=D.hard_negatives,
        help="share of the negatives drawn from the user's candidates, the rest from the catalogue "
        "(default: %(default)s)",
    )
    ranking.add_argument(
        "--train-towers",
        action=argparse.BooleanOptionalAction,
        default=D.train_towers,
        help="train the towers (copied from the retrieval model) with the head; default: only the head learns",
    )
    ranking.add_argument(
        "--item-neighbours",
        type=int,
        default=D.item_neighbours,
        help="the item-item model (sparse EASE) of a retrieval model's first stage and of a ranker's pair feature "
        "keeps this many weights into each movie, those of largest magnitude (default: %(default)s)",
    )
    ranking.add_argument(
        "--exact",
        action="store_true",
        help="find the candidates by exact search over the whole catalogue, not through the retrieval model's "
        f"faiss index (its default from {index.SAVED_FROM:,} movies on)",
    )
    ranking.add_argument(
        "--positive-weight",
        choices=CHOICES["positive_weight"],
        default=D.positive_weight,
        help="weight of a positive in the logistic loss: its stars, or 1 (negatives weigh 1; default: %(default)s)",
    )
    ranking.add_argument(
        "--pair-features",
        choices=CHOICES["pair_features"],
        default=D.pair_features,
        help="the pair features the head reads: basic (the retrieval cosine, the movie's log share, the item-item "
        "score of the user's history), latest (also the item-item score of the user's 20 latest movies) or all "
        "(also the user's genre affinity, the movie's shrunk mean stars and share of the latest ratings, the user's "
        "activity) (default: %(default)s)",
    )
    ease = ap.add_argument_group("EASE options (with --objective ease)")
    ease.add_argument(
        "--ease-lambda", type=float, default=D.ease_lambda, help="EASE's L2 weight (default: %(default)s)"
    )
    ease.add_argument(
        "--ease-items",
        type=int,
        default=D.ease_items,
        help="EASE's item-item matrix covers this many of the most-rated movies, the rest rank after them by "
        "popularity (its cost grows with users x items^2) (default: %(default)s)",
    )
    return ap


def _the_only_trainer(args: TrainConfig) -> contextlib.AbstractContextManager:
    """Hold the model dir's lock (`recsys.training.lock`) from before the data loads, so that a second trainer
    is refused at once; only rank 0 writes the model dir, so only it takes the lock."""
    import paddle.distributed as dist

    return locked(args.model_dir) if dist.get_rank() == 0 else contextlib.nullcontext()


@contextlib.contextmanager
def _sigterm_as_ctrl_c():
    """While the block runs, SIGTERM (from `timeout`, a service manager, `kill`) stops training as Ctrl-C
    does: one `error: interrupted` line, the model dir as the last save left it. Paddle installs its own
    handler, which prints a C++ stack, when it is imported: this comes after that. The handler before is put
    back at the end (the default one, where it was not Python's); outside the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)


def _interrupt(_signum: int, _frame) -> None:
    raise KeyboardInterrupt


def load_data(args: TrainConfig, log=None) -> movielens.MovieLens:
    """The dataset and split of these settings, with the ratings database's rows in its training split when
    `--ratings-db` is given (a resumed run reads exactly the rows its record names, or refuses)."""
    data = movielens.load(args.dataset, args.data_dir, args.split)
    if args.ratings_db is None:
        return data
    db = store.RatingsStore(args.ratings_db, data.meta.dataset, create=False)
    try:
        recorded = getattr(args, "ratings_db_read", None)
        snap = db.snapshot(*((None, None) if recorded is None else (recorded["high_water"], recorded["users"])))
    finally:
        db.close()
    if recorded is not None and snap.sha256 != recorded["sha256"]:
        raise RecsysError(
            f"--resume: the ratings database {store.shown(args.ratings_db)} no longer holds the rows this run read "
            f"(up to seq {recorded['high_water']}: re-rated since); train a new --model-dir"
        )
    args.ratings_db_read = snap.record(args.ratings_db)
    data, added = store.with_stored(data, snap)
    if log is not None:
        log(
            f"{store.shown(args.ratings_db)}: {added['ratings']} stored ratings (up to seq {snap.high_water}) and "
            f"{added['new_users']} new users added to the training split; {added['replaced']} archive ratings "
            f"replaced by newer ones, {added['left_out_test']} left out (their movie is in the user's test ratings)"
        )
    return data


def run(
    dataset: str = "ml-1m",
    split: str = "random",
    objective: str = "rating",
    model_dir: str | os.PathLike = "recommender_system.inference.model",
    data_dir: str | os.PathLike | None = None,
    log=print,
    on_eval=None,
    **flags,
) -> list[dict]:
    """Train from Python, as `python -m recsys.train` would with the same flags (`epochs=5` is `--epochs 5`,
    `history=False` is `--no-history`), with the same checks: a bad value raises one `RecsysError` with the
    CLI's text. `log` gets the chapter's lines, `on_eval(metrics)` runs after each evaluation (live plots).
    Returns the metrics, one record per evaluation; the model dir holds the model."""
    given = {"dataset", "split", "objective", "model_dir"} | {k for k, v in flags.items() if v is not None}
    config = TrainConfig.of(dataset=dataset, split=split, objective=objective, model_dir=model_dir,
                            data_dir=data_dir, **flags)  # fmt: skip
    args = config.resolve(given | (set() if data_dir is None else {"data_dir"}))
    check_environment()
    set_device(args.use_cuda)
    with _the_only_trainer(args):
        return train(args, load_data(args), log, on_eval)[1]


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # before Paddle loads: --help and a bad flag answer without its second of start-up
    import paddle.distributed as dist  # before the SIGTERM handler below: importing Paddle installs its own
    from tqdm import tqdm

    with _sigterm_as_ctrl_c():
        check_environment()
        set_device(args.use_cuda)
        if int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1:
            dist.init_parallel_env()
        with _the_only_trainer(args):
            data = load_data(args, tqdm.write if dist.get_rank() == 0 else None)
            n_test = int(data.is_test.sum())
            if dist.get_rank() == 0:
                tqdm.write(
                    f"{data.meta.dataset} from {data.source}: {len(data.user) - n_test} training and "
                    f"{n_test} test ratings"
                )
            train(args, data, tqdm.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
