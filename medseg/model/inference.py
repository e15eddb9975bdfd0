"""The one prediction path: preprocess as planned, sliding window, undo preprocessing, post-process.

``medseg infer`` (through :class:`medseg.infer.predictor.Predictor`) and training's validation (between epochs,
on the schedule of :mod:`medseg.train.schedule`, and the final one) both call :func:`predict_volume`, so
validation scores are exactly what inference followed by ``medseg evaluate`` gives on the same cases.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from medseg.config import MAX_OVERLAP
from medseg.errors import MedsegError
from medseg.model.calibration import expected_dice, temper
from medseg.model.sliding import predict_probabilities
from medseg.postprocess import ComponentRule, postprocess
from medseg.preprocess.half import to_float16
from medseg.preprocess.pipeline import Trace, preprocess, restore_labels, restore_probabilities
from medseg.preprocess.plan import Plan
from medseg.types import Volume


@dataclass(frozen=True)
class InferenceSettings:
    """What changes a result besides the weights: sliding-window overlap, mirroring and post-processing; and
    the temperature the probabilities are calibrated with (:mod:`medseg.model.calibration`; no label changes).
    ``focus``: only the windows that can reach the foreground run (:mod:`medseg.model.focused`; the labels are the
    plain pass's, background probabilities far from the foreground average fewer windows). ``compile``: a job
    large enough may compile the network for CPU inference (:mod:`medseg.model.compiled`)."""

    overlap: float = 0.5
    mirror: bool = False
    sw_batch_size: int = 2
    focus: bool = True
    compile: bool = True
    rules: dict[int, ComponentRule] = field(default_factory=dict)
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.overlap) <= MAX_OVERLAP:
            raise MedsegError(f"overlap must be between 0 and {MAX_OVERLAP}, got {self.overlap}")


@dataclass
class Prediction:
    """Result for one volume.

    Attributes:
        label: Label map on the input's grid (same shape and affine), uint8 (int16 for values over 255).
        probabilities: ``(K, X, Y, Z)`` float16 on the input grid, when asked for.
        trace: What preprocessing did.
        timings: Seconds per stage (preprocess, predict, restore, postprocess).
        postprocess: Per-label component statistics.
        quality: Predicted quality per foreground label value: the expected Dice of the label map (before
            post-processing, on the network's grid) under the calibrated probabilities.
    """

    label: Volume
    trace: Trace
    timings: dict[str, float]
    probabilities: np.ndarray | None = None
    postprocess: dict = field(default_factory=dict)
    quality: dict[int, float] = field(default_factory=dict)


def predict_volume(nets: list[torch.nn.Module], volume: Volume, plan: Plan, settings: InferenceSettings,
                   device: torch.device, dtype: torch.dtype | None,
                   probabilities: bool = False) -> Prediction:
    """Segment ``volume`` (``(X, Y, Z)`` or ``(C, X, Y, Z)``) with one network or an ensemble.

    Probabilities of several networks are averaged before the argmax; the returned probabilities and the predicted
    quality are calibrated with ``settings.temperature``, the labels are not (they never depend on it). Mirroring
    (``settings.mirror``) flips only along ``plan.mirror_axes``, the axes the network was trained flipped along.
    """
    labels = dict(plan.labels)
    expected = plan.in_channels
    if volume.num_channels != expected:
        raise MedsegError(f"image has {volume.num_channels} channel(s), the model expects {expected}",
                          volume.meta.get("source"))
    timings = {}
    t = time.perf_counter()
    data, _, trace = preprocess(volume, None, plan)
    timings["preprocess"] = time.perf_counter() - t
    t = time.perf_counter()
    probs = None
    for net in nets:
        p = predict_probabilities(net, data, plan.patch_size, device, dtype, overlap=settings.overlap,
                                  sw_batch_size=settings.sw_batch_size, mirror=settings.mirror,
                                  mirror_axes=plan.mirror_axes, focus=settings.focus and 0 in labels,
                                  compile=settings.compile)
        probs = p if probs is None else probs + p
    if len(nets) > 1:
        probs /= len(nets)
    values = sorted(labels)
    tempered = temper(probs, settings.temperature)
    quality = expected_dice(tempered, np.asarray(values)[probs.argmax(axis=0)], values)
    timings["predict"] = time.perf_counter() - t
    t = time.perf_counter()
    # labels from the untempered probabilities: resampling tempered ones to the input grid would move boundaries
    label = restore_labels(probs, trace, values)
    full_probs = to_float16(restore_probabilities(tempered, trace)) if probabilities else None
    del tempered
    timings["restore"] = time.perf_counter() - t
    t = time.perf_counter()
    label, stats = postprocess(label, settings.rules, volume.spacing) if settings.rules else (label, {})
    timings["postprocess"] = time.perf_counter() - t
    dtype_out = np.uint8 if max(labels) < 256 else np.int16
    out = Volume(label.astype(dtype_out), volume.affine.copy(), {})
    return Prediction(label=out, trace=trace, timings=timings, probabilities=full_probs, postprocess=stats,
                      quality=quality)


def component_rules(rules: dict, labels: dict[int, str]) -> dict[int, ComponentRule]:
    """A config's post-processing rules as :class:`ComponentRule` objects; a rule for a label the model does
    not have is an error."""
    checked = {int(k): ComponentRule.from_dict(v) for k, v in rules.items()}
    if unknown := sorted(set(checked) - set(labels)):
        known = ", ".join(f"{k} {v}" for k, v in labels.items() if k != 0)
        raise MedsegError(f"postprocess.rules name label(s) {unknown} the model does not have (labels: {known})")
    return checked
