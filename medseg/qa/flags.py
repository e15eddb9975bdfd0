"""Flags that send a case to a human: empty masks, implausible volumes, border contact, low confidence,
geometry mismatch."""

from __future__ import annotations

import numpy as np

from medseg.preprocess.fingerprint import labels_on_border

# A label volume is implausible below half the training 5th percentile or above 1.5x the 95th.
VOLUME_LOW, VOLUME_HIGH = 0.5, 1.5
LOW_CONFIDENCE = 0.80  # mean max-probability over predicted foreground
# A label that touched the grid's border in at least this share of the training cases holding it (nodule crops:
# 72 % of LIDC's) is not flagged for touching it; without that statistic (older models) every contact is.
BORDER_USUAL = 0.5


def case_flags(label: np.ndarray, spacing, labels: dict[int, str], training_volumes: dict | None = None,
               probabilities: np.ndarray | None = None, geometry_problems: list[str] | None = None,
               training_border: dict | None = None) -> list[str]:
    """Human-readable flags for one predicted label map (empty list: nothing to look at).

    Args:
        training_volumes: ``fingerprint.json``'s ``label_volume_mm3`` (per label value: p05, p95).
        probabilities: ``(K, X, Y, Z)`` when the prediction saved them.
        training_border: ``fingerprint.json``'s ``label_border_fraction`` (per label value).
    """
    flags = [f"geometry mismatch: {p}" for p in geometry_problems or []]
    if not (label > 0).any():
        flags.append("empty mask: no structure found")
    voxel = float(np.prod(spacing))
    for value, name in labels.items():
        if value == 0:
            continue
        volume = float((label == value).sum()) * voxel
        ref = (training_volumes or {}).get(str(value))
        if ref and volume > 0 and not ref["p05"] * VOLUME_LOW <= volume <= ref["p95"] * VOLUME_HIGH:
            flags.append(f"{name}: volume {volume:.0f} mm3 outside the training range "
                         f"{ref['p05']:.0f}-{ref['p95']:.0f} mm3")
        elif ref and volume == 0 and ref["p05"] > 0:
            flags.append(f"{name}: missing (present in 95% of training cases)")
    usual = training_border or {}
    for value in labels_on_border(label):
        if value in labels and usual.get(str(value), 0.0) < BORDER_USUAL:
            flags.append(f"{labels[value]} touches the scan border (structure may be cut off)")
    if probabilities is not None and (label > 0).any():
        confidence = float(probabilities.max(axis=0)[label > 0].astype(np.float32).mean())
        if confidence < LOW_CONFIDENCE:
            flags.append(f"low confidence: mean max-probability {confidence:.2f} over the structure")
    return flags
