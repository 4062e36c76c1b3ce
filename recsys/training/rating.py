"""The chapter's objective: regression on the stars (`--objective rating`)."""

from __future__ import annotations

import numpy as np

from recsys.rating.metrics import scores
from recsys.training.registry import register
from recsys.training.task import Task

EVAL_CHUNK = 1 << 16  # the evaluation gathers the vectors of this many ratings at a time


@register("rating")
class RatingTask(Task):
    """The chapter's regression: the mean square error of the network's score against `2 * stars - 5`."""

    legend = (
        "Test Loss: the chapter's cost, mean square error in label space 2*stars-5 on the test ratings; "
        "RMSE and MAE: the same predictions in stars"
    )

    def fused_step(self, idx: np.ndarray, x: list, history):
        return self.fused.rating(x, self.label[idx], history)

    def loss(self, idx: np.ndarray, f: dict[str, np.ndarray]):
        import paddle

        from recsys.model import rating_loss

        return rating_loss(self.model(*self.tensors(f)), paddle.to_tensor(self.label[idx]))

    def predict(self, idx: np.ndarray, batch: int = 8192) -> np.ndarray:
        """Scores (label space) of the ratings `idx`, in large batches without gradients."""
        import paddle

        with paddle.no_grad():
            parts = [self.net(*self.feeds(idx[s : s + batch])).numpy() for s in range(0, len(idx), batch)]
        return np.concatenate(parts)[:, 0] if parts else np.zeros(0, np.float32)

    def evaluate(self, idx: np.ndarray, full: bool = True) -> dict[str, float]:
        """The chapter's cost, RMSE and MAE of the ratings `idx`."""
        if self.with_history:
            return scores(self.predict(idx), self.label[idx, 0], self.data.lowest_rating())
        users, movies = self.vectors()  # 5 cos(user, movie) from each tower's outputs: one pass per user and movie
        user, col = self.data.user[idx], self.column[self.data.movie[idx]]
        cos = [  # row by row, a chunk of ratings at a time: never a [ratings, 200] copy of the vectors
            np.einsum("ij,ij->i", users[user[s : s + EVAL_CHUNK]], movies[col[s : s + EVAL_CHUNK]])
            for s in range(0, len(idx), EVAL_CHUNK)
        ]
        pred = 5.0 * (np.concatenate(cos) if cos else np.zeros(0, np.float32))
        return scores(pred, self.label[idx, 0], self.data.lowest_rating())
