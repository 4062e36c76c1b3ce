"""The training objectives by name: each `--objective` is one task class (`recsys.training.task.Task`).

The task modules register themselves (`register`); `recsys.training.tasks` imports them all. Whatever differs
between objectives is a task's method or attribute, never a comparison of objective names elsewhere."""

from __future__ import annotations

from recsys.errors import RecsysError

TASKS: dict[str, type] = {}


def register(name: str):
    """Class decorator: the task class trained by `--objective name`."""

    def add(cls: type) -> type:
        cls.name = name
        TASKS[name] = cls
        return cls

    return add


def task_class(name: str) -> type:
    """The task class of the objective `name`."""
    if name not in TASKS:
        raise RecsysError(f"no training objective {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]
