"""Preprocess one case exactly as planned, and record what was done so inference can undo it.

``preprocess(image, label, plan) -> (array, label, Trace)`` and ``restore_labels(scores, trace)``
are inverse in geometry: restored label maps have the input's exact shape and affine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from medseg.preprocess.crop import crop, nonzero_box, uncrop
from medseg.preprocess.normalize import normalize
from medseg.preprocess.resample import (
    argmax_resampled,
    needs_separate_z,
    resample_image,
    resample_labels,
    shape_for_spacing,
)
from medseg.types import Volume


@dataclass
class Trace:
    """What preprocessing did to one image (JSON-serialisable via ``asdict``)."""

    original_shape: list[int]
    original_affine: list[list[float]]
    crop_box: list[list[int]]
    original_spacing: list[float]
    target_spacing: list[float]
    resampled_shape: list[int]
    separate_z_axis: int | None
    normalization: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


def preprocess(image: Volume, label: Volume | None, plan: dict) -> tuple[np.ndarray, np.ndarray | None, Trace]:
    """Crop, resample and normalise a ``(C, X, Y, Z)`` image (and its label) as the plan says.

    Returns:
        ``(image (C, x, y, z) float32, label (x, y, z) int16 or None, trace)``.
    """
    data = image.array if image.array.ndim == 4 else image.array[None]
    box = nonzero_box(data) if plan.get("crop_nonzero", True) else [(0, n) for n in data.shape[1:]]
    data = crop(data, box)
    new_shape = shape_for_spacing(data.shape[1:], image.spacing, plan["target_spacing"])
    axis = separate_z_axis(image.spacing, plan["target_spacing"], plan.get("anisotropy_threshold", 3.0))
    data = resample_image(data, new_shape, axis)
    data, applied = normalize(data, plan["normalization"])
    lab = None
    if label is not None:
        lab = crop(label.array, box).astype(np.int16)
        lab = resample_labels(lab, new_shape, sorted(plan["labels"]), axis)
    trace = Trace(
        original_shape=list(image.spatial_shape), original_affine=image.affine.tolist(),
        crop_box=[list(b) for b in box], original_spacing=list(image.spacing),
        target_spacing=list(plan["target_spacing"]), resampled_shape=list(new_shape),
        separate_z_axis=axis, normalization=applied,
    )
    return data, lab, trace


def separate_z_axis(spacing, target_spacing, threshold: float = 3.0) -> int | None:
    """The axis to resample on its own, decided per case as nnU-Net does: the case's own coarse axis
    when its voxels are anisotropic, else the target's coarse axis when the target is, else None."""
    axis = needs_separate_z(spacing, threshold)
    return axis if axis is not None else needs_separate_z(target_spacing, threshold)


def restore_labels(scores: np.ndarray, trace: Trace, labels) -> np.ndarray:
    """Class scores ``(K, x, y, z)`` in preprocessed space -> label map on the original grid.

    Scores are resampled to the cropped grid class by class, arg-maxed, mapped to label values and
    placed back into the full image (background outside the crop box).
    """
    cropped_shape = [b - a for a, b in trace.crop_box]
    index = argmax_resampled((scores[k] for k in range(scores.shape[0])), cropped_shape, trace.separate_z_axis)
    values = np.asarray(sorted(labels), dtype=np.int16)[index]
    return uncrop(values, [tuple(b) for b in trace.crop_box], trace.original_shape, fill=0)


def restore_probabilities(probs: np.ndarray, trace: Trace) -> np.ndarray:
    """Probabilities ``(K, x, y, z)`` -> ``(K, X, Y, Z)`` float32 on the original grid (background
    class 1 outside the crop box)."""
    cropped_shape = [b - a for a, b in trace.crop_box]
    out = np.zeros((probs.shape[0], *trace.original_shape), dtype=np.float32)
    out[0] = 1.0
    region = (slice(None),) + tuple(slice(a, b) for a, b in trace.crop_box)
    out[region] = resample_image(probs, cropped_shape, trace.separate_z_axis)
    return out

