"""Where a prediction disagrees with the ground truth: false positive and false negative voxels, and the
largest connected region of disagreement (what a reviewer should look at first)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.postprocess.components import components


@dataclass(frozen=True)
class ErrorFocus:
    """The point the review pictures cut through.

    Attributes:
        point: Voxel indices ``(i, j, k)`` on the arrays' own grid: the rounded centroid of the largest
            connected error component, or the prediction's centroid (the grid centre when it is empty)
            when prediction and truth agree everywhere.
        volume_mm3: Size of that component (0 when there is no error).
    """

    point: tuple[int, int, int]
    volume_mm3: float


def error_masks(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False positive and false negative voxels of a label map against the ground truth.

    A voxel is a false positive when it carries a predicted label the truth does not have there, and a
    false negative when it carries a true label the prediction missed; a voxel given the wrong label is
    both (a false positive of the predicted label and a false negative of the true one).

    Returns:
        Boolean ``(false_positive, false_negative)`` arrays of the labels' shape.
    """
    wrong = prediction != truth
    return wrong & (prediction > 0), wrong & (truth > 0)


def largest_error(prediction: np.ndarray, truth: np.ndarray, spacing) -> ErrorFocus:
    """The centroid of the largest 26-connected component of false positive or negative voxels.

    Args:
        prediction: ``(X, Y, Z)`` predicted label map.
        truth: Ground truth on the same grid.
        spacing: Voxel size (mm), for the component's volume.
    """
    false_positive, false_negative = error_masks(prediction, truth)
    ids, sizes = components(false_positive | false_negative)
    if len(sizes) < 2:
        return ErrorFocus(centroid(prediction > 0), 0.0)
    biggest = int(np.argmax(sizes[1:])) + 1
    return ErrorFocus(centroid(ids == biggest), float(sizes[biggest] * np.prod(spacing)))


def centroid(mask: np.ndarray) -> tuple[int, int, int]:
    """Rounded centroid of a boolean mask as voxel indices (the grid centre when the mask is empty)."""
    voxels = np.argwhere(mask)
    if len(voxels) == 0:
        return tuple(int(n // 2) for n in mask.shape)  # type: ignore[return-value]
    return tuple(int(round(c)) for c in voxels.mean(axis=0))  # type: ignore[return-value]
