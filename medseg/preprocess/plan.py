"""Plan: target spacing, patch size, network topology, batch size and normalisation from a fingerprint.

The :class:`Plan` is the typed value that preprocessing, the network, training and inference share; it is
saved as ``plan.json`` beside every model and read back with its keys and types checked.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from medseg.config import RunConfig
from medseg.errors import MedsegError, one_line
from medseg.io.atomic import write_text_atomic
from medseg.preprocess.normalize import channel_scheme
from medseg.preprocess.resample import needs_separate_z

MIN_FEATURE_MAP = 4  # voxels per axis at the bottom of the U-Net
MAX_DOWNSAMPLINGS = 5
# Bytes of activations (forward + backward, mixed precision) per voxel per base filter, measured
# roughly on plain DynUNet: used only to scale patch and batch to the memory budget; other networks scale it
# by their registry entry's ``memory`` (:class:`medseg.model.networks.NetworkEntry`).
_BYTES_PER_VOXEL_FILTER = 60


@dataclass(frozen=True)
class Plan:
    """Every value a run needs, resolved. Per-axis values refer to the canonical closest-RAS axes.

    Attributes:
        target_spacing: Voxel size (mm) cases are resampled to.
        patch_size: Training patch and sliding-window size in voxels.
        strides, kernel_sizes, filters: DynUNet topology, one entry per level.
        normalization: Per channel ``{"scheme": "ct", lower, upper, mean, std}`` or ``{"scheme": "zscore"}``.
        labels: Label value -> name (0 is background); the network's class ``i`` is the ``i``-th value.
        channels: Channel index -> modality name.
        separate_z_axis: Axis resampled on its own for anisotropic data, or None.
        orientation: ``"RAS"``: cases are reoriented to closest RAS before anything else. Empty for plans
            written before medseg reoriented (their models saw arrays in stored order).
        mirror_axes: Canonical axes that training flips patches along and mirroring at inference averages
            over; the axis that separates left/right label pairs is left out (see :func:`mirror_axes`).
            ``[0, 1, 2]`` for plans written before medseg measured it.
    """

    target_spacing: list[float]
    patch_size: list[int]
    batch_size: int
    strides: list[list[int]]
    kernel_sizes: list[list[int]]
    filters: list[int]
    normalization: list[dict]
    labels: dict[int, str]
    channels: dict[int, str]
    separate_z_axis: int | None = None
    median_shape_resampled: list[float] = field(default_factory=list)
    crop_nonzero: bool = True
    anisotropy_threshold: float = 3.0
    orientation: str = ""
    mirror_axes: list[int] = field(default_factory=lambda: [0, 1, 2])

    @property
    def label_values(self) -> list[int]:
        """Label values in class-index order."""
        return sorted(self.labels)

    @property
    def in_channels(self) -> int:
        return max(1, len(self.channels))

    @property
    def foreground_names(self) -> list[str]:
        """Names of the foreground labels, in label-value order."""
        return [self.labels[v] for v in self.label_values if v != 0]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def write(self, path: str | Path) -> None:

        write_text_atomic(path, self.to_json())

    @classmethod
    def from_dict(cls, data: dict, where: str | Path = "plan") -> Plan:
        """A plan from its JSON form; unknown or missing keys are one-line errors."""
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        if unknown := sorted(set(data) - names):
            raise MedsegError(f"plan has unknown key(s) {', '.join(unknown)}", where)
        if missing := sorted(required - set(data)):
            raise MedsegError(f"plan lacks {', '.join(missing)}", where)
        try:
            values = {**data, "labels": {int(k): str(v) for k, v in data["labels"].items()},
                      "channels": {int(k): str(v) for k, v in data["channels"].items()}}
        except (TypeError, ValueError, AttributeError):
            raise MedsegError("plan labels and channels must map integers to names", where) from None
        return cls(**values)

    @classmethod
    def read(cls, path: str | Path) -> Plan:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise MedsegError(f"cannot read the plan ({one_line(exc, 150)})", path) from None
        if not isinstance(data, dict):
            raise MedsegError("plan must be a JSON object", path)
        return cls.from_dict(data, path)



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
              config: RunConfig, network_memory: float = 1.0) -> Plan:
    """Resolve every value a training run needs; config values that are set win over planned ones.

    Per-axis values (spacing, patch size, strides, kernels, separate-z axis) refer to the canonical
    closest-RAS axes that :func:`medseg.preprocess.preprocess` reorients every case to; the plan says
    so under ``orientation``.

    Args:
        network_memory: Activation memory of ``model.name`` relative to plain DynUNet (its registry entry's
            ``memory``), scaling what a patch costs against ``train.memory_budget_mb``.
    """
    pre, tr, model = config.preprocess, config.train, config.model
    spacing = list(pre.target_spacing) if pre.target_spacing else target_spacing(fingerprint, pre.anisotropy_threshold)
    median_spacing = np.asarray(fingerprint["median_spacing"], float)
    median_shape = np.asarray(fingerprint["median_shape"], float) * median_spacing / np.asarray(spacing)
    budget_mb = tr.memory_budget_mb / network_memory  # the budget in plain-DynUNet megabytes
    patch = list(tr.patch_size) if tr.patch_size else _patch_size(median_shape, spacing, budget_mb,
                                                                   model.base_filters)
    strides, kernels = topology(patch, spacing)
    batch = tr.batch_size or _batch_size(patch, budget_mb, model.base_filters)
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
    return Plan(
        orientation="RAS",
        target_spacing=spacing,
        separate_z_axis=separate,
        patch_size=[int(p) for p in patch],
        batch_size=int(batch),
        strides=strides,
        kernel_sizes=kernels,
        filters=filters,
        normalization=schemes,
        labels={int(k): v for k, v in labels.items()},
        channels={int(k): v for k, v in dataset_channels.items()},
        median_shape_resampled=[float(s) for s in median_shape],
        crop_nonzero=pre.crop_nonzero,
        anisotropy_threshold=pre.anisotropy_threshold,
        mirror_axes=mirror_axes(fingerprint, labels),
    )


# Words that mark a label as one side of the body; everything else in its name names the structure.
_LEFT, _RIGHT = {"left", "l", "lt"}, {"right", "r", "rt"}
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def lateral_pairs(labels: dict[int, str]) -> list[tuple[int, int]]:
    """``(left, right)`` label values whose names differ only in their side word.

    A name is split into words at non-alphanumerics, lower-to-upper case changes and digits (``LeftParotid``
    -> left, parotid; ``Kidney_L`` -> kidney, l; ``left lung`` -> left, lung), compared case-insensitively.
    A label is lateral when exactly one word is ``left``/``l``/``lt`` or ``right``/``r``/``rt``; a left and a
    right label pair up when their other words are equal. Whole words only: ``Brightness`` or ``cleft`` is no
    side, and a lone ``Kidney_L`` without a ``Kidney_R`` pairs with nothing.
    """
    sides: dict[str, dict[tuple[str, ...], int]] = {"left": {}, "right": {}}
    for value, name in labels.items():
        words = [w.lower() for w in _WORDS.findall(name)]
        marks = [i for i, w in enumerate(words) if w in _LEFT | _RIGHT]
        if value != 0 and len(marks) == 1:
            side = "left" if words[marks[0]] in _LEFT else "right"
            sides[side][tuple(words[:marks[0]] + words[marks[0] + 1:])] = int(value)
    return [(left, sides["right"][rest]) for rest, left in sides["left"].items() if rest in sides["right"]]


def mirror_axes(fingerprint: dict, labels: dict[int, str]) -> list[int]:
    """Canonical axes that flips may use: all three, less the axis each left/right label pair lies across.

    For each pair of :func:`lateral_pairs`, the axis is where the median over cases holding both labels of the
    difference of their centroids (fingerprint ``label_centroids_mm``, mm) is largest in magnitude: measured,
    not assumed to be the R axis, since a stored affine need not encode the patient's orientation (OpenKBP's
    is a plain diagonal, and its parotids lie across axis 1). A pair no case holds both of, and a fingerprint
    written before medseg measured centroids, exclude nothing.
    """
    excluded = set()
    cases = fingerprint.get("label_centroids_mm", [])
    for left, right in lateral_pairs(labels):
        diffs = [np.subtract(c[str(left)], c[str(right)]) for c in cases if str(left) in c and str(right) in c]
        if diffs:
            excluded.add(int(np.argmax(np.abs(np.median(diffs, axis=0)))))
    return [a for a in range(3) if a not in excluded]


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


def _patch_size(median_shape, spacing, budget_mb: float, base_filters: int) -> list[int]:
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


def _batch_size(patch, budget_mb: float, base_filters: int) -> int:
    fits = int(budget_mb // max(_cost_mb(np.asarray(patch, float), 1, base_filters), 1e-6))
    return int(np.clip(fits, 2, 4))


def _cost_mb(patch, batch: int, base_filters: int) -> float:
    return float(np.prod(patch)) * batch * base_filters * _BYTES_PER_VOXEL_FILTER / 2**20
