"""Training state that outlives a process: what `--resume` brings back, and the model dir saved each epoch."""

from __future__ import annotations

import argparse
import math

import numpy as np

from recsys import modeldir
from recsys.errors import RecsysError
from recsys.modeldir import save as modelsave
from recsys.training.trainer import use_cpu_cores

# what a setting was before it existed: a run recorded before it resumes as it was trained
BEFORE = {"objective": "rating", "history": False, "holdout": None, "history_cap": None, "item_share": None}
# recorded settings that hold for one invocation only: a resumed run takes them from its own command line
FREE = ("max_batches", "eval_every", "save_every_epoch")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def resume_settings(args: argparse.Namespace, given: set[str], log=print) -> None:
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
            conflicts.append(f"{_flag(key)} {value!r}" + ("" if value is None else f" (not {getattr(args, key)!r})"))
    if "threads" in state:  # the math's rounding depends on it: the recorded count, never another
        if "threads" in given and args.threads != state["threads"]:
            conflicts.append(f"--threads {state['threads']} (not {args.threads}: the rounding depends on it)")
        args.threads = state["threads"]
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


def restore(args: argparse.Namespace, trainer) -> tuple[Progress, dict[str, np.ndarray] | None]:
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
        f"{_flag(k)} {v!r}"
        for k, v in saved.items()
        if hasattr(args, k) and k not in FREE and k != "epochs" and getattr(args, k) != v
    ]
    if diff or args.epochs < saved.get("epochs", args.epochs):
        diff += [f"--epochs {saved['epochs']}"] if args.epochs < saved.get("epochs", args.epochs) else []
        raise RecsysError(f"--resume: the checkpoint in {args.model_dir} was trained with {', '.join(diff)}")
    trainer.set_params({k[len("param/") :]: v for k, v in arrays.items() if k.startswith("param/")})
    trainer.set_optimizer_state({k[len("opt/") :]: v for k, v in arrays.items() if k.startswith("opt/")})
    if "threads" in state:  # the math's thread count decides its rounding: compute as the recorded run did
        trainer.threads = use_cpu_cores(state["threads"])
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
