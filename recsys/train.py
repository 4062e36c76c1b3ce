"""Train the chapter's recommender and save the inference model: `python -m recsys.train [--use-cuda]`.

The chapter's recipe by default: SGD, learning rate 0.2, batch 256, 20 passes, sparse embedding updates,
mean square error on `rating*2-5`. Batches come straight from the reader's arrays. The model dir is
written after every epoch, with a checkpoint that `--resume` continues from. Under
`python -m paddle.distributed.launch` each rank trains on its shard of every batch (data parallel).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np

from recsys import modeldir, movielens
from recsys.errors import ArgumentParser, RecsysError, cli
from recsys.movielens import FEED_NAMES, MovieLens

# settings a resumed run must share with the run that wrote the checkpoint
RESUME_KEYS = (
    "dataset",
    "split",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "sparse",
    "optimizer",
    "lr_schedule",
    "weight_decay",
    "val_ratio",
    "patience",
    "cold_start_rate",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = ArgumentParser(prog="python -m recsys.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--use-cuda", action="store_true", help="train on the GPU (needs paddlepaddle-gpu)")
    ap.add_argument("--dataset", default="ml-1m", choices=sorted(movielens.SPLITS), help="default: %(default)s")
    ap.add_argument("--split", default="random", help="random: the chapter's 10%% rule; ml-100k: also u1..u5, ua, ub")
    ap.add_argument("--data-dir", help="folder with the archive (zip or extracted); default $RECSYS_DATA_HOME")
    ap.add_argument("--model-dir", default="recommender_system.inference.model", help="default: %(default)s")
    ap.add_argument("--epochs", type=int, default=20, help="passes over the training split (the chapter's PASS_NUM)")
    ap.add_argument("--batch-size", type=int, default=256, help="global batch size (default: %(default)s)")
    ap.add_argument("--lr", type=float, default=0.2, help="learning rate (default: %(default)s)")
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
    recipe = ap.add_argument_group("recipe options (off by default: the chapter's recipe)")
    recipe.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="default: %(default)s")
    recipe.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="cosine: decay the learning rate towards 0 over the epochs",
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
    args = ap.parse_args(argv)
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


def use_cpu_cores(share: int = 1) -> None:
    """Let Paddle's CPU math use this process's cores (at most 4; small matmuls gain nothing beyond), split
    between `share` processes. Paddle's default is one thread; an OMP_NUM_THREADS set by the user wins."""
    import paddle

    if "OMP_NUM_THREADS" in os.environ or not hasattr(paddle.base.core, "set_num_threads"):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    paddle.base.core.set_num_threads(max(1, min(4, cores // share)))


class SGD:
    """Plain SGD, `param -= lr * grad`, through Paddle's own `sgd_` kernel (sparse row gradients included).

    Numerically `paddle.optimizer.SGD` (a test holds them equal), without its per-step Python bookkeeping,
    which costs more than the update itself at the chapter's batch size.
    """

    def __init__(self, parameters, learning_rate: float):
        import paddle

        self.parameters = [p for p in parameters if not p.stop_gradient]
        self._lr = paddle.to_tensor([learning_rate], dtype="float32")

    def step(self) -> None:
        from paddle import _C_ops

        for p in self.parameters:
            if p.grad is not None:
                _C_ops.sgd_(p, self._lr, p.grad, None, False)

    def clear_grad(self) -> None:
        for p in self.parameters:
            p.clear_gradient(False)

    def get_lr(self) -> float:
        return float(self._lr.numpy()[0])

    def set_lr(self, value: float) -> None:
        self._lr.fill_(value)

    def state_dict(self) -> dict:
        return {}

    def set_state_dict(self, state: dict) -> None:
        pass


def make_optimizer(name: str, parameters, lr: float, weight_decay: float = 0.0, sparse: bool = True):
    """The chapter's plain SGD (fast path), SGD with an L2 penalty, or Adam (AdamW when decaying weights)."""
    import paddle

    if name == "sgd" and not weight_decay:
        return SGD(parameters, lr)
    if name == "sgd":
        return paddle.optimizer.SGD(lr, parameters, weight_decay=paddle.regularizer.L2Decay(weight_decay))
    if weight_decay:
        return paddle.optimizer.AdamW(lr, parameters=parameters, weight_decay=weight_decay, lazy_mode=sparse)
    return paddle.optimizer.Adam(lr, parameters=parameters, lazy_mode=sparse)


def scores(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Chapter-scale cost (mean square error on 2*stars-5) and RMSE / MAE in stars, predictions clipped to 1..5."""
    stars_pred = np.clip((pred + 5) / 2, 1, 5)
    stars = (label + 5) / 2
    return {
        "cost": float(np.mean((pred - label) ** 2)),
        "rmse": float(np.sqrt(np.mean((stars_pred - stars) ** 2))),
        "mae": float(np.mean(np.abs(stars_pred - stars))),
    }


class Trainer:
    """The network, its optimizer and the data; one `step` per batch of rating indices.

    With `world > 1` (inside `paddle.distributed.launch`) the network is wrapped in `paddle.DataParallel`,
    so gradients are averaged over the ranks before every update."""

    def __init__(
        self,
        data: MovieLens,
        lr: float = 0.2,
        sparse: bool = True,
        seed: int = 0,
        optimizer: str = "sgd",
        weight_decay: float = 0.0,
        cold_start_rate: float = 0.0,
        world: int = 1,
    ):
        import paddle

        from recsys.model import RecommenderNet

        use_cpu_cores(share=world)
        paddle.seed(seed)
        self.data = data
        self.label = data.label
        self.net = RecommenderNet(**data.sizes(), sparse=sparse)
        self.model = paddle.DataParallel(self.net) if world > 1 else self.net
        self.opt = make_optimizer(optimizer, self.net.parameters(), lr, weight_decay, sparse)
        self.rng = np.random.RandomState(seed)
        self.cold_start_rate = cold_start_rate

    def feeds(self, idx: np.ndarray, training: bool = False) -> list:
        """The network's seven input tensors for the ratings `idx`; in training, the share `cold_start_rate`
        of user ids is replaced by the unknown user 0."""
        import paddle

        f = self.data.tables.features(self.data.user[idx], self.data.movie[idx])
        if training and self.cold_start_rate:
            f["user_id"] = np.where(self.rng.random_sample(len(idx)) < self.cold_start_rate, 0, f["user_id"])
        return [paddle.to_tensor(f[n]) for n in FEED_NAMES]

    def step(self, idx: np.ndarray):
        """One optimizer step on the ratings `idx`; returns the batch's cost as a 0-d tensor."""
        import paddle

        x = self.feeds(idx, training=True)
        loss = paddle.mean(paddle.square(self.model(*x) - paddle.to_tensor(self.label[idx])))
        loss.backward()
        self.opt.step()
        self.opt.clear_grad()
        return loss

    def predict(self, idx: np.ndarray, batch: int = 8192) -> np.ndarray:
        """Scores (label space) of the ratings `idx`, in large batches without gradients."""
        import paddle

        with paddle.no_grad():
            parts = [self.net(*self.feeds(idx[s : s + batch])).numpy() for s in range(0, len(idx), batch)]
        return np.concatenate(parts)[:, 0] if parts else np.zeros(0, np.float32)

    def evaluate(self, idx: np.ndarray) -> dict[str, float]:
        return scores(self.predict(idx), self.label[idx, 0])

    def params(self) -> dict[str, np.ndarray]:
        return {k: v.numpy().copy() for k, v in self.net.state_dict().items()}

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        import paddle

        self.net.set_state_dict({k: paddle.to_tensor(v) for k, v in params.items()})

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimizer's state keyed by structured parameter names (stable across processes)."""
        by_name = {p.name: k for k, p in self.net.state_dict().items()}
        out = {}
        for key, value in self.opt.state_dict().items():
            if hasattr(value, "numpy"):
                owner = max((n for n in by_name if key.startswith(n + "_")), key=len, default=None)
                out[key if owner is None else by_name[owner] + "::" + key[len(owner) + 1 :]] = value.numpy()
        return out

    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        import paddle

        params = self.net.state_dict()
        restored = {}
        for key, value in state.items():
            owner, _, rest = key.partition("::")
            restored[f"{params[owner].name}_{rest}" if rest else key] = paddle.to_tensor(value)
        if restored:
            self.opt.set_state_dict(restored)


def split_indices(data: MovieLens, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training, validation (carved from the training split, never the test split) and test rating indices."""
    train_idx, test_idx = np.flatnonzero(~data.is_test), np.flatnonzero(data.is_test)
    if len(train_idx) == 0 or len(test_idx) == 0:
        which = "training" if len(train_idx) == 0 else "test"
        raise RecsysError(f"{data.source}: the {data.split} split leaves no {which} ratings")
    n_val = int(round(len(train_idx) * val_ratio))
    carve = np.random.RandomState(seed + 1).permutation(train_idx)
    return np.sort(carve[n_val:]), np.sort(carve[:n_val]), test_idx


class Progress:
    """What a checkpoint must bring back besides parameters: position, metrics, early-stopping state."""

    def __init__(self, resumed: dict | None = None):
        r = resumed or {}
        self.epoch = r.get("epoch", 0)  # last finished epoch
        self.step = r.get("step", 0)
        metrics = r.get("metrics", [])
        self.metrics: list[dict] = metrics[: r.get("n_metrics", len(metrics))]  # drop records past the checkpoint
        self.best_cost = r.get("best_cost", math.inf)
        self.best_epoch = r.get("best_epoch", 0)
        self.checkpointed = resumed is not None  # the model dir holds a checkpoint of this run


def _resume(args: argparse.Namespace, trainer: Trainer) -> Progress:
    """Load the checkpoint in --model-dir into the trainer; refuse one written with other settings."""
    md = modeldir.ModelDir.load(args.model_dir)
    ckpt = md.checkpoint()
    if ckpt is None:
        raise RecsysError(f"{args.model_dir} has no checkpoint to resume; train without --resume")
    state, arrays = ckpt
    if md.meta["sizes"] != trainer.data.sizes():
        raise RecsysError(f"--resume: {args.model_dir} was trained on other data ({md.meta['source']})")
    saved = state["settings"]
    diff = [f"--{k.replace('_', '-')} {saved.get(k)!r}" for k in RESUME_KEYS if saved.get(k) != getattr(args, k)]
    if diff:
        raise RecsysError(f"--resume: the checkpoint in {args.model_dir} was trained with {', '.join(diff)}")
    trainer.set_params({k[len("param/") :]: v for k, v in arrays.items() if k.startswith("param/")})
    trainer.set_optimizer_state({k[len("opt/") :]: v for k, v in arrays.items() if k.startswith("opt/")})
    rng = state["rng"]
    trainer.rng.set_state((rng[0], arrays["rng_keys"], *rng[1:]))
    if "lr" in state:
        trainer.opt.set_lr(state["lr"])
    return Progress(state)


def train(args: argparse.Namespace, data: MovieLens, log=print, on_eval=None) -> tuple[Trainer, list[dict]]:
    """Run the training loop; save the model dir (with a checkpoint) after every epoch.

    `log` gets the chapter's lines; `on_eval(metrics)`, if given, runs after every evaluation (live plots).
    Returns the trainer and the metrics."""
    import paddle.distributed as dist
    from tqdm import tqdm

    world, rank = dist.get_world_size(), dist.get_rank()
    if args.batch_size % world:
        raise RecsysError(f"--batch-size {args.batch_size} must be a multiple of the {world} ranks")
    lead = rank == 0  # only rank 0 logs, evaluates the test split and writes the model dir
    if not lead:
        log, on_eval = (lambda _msg: None), None
    t = Trainer(data, args.lr, args.sparse, args.seed, args.optimizer, args.weight_decay, args.cold_start_rate, world)
    train_idx, val_idx, test_idx = split_indices(data, args.val_ratio, args.seed)
    settings = {k: v for k, v in vars(args).items() if k not in ("data_dir", "model_dir", "resume", "use_cuda")}
    pr = _resume(args, t) if args.resume else Progress()
    best_params = modeldir.ModelDir.load(args.model_dir).params() if args.resume and len(val_idx) else None
    if pr.epoch >= args.epochs or (args.patience and pr.epoch - pr.best_epoch >= args.patience):
        log(f"{args.model_dir}: training already finished at epoch {pr.epoch}")
        return t, pr.metrics
    total = args.max_batches or math.inf
    start = time.perf_counter() - (pr.metrics[-1]["seconds"] if pr.metrics else 0.0)
    since = {"cost": 0.0, "n": 0, "samples": 0, "seconds": 0.0}

    def evaluate(epoch: int, batch: int) -> dict:
        record = {"epoch": epoch, "batch": batch, "step": pr.step}
        record["train_cost"] = since["cost"] / max(since["n"], 1)
        if len(val_idx):  # every rank: early stopping must decide alike everywhere
            v = t.evaluate(val_idx)
            record.update(val_cost=v["cost"], val_rmse=v["rmse"])
        if lead:
            s = t.evaluate(test_idx)
            record.update(test_cost=s["cost"], test_rmse=s["rmse"], test_mae=s["mae"])
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
        val = f", validation {record['val_cost']:.3f}" if len(val_idx) else ""
        log(
            f"EpochID {epoch}, BatchID {batch}, Test Loss {record['test_cost']:0.2}  "
            f"(train {record['train_cost']:.3f}{val}, RMSE {record['test_rmse']:.3f} stars, "
            f"MAE {record['test_mae']:.3f})"
        )
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
            _save(args, t, data, settings, pr, best_params, complete)
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
            f"RMSE {rec['test_rmse']:.4f} stars; {pr.metrics[-1]['seconds']:.1f} s"
        )
    return t, pr.metrics


def _save(args, t: Trainer, data: MovieLens, settings: dict, pr: Progress, best_params, complete: bool) -> None:
    """The model dir: the best-on-validation parameters when there is a validation slice, else the current
    ones. Its checkpoint is always the state at the end of the last complete epoch: this one, or, when
    --max-batches cut the epoch short, the one already on disk."""
    current = t.params()
    checkpoint = None
    if complete:
        rng = t.rng.get_state()
        state = {
            "n_metrics": len(pr.metrics),
            "epoch": pr.epoch,
            "step": pr.step,
            "best_cost": pr.best_cost,
            "best_epoch": pr.best_epoch,
            "settings": settings,
            "rng": [rng[0], *map(_plain, rng[2:])],
            "lr": t.opt.get_lr(),
        }
        arrays = {"rng_keys": rng[1], **{f"param/{k}": v for k, v in current.items()}}
        checkpoint = (state, arrays | {f"opt/{k}": v for k, v in t.optimizer_state().items()})
    if best_params is not None:
        t.set_params(best_params)
    try:
        modeldir.save(args.model_dir, t.net, data, settings, pr.metrics, checkpoint, keep_checkpoint=pr.checkpointed)
        pr.checkpointed = pr.checkpointed or complete
    finally:
        if best_params is not None:
            t.set_params(current)


def _plain(x):
    return x.item() if hasattr(x, "item") else x


@cli
def main(argv: list[str] | None = None) -> int:
    import paddle.distributed as dist
    from tqdm import tqdm

    args = parse_args(argv)
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
