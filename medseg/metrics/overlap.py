"""Overlap and volume metrics on label maps.

Conventions (never NaN): a class absent from both prediction and truth scores Dice = IoU = 1 and
volume difference 0.
"""

from __future__ import annotations

import numpy as np


def dice_per_class(pred: np.ndarray, truth: np.ndarray, classes) -> dict[int, float]:
    """Dice of each class; 1.0 when the class is absent from both (an empty-empty match)."""
    return {int(k): dice(pred == k, truth == k) for k in classes}


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    denom = int(pred.sum()) + int(truth.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / denom


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    union = int(np.logical_or(pred, truth).sum())
    return 1.0 if union == 0 else int(np.logical_and(pred, truth).sum()) / union


def volume_mm3(mask: np.ndarray, spacing) -> float:
    """Volume of a boolean mask in mm^3."""
    return float(mask.sum()) * float(np.prod(spacing))
