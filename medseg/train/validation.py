"""Validation is inference: every validation case goes through :func:`medseg.model.inference.predict_volume`
(preprocess, sliding window, restore to the original grid, post-processing) with the model's inference
settings, and is scored on its original grid, so ``validation.json`` equals ``medseg infer`` followed by
``medseg evaluate`` on the same cases.

Dice comes from MONAI's ``compute_dice`` (``ignore_empty=False``: a class absent from both prediction and
truth scores 1.0, as in ``medseg evaluate``).

With partial annotations (``Case.annotated``) a class is scored only in the cases that contoured it: an
uncontoured class has no entry in that case's scores, and class means are over the cases that have one
(``medseg evaluate`` omits the same rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import compute_dice

from medseg.config import RunConfig
from medseg.data.dataset import Case, Dataset
from medseg.model.calibration import VoxelSample
from medseg.model.inference import InferenceSettings, component_rules, predict_volume
from medseg.preprocess.io import load_case
from medseg.preprocess.plan import Plan
from medseg.types import Volume


@dataclass
class ValidationSet:
    """Validation cases loaded once, on their original grids: ``images[i]`` ``(C, X, Y, Z)`` and ``labels[i]``;
    ``cases[i]`` says which labels were contoured (:meth:`medseg.data.dataset.Case.contoured`)."""

    ids: list[str]
    images: list[Volume]
    labels: list[Volume]
    cases: list[Case]

    def first(self, n: int) -> ValidationSet:
        """The first ``n`` cases."""
        return self._take(slice(n))

    def extent(self) -> float:
        """Scanned volume of all cases (mm³, at least 1): what a validation pass's time grows with."""
        mm3 = [float(np.prod(v.spatial_shape)) * abs(np.linalg.det(v.affine[:3, :3])) for v in self.images]
        return max(sum(mm3), 1.0)

    def shard(self, rank: int, world: int) -> ValidationSet:
        """Every ``world``-th case from ``rank`` (each rank validates its own share)."""
        return self._take(slice(rank, None, world))

    def _take(self, which: slice) -> ValidationSet:
        return ValidationSet(self.ids[which], self.images[which], self.labels[which], self.cases[which])


def inference_settings(config: RunConfig, plan: Plan, mirror: bool) -> InferenceSettings:
    """The model's own inference settings (what ``medseg infer`` uses by default), mirroring as asked, with the
    eager network: a package compiled for weights that change every epoch would be compiled again at every pass,
    and a time budget keeps no time for compiling (a phantom run's final validation, 1 case of 160x160x40, 4,374
    window forwards with mirroring: 55 s with two compilations against ~27 s eager; AMD EPYC Zen 4, 2026-12-08)."""
    return InferenceSettings(overlap=config.infer.overlap, mirror=mirror, sw_batch_size=config.infer.sw_batch_size,
                             focus=config.infer.focus, compile=False,
                             rules=component_rules(config.postprocess.rules, dict(plan.labels)))


def load_validation(dataset: Dataset, ids: list[str]) -> ValidationSet:
    by_id = {c.id: c for c in dataset.cases}
    pairs = [load_case(by_id[i]) for i in ids]
    return ValidationSet(list(ids), [p[0] for p in pairs], [p[1] for p in pairs], [by_id[i] for i in ids])


def validate(nets: list[torch.nn.Module], cases: ValidationSet, plan: Plan, settings: InferenceSettings,
             device: torch.device, dtype: torch.dtype | None) -> dict[str, dict[str, float]]:
    """Dice per contoured foreground label (by name) for each case: ``{case id: {label name: dice}}``."""
    return score_labels(predict_labels(nets, cases, plan, settings, device, dtype), cases, dict(plan.labels))


def predict_labels(nets: list[torch.nn.Module], cases: ValidationSet, plan: Plan, settings: InferenceSettings,
                   device: torch.device, dtype: torch.dtype | None,
                   sample: VoxelSample | None = None) -> Iterator[np.ndarray]:
    """The label map of each case in turn on its original grid (``(X, Y, Z)``, uint8 or int16), with the
    post-processing of ``settings``; with ``sample``, each case's probabilities (on its original grid) are
    sampled into it for calibration. The networks are in eval mode until the last one is out."""
    for net in nets:
        net.eval()
    values = sorted(plan.labels)
    index = np.zeros(max(values) + 1, np.int64)
    index[values] = np.arange(len(values))  # label value -> channel
    try:
        for image, truth, case in zip(cases.images, cases.labels, cases.cases, strict=True):
            prediction = predict_volume(nets, image, plan, settings, device, dtype, probabilities=sample is not None)
            if sample is not None:
                sample.add(prediction.probabilities, index[truth.array.astype(np.int64)],
                           np.array([case.contoured(v) for v in values]))
            yield prediction.label.array
    finally:
        for net in nets:
            net.train()


def score_labels(maps: Iterable[np.ndarray], cases: ValidationSet,
                 labels: dict[int, str]) -> dict[str, dict[str, float]]:
    """Dice of the i-th map against case i's truth per label that case contoured: ``{case id: {label name:
    dice}}``; the maps are read one at a time."""
    scores = {}
    for case_id, label_map, truth, case in zip(cases.ids, maps, cases.labels, cases.cases, strict=True):
        contoured = {v: name for v, name in labels.items() if case.contoured(v)}
        scores[case_id] = dice_by_label(label_map, truth.array, contoured)
    return scores


def dice_by_label(pred: np.ndarray, truth: np.ndarray, labels: dict[int, str]) -> dict[str, float]:
    """MONAI Dice of each foreground label of two label maps on one grid (``{}`` when there is none)."""
    values = [v for v in sorted(labels) if v != 0]
    if not values:
        return {}
    onehot = [torch.from_numpy(np.stack([a == v for v in values]))[None] for a in (pred, truth)]
    dice = compute_dice(onehot[0], onehot[1], include_background=True, ignore_empty=False)[0]
    return {labels[v]: float(d) for v, d in zip(values, dice.tolist(), strict=True)}


def summarise(cases: dict[str, dict[str, float]], label_names: list[str]) -> dict:
    """``{"per_class": {name: mean Dice}, "mean": float, "scored_cases": {name: n}, "cases": cases}``.

    A class's mean is over the cases that scored it (contoured it); a class no case scored is left out of
    ``per_class`` and so of ``mean``, the mean of the class means (0.0 when no class was scored).
    """
    scored = {name: [c[name] for c in cases.values() if name in c] for name in label_names}
    per_class = {name: float(np.mean(values)) for name, values in scored.items() if values}
    mean = float(np.mean(list(per_class.values()))) if per_class else 0.0
    return {"per_class": per_class, "mean": mean, "scored_cases": {name: len(v) for name, v in scored.items()},
            "cases": cases}
