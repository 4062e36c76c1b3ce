"""Train the chapter's recommender and save the inference model: `python -m recsys.train [--use-cuda]`.

The chapter's recipe by default: SGD, learning rate 0.2, batch 256, 20 passes, sparse embedding updates,
mean square error on `rating*2-5`. Batches come straight from the reader's arrays.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np

from recsys import modeldir, movielens
from recsys.errors import RecsysError, cli
from recsys.movielens import FEED_NAMES, MovieLens


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m recsys.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--use-cuda", action="store_true", help="train on the GPU (needs paddlepaddle-gpu)")
    ap.add_argument("--dataset", default="ml-1m", choices=sorted(movielens.SPLITS), help="default: %(default)s")
    ap.add_argument("--split", default="random", help="random: the chapter's 10%% rule; ml-100k: also u1..u5, ua, ub")
    ap.add_argument("--data-dir", help="folder with the archive (zip or extracted); default $RECSYS_DATA_HOME")
    ap.add_argument("--model-dir", default="recommender_system.inference.model", help="default: %(default)s")
    ap.add_argument("--epochs", type=int, default=20, help="passes over the training split (the chapter's PASS_NUM)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.2, help="learning rate (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="parameter initialisation and shuffling")
    ap.add_argument("--max-batches", type=int, default=0, help="stop after this many batches in all (0: no limit)")
    ap.add_argument("--eval-every", type=int, default=0, help="also evaluate every N batches (0: at epoch ends only)")
    ap.add_argument(
        "--sparse",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sparse embedding gradients, the chapter's IS_SPARSE (default: on)",
    )
    args = ap.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr <= 0 or args.max_batches < 0 or args.eval_every < 0:
        ap.error("--lr must be positive, --max-batches and --eval-every not negative")
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
        return float(self._lr)

    def set_lr(self, value: float) -> None:
        self._lr.fill_(value)


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
    """The network, its optimizer and the data; one `step` per batch of rating indices."""

    def __init__(self, data: MovieLens, lr: float = 0.2, sparse: bool = True, seed: int = 0):
        import paddle

        from recsys.model import RecommenderNet

        use_cpu_cores()
        paddle.seed(seed)
        self.data = data
        self.label = data.label
        self.net = RecommenderNet(**data.sizes(), sparse=sparse)
        self.opt = SGD(self.net.parameters(), lr)
        self.rng = np.random.RandomState(seed)

    def feeds(self, idx: np.ndarray) -> list:
        """The network's seven input tensors for the ratings `idx`."""
        import paddle

        f = self.data.tables.features(self.data.user[idx], self.data.movie[idx])
        return [paddle.to_tensor(f[n]) for n in FEED_NAMES]

    def step(self, idx: np.ndarray):
        """One SGD step on the ratings `idx`; returns the batch's cost as a 0-d tensor."""
        import paddle

        loss = paddle.mean(paddle.square(self.net(*self.feeds(idx)) - paddle.to_tensor(self.label[idx])))
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


def train(args: argparse.Namespace, data: MovieLens, log=print, on_eval=None) -> tuple[Trainer, list[dict]]:
    """Run the training loop; save the model dir after every epoch. Returns the trainer and the metrics.

    `log` gets the chapter's lines; `on_eval(metrics)`, if given, runs after every evaluation (live plots)."""
    from tqdm import tqdm

    t = Trainer(data, args.lr, args.sparse, args.seed)
    train_idx, test_idx = np.flatnonzero(~data.is_test), np.flatnonzero(data.is_test)
    if len(train_idx) == 0 or len(test_idx) == 0:
        which = "training" if len(train_idx) == 0 else "test"
        raise RecsysError(f"{data.source}: the {data.split} split leaves no {which} ratings")
    metrics: list[dict] = []
    settings = {k: v for k, v in vars(args).items() if k not in ("data_dir", "model_dir")}
    start, step, total = time.perf_counter(), 0, args.max_batches or math.inf
    since = {"cost": 0.0, "n": 0, "samples": 0, "seconds": 0.0}

    def evaluate(epoch: int, batch: int) -> None:
        s = t.evaluate(test_idx)
        train_cost = since["cost"] / max(since["n"], 1)
        if not (math.isfinite(train_cost) and math.isfinite(s["cost"])):
            raise RecsysError(
                f"got NaN loss at epoch {epoch}, batch {batch}; training failed (try a smaller --lr); "
                f"{args.model_dir} keeps the last good model"
            )
        metrics.append(
            {
                "epoch": epoch,
                "batch": batch,
                "step": step,
                "train_cost": train_cost,
                "test_cost": s["cost"],
                "test_rmse": s["rmse"],
                "test_mae": s["mae"],
                "samples_per_s": since["samples"] / max(since["seconds"], 1e-9),
                "seconds": time.perf_counter() - start,
            }
        )
        log(
            f"EpochID {epoch}, BatchID {batch}, Test Loss {s['cost']:0.2}  "
            f"(train {train_cost:.3f}, RMSE {s['rmse']:.3f} stars, MAE {s['mae']:.3f})"
        )
        since.update(cost=0.0, n=0, samples=0, seconds=0.0)
        if on_eval is not None:
            on_eval(metrics)

    for epoch in range(1, args.epochs + 1):
        order = t.rng.permutation(train_idx)
        n_batches = min(math.ceil(len(order) / args.batch_size), total - step)
        bar = tqdm(range(n_batches), desc=f"epoch {epoch}", unit="batch", leave=False, disable=None)
        tick = time.perf_counter()
        for b in bar:
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            since["cost"] += float(t.step(idx))
            since["n"] += 1
            since["samples"] += len(idx)
            step += 1
            if args.eval_every and step % args.eval_every == 0 and b + 1 < n_batches:
                since["seconds"] += time.perf_counter() - tick
                evaluate(epoch, b + 1)
                tick = time.perf_counter()
        bar.close()
        since["seconds"] += time.perf_counter() - tick
        evaluate(epoch, n_batches)
        modeldir.save(args.model_dir, t.net, data, settings, metrics)
        if step >= total:
            break
    return t, metrics


@cli
def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    set_device(args.use_cuda)
    data = movielens.load(args.dataset, args.data_dir, args.split)
    log = tqdm.write
    n_test = int(data.is_test.sum())
    log(f"{data.meta.dataset} from {data.source}: {len(data.user) - n_test} training and {n_test} test ratings")
    _, metrics = train(args, data, log)
    last = metrics[-1]
    log(
        f"saved {Path(args.model_dir).resolve()} (test cost {last['test_cost']:.4f}, "
        f"RMSE {last['test_rmse']:.4f} stars, {last['seconds']:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
