"""Validation is inference: every validation case goes through :func:`medseg.model.inference.predict_volume`
(preprocess, sliding window, restore to the original grid, post-processing) with the model's inference
settings, and is scored on its original grid, so ``validation.json`` equals ``medseg infer`` followed by
``medseg evaluate`` on the same cases.

Dice comes from MONAI's ``compute_dice`` (``ignore_empty=False``: a class absent from both prediction and
truth scores 1.0, as in ``medseg evaluate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medseg.data.dataset import Dataset
from medseg.model.inference import InferenceSettings, predict_volume
from medseg.preprocess.io import load_case
from medseg.preprocess.plan import Plan
from medseg.types import Volume


@dataclass
class ValidationSet:
    """Validation cases loaded once, on their original grids: ``images[i]`` ``(C, X, Y, Z)`` and ``labels[i]``."""

    ids: list[str]
    images: list[Volume]
    labels: list[Volume]

    def shard(self, rank: int, world: int) -> ValidationSet:
        """Every ``world``-th case from ``rank`` (each rank validates its own share)."""
        return ValidationSet(self.ids[rank::world], self.images[rank::world], self.labels[rank::world])


def load_validation(dataset: Dataset, ids: list[str]) -> ValidationSet:
    by_id = {c.id: c for c in dataset.cases}
    pairs = [load_case(by_id[i]) for i in ids]
    return ValidationSet(list(ids), [p[0] for p in pairs], [p[1] for p in pairs])


def validate(nets: list[torch.nn.Module], cases: ValidationSet, plan: Plan, settings: InferenceSettings,
             device: torch.device, dtype: torch.dtype | None) -> dict[str, dict[str, float]]:
    """Dice per foreground label (by name) for each case: ``{case id: {label name: dice}}``."""
    labels = dict(plan.labels)
    for net in nets:
        net.eval()
    scores = {}
    for case_id, image, truth in zip(cases.ids, cases.images, cases.labels, strict=True):
        prediction = predict_volume(nets, image, plan, settings, device, dtype)
        scores[case_id] = dice_by_label(prediction.label.array, truth.array, labels)
    for net in nets:
        net.train()
    return scores


def dice_by_label(pred: np.ndarray, truth: np.ndarray, labels: dict[int, str]) -> dict[str, float]:
    """MONAI Dice of each foreground label of two label maps on one grid."""
    from monai.metrics import compute_dice

    values = [v for v in sorted(labels) if v != 0]
    onehot = [torch.from_numpy(np.stack([a == v for v in values]))[None] for a in (pred, truth)]
    dice = compute_dice(onehot[0], onehot[1], include_background=True, ignore_empty=False)[0]
    return {labels[v]: float(d) for v, d in zip(values, dice.tolist(), strict=True)}


def summarise(cases: dict[str, dict[str, float]], label_names: list[str]) -> dict:
    """``{"per_class": {name: mean Dice}, "mean": float, "cases": cases}`` (means over cases)."""
    per_class = {name: float(np.mean([c[name] for c in cases.values()])) if cases else 0.0 for name in label_names}
    mean = float(np.mean(list(per_class.values()))) if per_class else 0.0
    return {"per_class": per_class, "mean": mean, "cases": cases}
