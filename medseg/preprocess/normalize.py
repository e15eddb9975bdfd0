"""Intensity normalisation per channel: CT by dataset statistics, everything else per image."""

from __future__ import annotations

import numpy as np


def channel_scheme(modality: str) -> str:
    """``"ct"`` for CT channels, ``"zscore"`` for MR and anything else."""
    return "ct" if "ct" in str(modality).lower().split() or str(modality).upper() == "CT" else "zscore"


def normalize(image: np.ndarray, schemes: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """Normalise a ``(C, X, Y, Z)`` image channel by channel.

    Args:
        schemes: Per channel ``{"scheme": "ct", "lower": .., "upper": .., "mean": .., "std": ..}``
            (foreground statistics from the fingerprint) or ``{"scheme": "zscore"}``.

    Returns:
        The float32 image and the parameters actually applied (recorded in the trace).
    """
    out = np.empty(image.shape, dtype=np.float32)
    applied = []
    for c, spec in enumerate(schemes):
        x = image[c].astype(np.float32, copy=False)
        if not np.isfinite(x).all():  # damaged voxels: set to the lowest finite value, never NaN downstream
            finite = x[np.isfinite(x)]
            x = np.where(np.isfinite(x), x, finite.min() if finite.size else 0.0).astype(np.float32)
        if spec["scheme"] == "ct":
            mean, std = float(spec["mean"]), max(float(spec["std"]), 1e-6)
            out[c] = (np.clip(x, spec["lower"], spec["upper"]) - mean) / std
            applied.append(dict(spec))
        else:
            mean, std = float(x.mean()), float(x.std())
            out[c] = (x - mean) / max(std, 1e-6)
            applied.append({"scheme": "zscore", "mean": mean, "std": std})
    return out, applied
