"""Surface distances in mm: HD95, average symmetric surface distance, normalised surface Dice.

Surfaces are the mask voxels with a background neighbour (the mask minus its binary erosion, as in
MONAI's ``get_mask_edges``); distances are Euclidean, in mm, from a distance transform with the voxel
spacing, computed on the bounding box of both masks only.

Conventions (never NaN): both masks empty -> HD95 = ASSD = 0, NSD = 1; exactly one empty -> HD95 =
ASSD = the grid's diagonal in mm (the largest possible distance), NSD = 0.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def surface_distances(pred: np.ndarray, truth: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each prediction surface voxel to the truth surface, and back."""
    box = _union_box(pred, truth)
    p, t = pred[box], truth[box]
    sp, st = _surface(p), _surface(t)
    to_truth = ndimage.distance_transform_edt(~st, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return to_truth[sp], to_pred[st]


def surface_metrics(pred: np.ndarray, truth: np.ndarray, spacing, tolerance_mm: float = 1.0) -> dict[str, float]:
    """HD95, ASSD (mm) and normalised surface Dice at ``tolerance_mm`` for two boolean masks."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    if not pred.any() and not truth.any():
        return {"hd95": 0.0, "assd": 0.0, "nsd": 1.0}
    if not pred.any() or not truth.any():
        diagonal = float(np.linalg.norm(np.asarray(pred.shape) * np.asarray(spacing, float)))
        return {"hd95": diagonal, "assd": diagonal, "nsd": 0.0}
    d_pt, d_tp = surface_distances(pred, truth, spacing)
    hd95 = max(float(np.percentile(d_pt, 95)), float(np.percentile(d_tp, 95)))
    assd = float((d_pt.sum() + d_tp.sum()) / (len(d_pt) + len(d_tp)))
    nsd = float(((d_pt <= tolerance_mm).sum() + (d_tp <= tolerance_mm).sum()) / (len(d_pt) + len(d_tp)))
    return {"hd95": hd95, "assd": assd, "nsd": nsd}


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _union_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of both masks, one voxel of margin (so the border counts as background, as in MONAI)."""
    either = a | b
    box = []
    for axis in range(either.ndim):
        other = tuple(i for i in range(either.ndim) if i != axis)
        hits = np.flatnonzero(either.any(axis=other))
        box.append(slice(max(int(hits[0]) - 1, 0), min(int(hits[-1]) + 2, either.shape[axis])))
    return tuple(box)
