"""Calibrated confidence: one temperature fitted on the validation fold after training, and each case's
predicted quality (expected Dice) from the calibrated probabilities.

Dice + cross-entropy networks are over-confident (nnU-Net issue 2763). One temperature ``T`` (Guo et al.,
2017) that minimises the negative log-likelihood of validation voxels corrects most of it and changes no
label: the argmax is the same for every ``T``. The sliding window averages logits before its softmax, so
``normalise(p ** (1 / T))`` is exactly ``softmax(z / T)`` for one network (an ensemble's averaged
probabilities are tempered the same way, approximately).

The predicted quality of a label is the Dice the hard prediction is expected to have if the calibrated
probabilities are right: ``2 sum(p_k * [y == k]) / (sum(p_k) + sum([y == k]))`` (the soft Dice between the
prediction and its own probabilities); a case's quality is its lowest label's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from medseg.preprocess.half import as_float32

TEMPERATURE_RANGE = (0.05, 20.0)
VOXELS_PER_CASE = 200_000  # foreground (truth or prediction) voxels kept per case, as many background ones again
EPS = 1e-12  # log(0) guard; float32 holds it (float16 probabilities underflow to 0 below ~6e-8)


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities ``(K, ...)`` at ``temperature`` (1: unchanged), summing to 1 over axis 0, in their own
    dtype (float32 temporaries, in torch: numpy's float16 casts are slow, :mod:`medseg.preprocess.half`)."""
    if temperature == 1.0:
        return probs
    logp = torch.log(as_float32(probs).clamp(EPS, 1.0)) / float(temperature)
    tempered = torch.softmax(logp, dim=0)
    return tempered.to(torch.from_numpy(np.empty(0, probs.dtype)).dtype).numpy()


def expected_dice(probs: np.ndarray, label: np.ndarray, values: list[int]) -> dict[int, float]:
    """Expected Dice of each foreground label value of ``label`` (``(X, Y, Z)``) under ``probs``
    (``(K, X, Y, Z)``, channel ``k`` = ``values[k]``). A label absent from both scores 1."""
    quality = {}
    for k, value in enumerate(values):
        if value == 0:
            continue
        mask = label == value
        total = float(probs[k].sum(dtype=np.float64)) + float(mask.sum())
        quality[value] = 2.0 * float(probs[k][mask].sum(dtype=np.float64)) / total if total > EPS else 1.0
    return quality


@dataclass
class VoxelSample:
    """Log-probabilities and true classes of validation voxels, for :func:`fit_temperature`: per case every
    foreground voxel (of the truth or the prediction; at most :data:`VOXELS_PER_CASE`, drawn at random) and as
    many random other voxels, each weighted by how many voxels of its kind it stands for, so the fit is the
    whole volume's (the expected Dice sums over every voxel). Voxels predicted as a class the case did not
    contour are left out (their truth is unknown)."""

    seed: int = 0
    logp: list[np.ndarray] = field(default_factory=list)  # (n, K) float32 each
    truth: list[np.ndarray] = field(default_factory=list)  # (n,) class index each
    weight: list[np.ndarray] = field(default_factory=list)  # (n,) voxels each sampled voxel stands for

    def add(self, probs: np.ndarray, truth: np.ndarray, contoured: np.ndarray) -> None:
        """One case: ``probs`` ``(K, X, Y, Z)``, ``truth`` ``(X, Y, Z)`` class indices, ``contoured`` ``(K,)``
        bool."""
        rng = np.random.default_rng(self.seed + len(self.truth))
        predicted = probs.argmax(axis=0)
        known = contoured[predicted]
        is_foreground = (truth > 0) | (predicted > 0)
        foreground = np.flatnonzero(is_foreground & known)
        background = np.flatnonzero(~is_foreground & known)
        kept_fg = _at_most(foreground, VOXELS_PER_CASE, rng)
        kept_bg = _at_most(background, max(len(kept_fg), 1000), rng)
        picked = np.concatenate([kept_fg, kept_bg])
        flat = probs.reshape(probs.shape[0], -1)
        self.logp.append(np.log(np.clip(flat[:, picked].T.astype(np.float32), EPS, 1.0)))
        self.truth.append(truth.reshape(-1)[picked].astype(np.int64))
        self.weight.append(np.concatenate([np.full(len(kept_fg), len(foreground) / max(len(kept_fg), 1)),
                                           np.full(len(kept_bg), len(background) / max(len(kept_bg), 1))]))


def _at_most(indices: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return indices if len(indices) <= n else rng.choice(indices, n, replace=False)


def negative_log_likelihood(logp: np.ndarray, truth: np.ndarray, temperature: float,
                             weight: np.ndarray | None = None) -> float:
    """Mean NLL (weighted by ``weight``, default equal) of ``truth`` (``(n,)``) under ``softmax(logp / T)``
    (``logp`` ``(n, K)``)."""
    z = logp / temperature
    z -= z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.average(log_norm - z[np.arange(len(truth)), truth], weights=weight))


def fit_temperature(sample: VoxelSample) -> dict:
    """The temperature (within :data:`TEMPERATURE_RANGE`) minimising the sample's NLL, with the NLL before
    and after. ``{"temperature": 1.0, ...}`` when the sample is empty."""
    if not sample.truth:
        return {"temperature": 1.0, "voxels": 0}
    logp, truth, weight = (np.concatenate(x) for x in (sample.logp, sample.truth, sample.weight))
    low, high = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    found = minimize_scalar(lambda t: negative_log_likelihood(logp, truth, float(np.exp(t)), weight),
                            bounds=(low, high), method="bounded", options={"xatol": 1e-3})
    temperature = float(np.exp(found.x))
    return {"temperature": round(temperature, 4), "voxels": int(len(truth)),
            "nll_before": negative_log_likelihood(logp, truth, 1.0, weight), "nll_after": float(found.fun)}
