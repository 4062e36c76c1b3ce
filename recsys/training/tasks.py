"""Every training objective's task class, by name (see `recsys.training.registry`)."""

from __future__ import annotations

from recsys.training import closed_form, ranking, rating, retrieval  # noqa: F401 (each registers its task)
from recsys.training.registry import TASKS, task_class
from recsys.training.task import Task

__all__ = ["TASKS", "Task", "task_class"]
