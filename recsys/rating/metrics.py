"""The rating metrics: the chapter's cost in label space, RMSE and MAE in stars."""

from __future__ import annotations

import numpy as np


def scores(pred: np.ndarray, label: np.ndarray, lowest: float = 1.0) -> dict[str, float]:
    """Chapter-scale cost (mean square error on 2*stars-5) and RMSE / MAE in stars, predictions clipped to the
    rating scale, `lowest`..5 (half-star data: 0.5..5)."""
    stars_pred = np.clip((pred + 5) / 2, lowest, 5)
    stars = (label + 5) / 2
    return {
        "cost": float(np.mean((pred - label) ** 2)),
        "rmse": float(np.sqrt(np.mean((stars_pred - stars) ** 2))),
        "mae": float(np.mean(np.abs(stars_pred - stars))),
    }
