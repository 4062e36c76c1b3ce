"""Training state that outlives a process: what `--resume` brings back, and the model dir saved each epoch."""

from __future__ import annotations

import math

import numpy as np

from recsys import modeldir
from recsys.errors import RecsysError
from recsys.modeldir import save as modelsave
from recsys.training.config import FREE, TrainConfig, flag


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


def restore(args: TrainConfig, trainer) -> tuple[Progress, dict[str, np.ndarray] | None]:
    """Load the checkpoint in --model-dir into the trainer; refuse one written with other settings.

    Returns the progress and, with a validation slice, the saved best-on-validation parameters."""
    md = modeldir.ModelDir.load(args.model_dir)
    ckpt = md.checkpoint()
    if ckpt is None:
        raise RecsysError(f"{args.model_dir} has no checkpoint to resume; train without --resume")
    state, arrays = ckpt
    if md.meta["sizes"] != trainer.data.sizes():
        raise RecsysError(f"--resume: {args.model_dir} was trained on other data ({md.meta['source']})")
    saved = state["settings"]
    diff = [
        f"{flag(k)} {v!r}"
        for k, v in saved.items()
        if hasattr(args, k) and k not in FREE and k != "epochs" and getattr(args, k) != v
    ]
    if diff or args.epochs < saved.get("epochs", args.epochs):
        diff += [f"--epochs {saved['epochs']}"] if args.epochs < saved.get("epochs", args.epochs) else []
        raise RecsysError(f"--resume: the checkpoint in {args.model_dir} was trained with {', '.join(diff)}")
    trainer.set_params({k[len("param/") :]: v for k, v in arrays.items() if k.startswith("param/")})
    trainer.set_optimizer_state({k[len("opt/") :]: v for k, v in arrays.items() if k.startswith("opt/")})
    if "threads" in state:  # the math's thread count decides its rounding: compute as the recorded run did
        trainer.use_threads(state["threads"], state.get("phase_threads"))
    rng = state["rng"]
    trainer.rng.set_state((rng[0], arrays["rng_keys"], *rng[1:]))
    if "lr" in state:
        trainer.opt.set_lr(state["lr"])
    return Progress(state), (md.params() if args.val_ratio else None)


def save(args, t, data, settings: dict, pr: Progress, best_params, complete: bool, last: bool = True) -> None:
    """The model dir: the best-on-validation parameters when there is a validation slice, else the current
    ones. Its checkpoint is always the state at the end of the last complete epoch: this one, or, when
    --max-batches cut the epoch short, the one already on disk. `last`: the run's last save, which draws
    loss.png."""
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
            "threads": t.threads,
            "phase_threads": t.phase_threads,
        }
        arrays = {"rng_keys": rng[1], **{f"param/{k}": v for k, v in current.items()}}
        checkpoint = (state, arrays | {f"opt/{k}": v for k, v in t.optimizer_state().items()})
    if best_params is not None:
        t.set_params(best_params)
    try:
        extra = t.saved_arrays()
        modelsave.save(args.model_dir, t.net, data, settings, pr.metrics, checkpoint, pr.checkpointed, extra, last)
        pr.checkpointed = pr.checkpointed or complete
    finally:
        if best_params is not None:
            t.set_params(current)


def _plain(x):
    return x.item() if hasattr(x, "item") else x
