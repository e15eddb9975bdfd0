"""Resampling to a target spacing and back, with torch for speed.

- Images: trilinear; for anisotropic data ("separate z": one axis over ``anisotropy_threshold`` times
  coarser than the others) bicubic within each slice and linear across slices, so thin in-plane
  detail is kept without ringing across thick slices.
- Label maps and probabilities: linear only (``kernel="linear"``), because a cubic kernel overshoots:
  one-hot memberships and probabilities would leave [0, 1]. Label maps go class by class (one-hot ->
  linear -> running argmax), so labels are never interpolated linearly-then-rounded (which would
  create in-between label values) and only two full-size float buffers exist at any time, whatever
  the number of classes.

torch's interpolation is about 10x faster than scipy's ``zoom`` at order 1 on this CPU (see
``benchmarks/resample.py``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from medseg.preprocess.half import as_float32, not_background

Kernel = Literal["cubic", "linear"]


def needs_separate_z(spacing, threshold: float = 3.0) -> int | None:
    """Index of the coarse axis when ``max(spacing) / min(spacing) > threshold``, else None."""
    spacing = np.asarray(spacing, float)
    return int(spacing.argmax()) if spacing.max() / spacing.min() > threshold else None


def shape_for_spacing(shape, spacing, target_spacing) -> tuple[int, int, int]:
    """Grid size that covers the same extent at ``target_spacing``."""
    ratio = np.asarray(spacing, float) / np.asarray(target_spacing, float)
    return tuple(max(1, int(round(n * r))) for n, r in zip(shape, ratio, strict=True))  # type: ignore


def resample_image(array: np.ndarray, new_shape, separate_z_axis: int | None = None,
                   kernel: Kernel = "cubic") -> np.ndarray:
    """Resample a ``(C, X, Y, Z)`` float image to ``(C, *new_shape)`` float32.

    Args:
        separate_z_axis: Axis resampled on its own, always linearly; None: trilinear on all axes.
        kernel: Within the planes across ``separate_z_axis``: ``"cubic"`` (bicubic; for images only,
            it can overshoot the input's range) or ``"linear"`` (stays within the input's range: for
            one-hot label memberships and probabilities). Bilinear in-plane then linear across is
            trilinear interpolation (the kernel is separable), so ``"linear"`` always runs trilinear.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(array.shape[1:]) == new_shape:
        return array.astype(np.float32, copy=False)
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    with torch.no_grad():
        if separate_z_axis is None or kernel == "linear":
            out = F.interpolate(x[None], size=new_shape, mode="trilinear", align_corners=False)[0]
        else:
            out = _separate_z(x, new_shape, separate_z_axis)
    return out.numpy()


def resample_probabilities(probs: np.ndarray, new_shape) -> np.ndarray:
    """Resample ``(K, X, Y, Z)`` class probabilities to ``(K, *new_shape)`` float32, trilinearly.

    Linear interpolation keeps values in [0, 1] and their sum at 1 (a separate-z axis makes no
    difference for a linear kernel); the clip is only a safety net against float rounding.
    """
    return np.clip(resample_image(probs, new_shape, kernel="linear"), 0.0, 1.0)


def _separate_z(x: torch.Tensor, new_shape, axis: int) -> torch.Tensor:
    # Move the coarse axis first: (C, Z, A, B); in-plane bicubic on each slice, then linear along Z.
    perm = [0, 1 + axis] + [1 + a for a in range(3) if a != axis]
    x = x.permute(*perm)
    c, z = x.shape[:2]
    plane = [new_shape[a] for a in range(3) if a != axis]
    if list(x.shape[2:]) != plane:
        x = F.interpolate(x.reshape(c * z, 1, *x.shape[2:]), size=plane, mode="bicubic", align_corners=False)
        x = x.reshape(c, z, *plane)
    if z != new_shape[axis]:
        flat = x.permute(0, 2, 3, 1).reshape(1, -1, z)  # (1, C*A*B, Z)
        flat = F.interpolate(flat, size=new_shape[axis], mode="linear", align_corners=False)
        x = flat.reshape(c, plane[0], plane[1], new_shape[axis]).permute(0, 3, 1, 2)
    inverse = np.argsort(perm)
    return x.permute(*inverse).contiguous()


