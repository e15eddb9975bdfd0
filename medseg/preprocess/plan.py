"""Plan: target spacing, patch size, network topology, batch size and normalisation from a fingerprint."""

from __future__ import annotations

import numpy as np

from medseg.config import RunConfig
from medseg.preprocess.normalize import channel_scheme
from medseg.preprocess.resample import needs_separate_z

MIN_FEATURE_MAP = 4  # voxels per axis at the bottom of the U-Net
MAX_DOWNSAMPLINGS = 5
# Bytes of activations (forward + backward, mixed precision) per voxel per base filter, measured
# roughly on DynUNet: used only to scale patch and batch to the memory budget.
_BYTES_PER_VOXEL_FILTER = 60


def target_spacing(fingerprint: dict, threshold: float = 3.0) -> list[float]:
    """Median spacing; when one axis is over ``threshold`` times coarser, the 10th percentile there.

    This is nnU-Net's rule: a lower percentile on the coarse axis keeps more through-plane detail
    for the few thin-slice cases, while the median decides the in-plane resolution.
    """
    spacings = np.asarray(fingerprint["spacings"], float)
    target = np.median(spacings, axis=0)
    axis = needs_separate_z(target, threshold)
    if axis is not None:
        others = [a for a in range(3) if a != axis]
        coarse = float(np.percentile(spacings[:, axis], 10))
        target[axis] = max(coarse, float(target[others].max()))
    return [round(float(s), 5) for s in target]


def make_plan(fingerprint: dict, dataset_channels: dict[int, str], labels: dict[int, str],
              config: RunConfig) -> dict:
    """Resolve every value a training run needs; config values that are set win over planned ones.

    Per-axis values (spacing, patch size, strides, kernels, separate-z axis) refer to the canonical
    closest-RAS axes that :func:`medseg.preprocess.preprocess` reorients every case to; the plan says
    so under ``"orientation"``.
    """
    pre, tr, model = config.preprocess, config.train, config.model
    spacing = list(pre.target_spacing) if pre.target_spacing else target_spacing(fingerprint, pre.anisotropy_threshold)
    median_spacing = np.asarray(fingerprint["median_spacing"], float)
    median_shape = np.asarray(fingerprint["median_shape"], float) * median_spacing / np.asarray(spacing)
    patch = list(tr.patch_size) if tr.patch_size else _patch_size(median_shape, spacing, tr.memory_budget_mb,
                                                                   model.base_filters)
    strides, kernels = topology(patch, spacing)
    batch = tr.batch_size or _batch_size(patch, tr.memory_budget_mb, model.base_filters)
    filters = [min(model.base_filters * 2**i, model.max_filters) for i in range(len(strides))]
    schemes = []
    for c in sorted(dataset_channels) or [0]:
        scheme = channel_scheme(dataset_channels.get(c, ""))
        stats = fingerprint["intensity"][c]
        schemes.append({"scheme": "ct", "lower": stats["p00_5"], "upper": stats["p99_5"], "mean": stats["mean"],
                        "std": stats["std"]} if scheme == "ct" else {"scheme": "zscore"})
    original_axis = needs_separate_z(median_spacing, pre.anisotropy_threshold)
    target_axis = needs_separate_z(spacing, pre.anisotropy_threshold)
    separate = target_axis if target_axis is not None else original_axis
    return {
        "orientation": "RAS",
        "target_spacing": spacing,
        "separate_z_axis": separate,
        "patch_size": [int(p) for p in patch],
        "batch_size": int(batch),
        "strides": strides,
        "kernel_sizes": kernels,
        "filters": filters,
        "normalization": schemes,
        "labels": {int(k): v for k, v in labels.items()},
        "channels": {int(k): v for k, v in dataset_channels.items()},
        "median_shape_resampled": [float(s) for s in median_shape],
        "crop_nonzero": pre.crop_nonzero,
        "anisotropy_threshold": pre.anisotropy_threshold,
    }


def topology(patch, spacing) -> tuple[list, list]:
    """DynUNet strides and kernel sizes: halve an axis while it stays >= 2 * MIN_FEATURE_MAP and its
    spacing is not more than twice the finest current spacing (thick-slice axes wait, as in nnU-Net).
    Kernels are 1 along an axis whose spacing is still over twice the finest (no 3-wide conv across
    thick slices)."""
    size = np.asarray(patch, float)
    current = np.asarray(spacing, float)
    strides: list[list[int]] = [[1, 1, 1]]
    kernels: list[list[int]] = [[3 if current[a] <= 2 * current.min() else 1 for a in range(3)]]
    for _ in range(MAX_DOWNSAMPLINGS):
        step = [2 if size[a] >= 2 * MIN_FEATURE_MAP and current[a] <= 2 * current.min() else 1 for a in range(3)]
        if step == [1, 1, 1]:
            break
        size = size / np.asarray(step)
        current = current * np.asarray(step)
        strides.append(step)
        kernels.append([3 if current[a] <= 2 * current.min() else 1 for a in range(3)])
    return strides, kernels


def _patch_size(median_shape, spacing, budget_mb: int, base_filters: int) -> list[int]:
    """Start from the median image size (capped at 256 voxels per axis), shrink the axis with the
    largest physical extent until two patches fit the budget, then round to the network's divisor."""
    patch = np.minimum(np.asarray(median_shape, float), 256)
    spacing = np.asarray(spacing, float)
    while _cost_mb(patch, 2, base_filters) > budget_mb:
        axis = int(np.argmax(patch * spacing))
        patch[axis] *= 0.9
    patch = np.maximum(patch, MIN_FEATURE_MAP)
    strides, _ = topology(patch, spacing)
    divisor = np.prod(np.asarray(strides), axis=0)
    return [int(np.ceil(p / d) * d) for p, d in zip(patch, divisor, strict=True)]


def _batch_size(patch, budget_mb: int, base_filters: int) -> int:
    fits = int(budget_mb // max(_cost_mb(np.asarray(patch, float), 1, base_filters), 1e-6))
    return int(np.clip(fits, 2, 4))


def _cost_mb(patch, batch: int, base_filters: int) -> float:
    return float(np.prod(patch)) * batch * base_filters * _BYTES_PER_VOXEL_FILTER / 2**20
