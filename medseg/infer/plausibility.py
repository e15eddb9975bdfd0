"""Is this input like the training data, and is this result like the training labels?

Each check compares one case with the model's training fingerprint (``fingerprint.json`` in the model
folder: ``ranges`` of spacing and field of view per canonical axis, foreground ``intensity`` per channel,
``label_volume_mm3`` per label) and returns one-line flags. Flags go into the case JSON, ``summary.csv``
and ``summary.json``; ``medseg infer --fail-on-flags`` counts a flagged case as failed. A hippocampus-crop
model run on a whole-brain series is flagged twice: field of view and label volume.
"""

from __future__ import annotations

import numpy as np

from medseg.preprocess.crop import nonzero_box
from medseg.preprocess.fingerprint import training_ranges
from medseg.preprocess.orientation import canonical_ornt
from medseg.preprocess.plan import Plan
from medseg.types import Volume

# An input axis may be this many times finer or coarser than the training range before it is flagged.
SPACING_FACTOR = 2.0
# A field of view (extent of the non-zero region) over this many times the training maximum is flagged.
EXTENT_FACTOR = 1.5
# Fewer non-zero voxels than this fraction inside the training foreground intensity range is flagged (a CT
# scan has far more soft tissue than that; an MR fed to a CT model, or other units, has next to none).
MIN_INTENSITY_OVERLAP = 0.05
# CT voxels at or below this (HU) are air or padding around the body, not another intensity scale: left out of
# the intensity check (they were 96 % of an OpenKBP head-and-neck CT, which was flagged on every case).
AIR_HU = -900.0
# A label volume below half the training 5th percentile or above 1.5x the 95th is flagged.
VOLUME_LOW, VOLUME_HIGH = 0.5, 1.5
# A label whose predicted quality (expected Dice, medseg.model.calibration) is below this is flagged: the
# Dice under which benchmarks/qa_flags.py counts a result as failed, fixed before measuring.
LOW_QUALITY = 0.5
_MODALITY_WORDS = {"CT": ("ct",), "MR": ("mr", "mri", "t1", "t2", "flair", "dwi", "adc")}


def input_flags(volume: Volume, plan: Plan, fingerprint: dict | None) -> list[str]:
    """Flags for an input that does not look like the training images (modality, spacing, field of view,
    intensities); empty when it does or when the model has no fingerprint."""
    flags = _modality_flags(volume, plan)
    ranges = (fingerprint or {}).get("ranges")
    if not ranges and fingerprint and "spacings" in fingerprint:  # a run folder from before ranges were kept
        ranges = training_ranges(fingerprint["spacings"], fingerprint["shapes"])
    if ranges:
        spacing, extent = canonical_geometry(volume)
        for axis, name in enumerate("xyz"):
            low, high = ranges["spacing_min"][axis], ranges["spacing_max"][axis]
            if not low / SPACING_FACTOR <= spacing[axis] <= high * SPACING_FACTOR:
                flags.append(f"spacing {spacing[axis]:.3g} mm along {name}, training {low:.3g}-{high:.3g} mm")
        limit = np.asarray(ranges["extent_mm_max"]) * EXTENT_FACTOR
        if (extent > limit).any():
            flags.append(f"field of view {_mm(extent)} mm, training at most {_mm(ranges['extent_mm_max'])} mm "
                         "(a whole scan for a model trained on crops?)")
    for c, stats in enumerate((fingerprint or {}).get("intensity", [])[: volume.num_channels]):
        channel = volume.array if volume.array.ndim == 3 else volume.array[c]
        values = channel[(channel != 0) & (channel > AIR_HU if _is_ct(plan, c) else True)]
        inside = float(((values >= stats["p00_5"]) & (values <= stats["p99_5"])).mean()) if values.size else 0.0
        if inside < MIN_INTENSITY_OVERLAP:
            flags.append(f"channel {c}: only {100 * inside:.1f}% of voxels within the training foreground "
                         f"intensities {stats['p00_5']:.4g}..{stats['p99_5']:.4g}")
    return flags


def result_flags(label: Volume, labels: dict[int, str], fingerprint: dict | None) -> list[str]:
    """Flags for a label map unlike the training labels: a volume outside the training range, or a
    structure missing that (nearly) every training case had."""
    flags = []
    voxel = float(np.prod(label.spacing))
    volumes = (fingerprint or {}).get("label_volume_mm3", {})
    for value, name in sorted(labels.items()):
        ref = volumes.get(str(value))
        if value == 0 or not ref:
            continue
        size = float((label.array == value).sum()) * voxel
        if size > 0 and not ref["p05"] * VOLUME_LOW <= size <= ref["p95"] * VOLUME_HIGH:
            flags.append(f"{name}: volume {size:.0f} mm3 outside the training range {ref['p05']:.0f}-"
                         f"{ref['p95']:.0f} mm3")
        elif size == 0 and ref["p05"] > 0:
            flags.append(f"{name}: missing (present in 95% of training cases)")
    return flags


def quality_flags(quality: dict[int, float], labels: dict[int, str]) -> list[str]:
    """One flag naming the labels whose predicted quality (value -> expected Dice) is below
    :data:`LOW_QUALITY`, lowest first (none when every label is above it)."""
    low = sorted((q, labels[v]) for v, q in quality.items() if q < LOW_QUALITY)
    if not low:
        return []
    return ["low predicted quality: " + ", ".join(f"{name} expected Dice {q:.2f}" for q, name in low)]


def canonical_geometry(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Spacing (mm) and extent of the non-zero region (mm) along the canonical closest-RAS axes."""
    array = volume.array if volume.array.ndim == 4 else volume.array[None]
    box = nonzero_box(array)
    extent = np.array([(b - a) for a, b in box], float) * np.asarray(volume.spacing)
    order = canonical_ornt(volume.affine)[:, 0].astype(int)  # stored axis i -> canonical axis order[i]
    spacing, span = np.empty(3), np.empty(3)
    spacing[order], span[order] = np.asarray(volume.spacing), extent
    return spacing, span


def _is_ct(plan: Plan, channel: int) -> bool:
    return str(plan.channels.get(channel, "")).strip().upper() == "CT"


def _modality_flags(volume: Volume, plan: Plan) -> list[str]:
    found = str(volume.meta.get("modality") or "").upper()
    if found not in _MODALITY_WORDS:
        return []
    trained = " ".join(plan.channels.values()).lower()
    known = {m for m, words in _MODALITY_WORDS.items() if any(w in trained.split() for w in words)}
    if known and found not in known:
        return [f"modality {found}, the model was trained on {', '.join(sorted(known))}"]
    return []


def _mm(values) -> str:
    return " x ".join(f"{v:.0f}" for v in values)
