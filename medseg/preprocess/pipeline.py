"""Preprocess one case exactly as planned, and record what was done so inference can undo it.

``preprocess(image, label, plan) -> (array, label, Trace)`` and ``restore_labels(scores, trace)``
are inverse in geometry: restored label maps have the input's exact shape and affine.

Steps: reorient to closest RAS (:mod:`medseg.preprocess.orientation`), so that the result does not
depend on how the scan was stored; crop to non-zero; resample to the plan's spacing; normalise.
Crop box, spacings, shapes and the separate-z axis are all per canonical axis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from medseg.preprocess.crop import crop, nonzero_box, uncrop
from medseg.preprocess.normalize import normalize
from medseg.preprocess.orientation import IDENTITY, canonical_ornt, from_canonical, reoriented_shape, to_canonical
from medseg.preprocess.plan import Plan
from medseg.preprocess.resample import (
    argmax_restored,
    needs_separate_z,
    resample_image,
    resample_labels,
    resample_probabilities,
    shape_for_spacing,
)
from medseg.types import Volume


@dataclass
class Trace:
    """What preprocessing did to one image (JSON-serialisable via ``to_dict``).

    Attributes:
        original_shape: Spatial shape (X, Y, Z) of the input as stored.
        original_affine: 4x4 RAS affine of the input as stored.
        crop_box: ``[start, stop]`` per canonical axis, in the reoriented input grid.
        original_spacing: Input voxel size along the canonical axes (mm).
        target_spacing: The plan's voxel size (mm, canonical axes).
        resampled_shape: Spatial shape after cropping and resampling.
        separate_z_axis: Canonical axis resampled on its own (images), or None.
        normalization: Per-channel intensity parameters applied.
        orientation: nibabel orientation ``(3, 2)`` (new axis, flip) per stored axis that took the
            input to closest RAS; the identity for traces written before reorientation existed.
    """

    original_shape: list[int]
    original_affine: list[list[float]]
    crop_box: list[list[int]]
    original_spacing: list[float]
    target_spacing: list[float]
    resampled_shape: list[int]
    separate_z_axis: int | None
    normalization: list[dict]
    orientation: list[list[int]] = field(default_factory=lambda: IDENTITY.tolist())

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """Spatial shape of the input after reorientation (the grid ``crop_box`` refers to)."""
        return reoriented_shape(self.original_shape, np.asarray(self.orientation))


def preprocess(image: Volume, label: Volume | None, plan: Plan) -> tuple[np.ndarray, np.ndarray | None, Trace]:
    """Reorient, crop, resample and normalise a ``(C, X, Y, Z)`` or ``(X, Y, Z)`` image (and its label
    map on the same grid) as the plan says.

    Returns:
        ``(image (C, x, y, z) float32, label (x, y, z) int16 or None, trace)``, axes in closest-RAS
        order whatever the input's storage order.
    """
    ornt = canonical_ornt(image.affine)
    canonical = to_canonical(image, ornt)
    data = canonical.array if canonical.array.ndim == 4 else canonical.array[None]
    box = nonzero_box(data) if plan.crop_nonzero else [(0, n) for n in data.shape[1:]]
    data = crop(data, box)
    new_shape = shape_for_spacing(data.shape[1:], canonical.spacing, plan.target_spacing)
    axis = separate_z_axis(canonical.spacing, plan.target_spacing, plan.anisotropy_threshold)
    data = resample_image(data, new_shape, axis)
    data, applied = normalize(data, plan.normalization)
    lab = None
    if label is not None:
        lab = crop(to_canonical(label, ornt).array, box).astype(np.int16)
        lab = resample_labels(lab, new_shape, sorted(plan.labels))
    trace = Trace(
        original_shape=list(image.spatial_shape), original_affine=image.affine.tolist(),
        crop_box=[[int(a), int(b)] for a, b in box], original_spacing=list(canonical.spacing),
        target_spacing=list(plan.target_spacing), resampled_shape=[int(n) for n in new_shape],
        separate_z_axis=axis, normalization=applied, orientation=ornt.tolist(),
    )
    return data, lab, trace


def separate_z_axis(spacing, target_spacing, threshold: float = 3.0) -> int | None:
    """The axis to resample on its own, decided per case as nnU-Net does: the case's own coarse axis
    when its voxels are anisotropic, else the target's coarse axis when the target is, else None."""
    axis = needs_separate_z(spacing, threshold)
    return axis if axis is not None else needs_separate_z(target_spacing, threshold)


def restore_labels(scores: np.ndarray, trace: Trace, labels) -> np.ndarray:
    """Class scores ``(K, x, y, z)`` in preprocessed space -> ``(X, Y, Z)`` int16 label map on the
    input's grid (its stored axis order).

    Scores are resampled (linearly) to the cropped grid class by class where they can give anything but
    background (:func:`~medseg.preprocess.resample.argmax_restored`), arg-maxed, mapped to label values, placed
    back into the full canonical grid (background outside the crop box) and reoriented back to the stored order.
    """
    cropped_shape = [b - a for a, b in trace.crop_box]
    index = argmax_restored(scores, cropped_shape)
    values = sorted(labels)
    values = index if values == list(range(len(values))) else np.asarray(values, dtype=np.int16)[index]
    full = uncrop(values, [tuple(b) for b in trace.crop_box], trace.canonical_shape, fill=0)
    return np.ascontiguousarray(from_canonical(full, np.asarray(trace.orientation)))


def restore_probabilities(probs: np.ndarray, trace: Trace) -> np.ndarray:
    """Probabilities ``(K, x, y, z)`` -> ``(K, X, Y, Z)`` float32 in [0, 1] on the input's grid (its
    stored axis order; background class 1 outside the crop box). Resampling is linear, never cubic.
    The result may be a strided view (no copy of this largest array just to reorder axes)."""
    cropped_shape = [b - a for a, b in trace.crop_box]
    out = np.zeros((probs.shape[0], *trace.canonical_shape), dtype=np.float32)
    out[0] = 1.0
    region = (slice(None),) + tuple(slice(a, b) for a, b in trace.crop_box)
    out[region] = resample_probabilities(probs, cropped_shape)
    return from_canonical(out, np.asarray(trace.orientation))

