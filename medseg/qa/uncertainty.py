"""Voxel uncertainty from the class probabilities `medseg infer --probabilities` writes, and where it is highest."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter

# Side (mm) of the box over which uncertainty is averaged to find the most uncertain region, so that a
# region, not a single noisy voxel, is shown.
REGION_MM = 10.0


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Entropy of the class probabilities divided by its maximum, ``log K``: 0 certain, 1 uniform.

    Args:
        probabilities: Channel-first ``(K, X, Y, Z)`` (how :func:`medseg.io.read_volume` returns the
            channel-last ``<id>_probabilities.nii.gz``).

    Returns:
        ``(X, Y, Z)`` float32 in [0, 1].
    """
    classes = probabilities.shape[0]
    entropy = np.zeros(probabilities.shape[1:], np.float32)
    if classes < 2:
        return entropy
    for channel in probabilities:  # one class at a time: no K-sized temporaries
        p = np.clip(channel.astype(np.float32), 1e-12, 1.0)
        entropy -= p * np.log(p)
    return np.clip(entropy / np.log(classes), 0.0, 1.0)


def most_uncertain_point(uncertainty: np.ndarray, spacing) -> tuple[tuple[int, int, int], float]:
    """Centre of the :data:`REGION_MM`-wide box with the highest mean uncertainty.

    Args:
        uncertainty: ``(X, Y, Z)`` map, e.g. from :func:`normalised_entropy`.
        spacing: Voxel size (mm) along the array axes.

    Returns:
        Voxel indices of the box centre and the box's mean uncertainty.
    """

    size = [max(1, int(round(REGION_MM / float(s)))) for s in spacing]
    smooth = uniform_filter(uncertainty.astype(np.float32), size=size, mode="constant")
    flat = int(np.argmax(smooth))
    point = tuple(int(i) for i in np.unravel_index(flat, smooth.shape))
    return point, float(smooth.flat[flat])  # type: ignore[return-value]
