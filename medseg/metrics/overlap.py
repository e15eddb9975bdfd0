"""Overlap metrics on label maps."""

from __future__ import annotations

import numpy as np


def dice_per_class(pred: np.ndarray, truth: np.ndarray, classes) -> dict[int, float]:
    """Dice of each class; 1.0 when the class is absent from both (an empty-empty match)."""
    out = {}
    for k in classes:
        p, t = pred == k, truth == k
        denom = int(p.sum()) + int(t.sum())
        out[int(k)] = 1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom
    return out