def resample_labels(label: np.ndarray, new_shape, classes, separate_z_axis: int | None = None) -> np.ndarray:
    """Resample an integer ``(X, Y, Z)`` label map class by class (linear per class, then argmax).

    Args:
        classes: Label values to consider; voxels take the class with the highest interpolated
            membership. Background must be among them.
        separate_z_axis: Has no effect (kept so calls read like :func:`resample_image`'s): linear
            resampling is the same with or without a separate axis.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(label.shape) == new_shape:
        return label
    classes = list(classes)
    scores = (np.asarray(label)[None] == np.asarray(classes, dtype=label.dtype).reshape(-1, 1, 1, 1))
    out = argmax_resampled(_as_float_iter(scores), new_shape)
    return np.asarray(classes, dtype=label.dtype)[out]


def argmax_resampled(score_maps, new_shape) -> np.ndarray:
    """Argmax over classes of score maps resampled (trilinearly) to ``new_shape``, one class at a time.

    Args:
        score_maps: Iterable of ``(X, Y, Z)`` float arrays (probabilities or one-hot), class order.

    Returns:
        ``new_shape`` int16 class indices.
    """
    best = None
    index = None
    for k, score in enumerate(score_maps):
        resampled = resample_image(score[None], new_shape, kernel="linear")[0]
        if best is None:
            best = resampled
            index = np.zeros(new_shape, dtype=np.int16)
            continue
        better = resampled > best
        best = np.where(better, resampled, best)
        index[better] = k
    return index


def argmax_restored(scores: np.ndarray, new_shape) -> np.ndarray:
    """Argmax over classes of ``(K, X, Y, Z)`` scores resampled trilinearly to ``new_shape``, computed only where
    it can be other than class 0: ``new_shape`` int16 class indices.

    Where all eight interpolation corners of a voxel have class 0 as their argmax, a convex combination of them
    keeps class 0 at or above every other class, so the voxel is class 0. Interpolation therefore runs only over
    the voxels whose corners reach the box around the voxels that are not class 0, and gives what
    :func:`argmax_resampled` of the whole grid gives (float rounding aside). Own code (PyTorch's linear
    ``align_corners=False`` weights as one small matrix per axis) because ``F.interpolate`` cannot compute part
    of its output grid: restoring 153x153x154 scores of 8 classes to a 512x512x307 CT took 8.2 s whole.
    """
    new_shape = tuple(int(n) for n in new_shape)
    out = np.zeros(new_shape, dtype=np.int16)
    found = not_background(scores)
    if not found.any():
        return out
    taps = [_linear_taps(n_in, n_out) for n_in, n_out in zip(scores.shape[1:], new_shape, strict=True)]
    region = tuple(_reach(found, axis, i0, i1) for axis, (i0, i1, _) in enumerate(taps))
    weights, inputs = zip(*(_tap_matrix(*tap, rows) for tap, rows in zip(taps, region, strict=True)), strict=True)
    best = index = None
    for k in range(scores.shape[0]):
        x = as_float32(scores[k][inputs])
        x = (weights[0] @ x.reshape(x.shape[0], -1)).reshape(-1, *x.shape[1:])
        x = torch.matmul(weights[1], x) @ weights[2].T
        if best is None:
            best, index = x, torch.zeros(x.shape, dtype=torch.int16)
            continue
        better = x > best
        torch.maximum(best, x, out=best)
        index.masked_fill_(better, k)
    out[region] = index.numpy()
    return out


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the two input indices and the weight of the second, as ``F.interpolate`` (linear,
    ``align_corners=False``) computes them."""
    source = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, np.minimum(source - i0, 1.0)


def _reach(found: np.ndarray, axis: int, i0: np.ndarray, i1: np.ndarray) -> slice:
    """Output indices along ``axis`` whose interpolation taps reach the extent of ``found`` on that axis."""
    hit = np.flatnonzero(found.any(axis=tuple(a for a in range(found.ndim) if a != axis)))
    near = np.flatnonzero((i1 >= hit[0]) & (i0 <= hit[-1]))
    return slice(int(near[0]), int(near[-1]) + 1)


def _tap_matrix(i0: np.ndarray, i1: np.ndarray, weight: np.ndarray, rows: slice) -> tuple[torch.Tensor, slice]:
    """The ``(output rows, input indices)`` float32 interpolation matrix of ``rows`` along one axis, and the
    input indices it reads."""
    i0, i1, weight = i0[rows], i1[rows], weight[rows]
    first = int(i0.min())
    matrix = np.zeros((len(i0), int(i1.max()) + 1 - first), dtype=np.float64)
    np.add.at(matrix, (np.arange(len(i0)), i0 - first), 1.0 - weight)
    np.add.at(matrix, (np.arange(len(i0)), i1 - first), weight)
    return torch.from_numpy(matrix.astype(np.float32)), slice(first, int(i1.max()) + 1)


def _as_float_iter(onehot: np.ndarray):
    for k in range(onehot.shape[0]):
        yield onehot[k].astype(np.float32)
