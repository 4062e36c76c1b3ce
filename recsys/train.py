"""Train the chapter's recommender and save the inference model: `python -m recsys.train [--use-cuda]`.

The chapter's recipe by default: SGD, learning rate 0.2, batch 256, 20 passes, sparse embedding updates,
mean square error on `rating*2-5`. Batches come straight from the reader's arrays.
"""

from __future__ import annotations

import argparse
import math
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
    ap.add_argument(
        "--split", default="random", help="random (the chapter's seed-0 10%% rule) or, for ml-100k, u1..u5, ua, ub"
    )
    ap.add_argument(
        "--data-dir", help="folder with the archive (zip or extracted); default $RECSYS_DATA_HOME or Paddle's cache"
    )
    ap.add_argument("--model-dir", default="recommender_system.inference.model", help="default: %(default)s")
    ap.add_argument("--epochs", type=int, default=20, help="passes over the training split (the chapter's PASS_NUM)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.2, help="SGD learning rate")
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


def to_tensors(feeds: dict[str, np.ndarray]) -> list:
    import paddle

    return [paddle.to_tensor(feeds[n]) for n in FEED_NAMES]


def predict(net, data: MovieLens, idx: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Scores (label space) of the ratings `idx`, in large batches without gradients."""
    import paddle

    with paddle.no_grad():
        parts = [
            net(*to_tensors(data.tables.features(data.user[s], data.movie[s]))).numpy()
            for s in np.array_split(idx, max(1, math.ceil(len(idx) / batch)))
        ]
    return np.concatenate(parts)[:, 0] if parts else np.zeros(0, np.float32)


def scores(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Chapter-scale cost (mean square error on 2*stars-5) and RMSE / MAE in stars, predictions clipped to 1..5."""
    stars_pred = np.clip((pred + 5) / 2, 1, 5)
    stars = (label + 5) / 2
    return {
        "cost": float(np.mean((pred - label) ** 2)),
        "rmse": float(np.sqrt(np.mean((stars_pred - stars) ** 2))),
        "mae": float(np.mean(np.abs(stars_pred - stars))),
    }


def train(args: argparse.Namespace, data: MovieLens, log=print):
    """Run the training loop; returns (net, metrics). Saves the model dir after every epoch."""
    import paddle
    from tqdm import tqdm

    from recsys.model import RecommenderNet

    paddle.seed(args.seed)
    net = RecommenderNet(**data.sizes(), sparse=args.sparse)
    opt = paddle.optimizer.SGD(learning_rate=args.lr, parameters=net.parameters())
    rng = np.random.RandomState(args.seed)
    train_idx, test_idx = np.flatnonzero(~data.is_test), np.flatnonzero(data.is_test)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise RecsysError(
            f"{data.source}: the {data.split} split leaves no {'training' if len(train_idx) == 0 else 'test'} ratings"
        )
    label = data.label
    test_label = label[test_idx, 0]
    metrics: list[dict] = []
    settings = {k: v for k, v in vars(args).items() if k not in ("data_dir", "model_dir")}
    start, step, total = time.perf_counter(), 0, args.max_batches or math.inf
    since = {"cost": 0.0, "n": 0, "samples": 0, "seconds": 0.0}

    def evaluate(epoch: int, batch: int) -> None:
        s = scores(predict(net, data, test_idx), test_label)
        train_cost = since["cost"] / max(since["n"], 1)
        if not math.isfinite(train_cost) or not math.isfinite(s["cost"]):
            raise RecsysError(
                f"got NaN loss at epoch {epoch}, batch {batch}; training failed "
                f"(try a smaller --lr); {args.model_dir} keeps the last good model"
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

    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(train_idx)
        n_batches = min(math.ceil(len(order) / args.batch_size), total - step)
        bar = tqdm(range(n_batches), desc=f"epoch {epoch}", unit="batch", leave=False, disable=None)
        for b in bar:
            t0 = time.perf_counter()
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            x = to_tensors(data.tables.features(data.user[idx], data.movie[idx]))
            loss = paddle.mean(paddle.square(net(*x) - paddle.to_tensor(label[idx])))
            loss.backward()
            opt.step()
            opt.clear_grad()
            step += 1
            since["cost"] += float(loss)
            since["n"] += 1
            since["samples"] += len(idx)
            since["seconds"] += time.perf_counter() - t0
            if args.eval_every and step % args.eval_every == 0 and b + 1 < n_batches:
                evaluate(epoch, b + 1)
        bar.close()
        evaluate(epoch, n_batches)
        modeldir.save(args.model_dir, net, data, settings, metrics)
        if step >= total:
            break
    return net, metrics


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_device(args.use_cuda)
    data = movielens.load(args.dataset, args.data_dir, args.split)
    log = _tqdm_log()
    n_test = int(data.is_test.sum())
    log(f"{data.meta.dataset} from {data.source}: {len(data.user) - n_test} training and {n_test} test ratings")
    _, metrics = train(args, data, log)
    last = metrics[-1]
    log(
        f"saved {Path(args.model_dir).resolve()} (test cost {last['test_cost']:.4f}, "
        f"RMSE {last['test_rmse']:.4f} stars, {last['seconds']:.1f} s)"
    )
    return 0


def _tqdm_log():
    from tqdm import tqdm

    return lambda msg: tqdm.write(msg)


if __name__ == "__main__":
    raise SystemExit(main())
