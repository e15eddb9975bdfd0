"""Load a model folder and segment volumes: preprocess exactly as in training, predict, undo, clean up.

``Predictor.from_dir(model_dir).predict(volume)`` returns a :class:`Prediction` whose label map has
exactly the input's shape and affine.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from medseg.config import RunConfig
from medseg.errors import MedsegError
from medseg.infer.sliding import autocast_dtype, predict_probabilities, resolve_device
from medseg.postprocess import ComponentRule, postprocess
from medseg.preprocess.pipeline import Trace, preprocess, restore_labels, restore_probabilities
from medseg.types import Volume


@dataclass
class Prediction:
    """Result for one volume.

    Attributes:
        label: uint8 label map on the input's grid (same shape and affine).
        probabilities: ``(K, X, Y, Z)`` float16 on the input grid, when asked for.
        trace: What preprocessing did.
        timings: Seconds per stage (preprocess, predict, restore, postprocess).
        postprocess: Per-label component statistics.
    """

    label: Volume
    trace: Trace
    timings: dict[str, float]
    probabilities: np.ndarray | None = None
    postprocess: dict = field(default_factory=dict)


class Predictor:
    """A trained model (or several folds) ready to segment volumes."""

    def __init__(self, nets: list[torch.nn.Module], plan: dict, config: RunConfig, device: torch.device,
                 dtype: torch.dtype | None, model_id: str):
        self.nets, self.plan, self.config = nets, plan, config
        self.device, self.dtype, self.model_id = device, dtype, model_id
        self.labels = {int(k): v for k, v in plan["labels"].items()}
        self.rules = _rules(config, self.labels)
        self.model_dir: Path | None = None

    @classmethod
    def from_dir(cls, model_dir: str | Path, device: str = "auto", precision: str = "auto") -> Predictor:
        """Load a model folder or its ``.zip`` (``medseg train`` or ``medseg export``), or a folder of fold
        folders (ensembled by averaging probabilities).

        Every folder's SHA256SUMS is verified and weights are loaded with ``weights_only=True``; a zip is
        extracted safely to a temporary folder that is gone once the model is loaded.
        """
        from medseg.model import build_network
        from medseg.model.folder import combined_id, open_model

        dev = resolve_device(device)
        nets, plan, config = [], None, None
        with open_model(model_dir) as folders:
            for folder in folders:
                folder.check()
                this_plan = folder.load_plan()
                if plan is not None and this_plan != plan:
                    raise MedsegError("fold folders were trained with different plans; cannot ensemble",
                                      folder.path)
                plan, config = this_plan, folder.load_config()
                net = build_network(plan, config.model.__dict__)
                net.load_state_dict(folder.load_weights())
                nets.append(net.to(dev).eval())
            model_id = combined_id(folders)
        dtype = autocast_dtype(precision if precision != "auto" else config.train.precision, dev)
        predictor = cls(nets, plan, config, dev, dtype, model_id)
        predictor.model_dir = Path(model_dir)
        return predictor

    def settings(self, mirror: bool | None = None, overlap: float | None = None) -> dict:
        """The options that change a result, resolved against the model's config (``None``: the config's).

        Recorded in every case JSON, so a re-run can tell whether an earlier result still holds.
        """
        cfg = self.config.infer
        overlap = float(cfg.overlap if overlap is None else overlap)
        if not 0.0 <= overlap < 1.0:
            raise MedsegError(f"overlap must be in [0, 1), got {overlap}")
        return {"mirror_tta": bool(cfg.mirror_tta if mirror is None else mirror), "overlap": overlap,
                "postprocess": {str(k): asdict(r) for k, r in sorted(self.rules.items())}}

    def predict(self, volume: Volume, keep_probabilities: bool = False, mirror: bool | None = None,
                overlap: float | None = None) -> Prediction:
        """Segment ``volume`` (``(X, Y, Z)`` or ``(C, X, Y, Z)``)."""
        timings = {}
        t = time.perf_counter()
        channels = volume.num_channels
        expected = max(1, len(self.plan["channels"]))
        if channels != expected:
            raise MedsegError(f"image has {channels} channel(s), the model expects {expected}",
                              volume.meta.get("source"))
        data, _, trace = preprocess(volume, None, self.plan)
        timings["preprocess"] = time.perf_counter() - t
        t = time.perf_counter()
        chosen = self.settings(mirror, overlap)
        probs = None
        for net in self.nets:
            p = predict_probabilities(net, data, self.plan["patch_size"], self.device, self.dtype,
                                      overlap=chosen["overlap"], sw_batch_size=self.config.infer.sw_batch_size,
                                      mirror=chosen["mirror_tta"])
            probs = p if probs is None else probs + p
        probs /= len(self.nets)
        timings["predict"] = time.perf_counter() - t
        t = time.perf_counter()
        label = restore_labels(probs, trace, sorted(self.labels))
        full_probs = restore_probabilities(probs, trace).astype(np.float16) if keep_probabilities else None
        timings["restore"] = time.perf_counter() - t
        t = time.perf_counter()
        label, stats = postprocess(label, self.rules, volume.spacing) if self.rules else (label, {})
        timings["postprocess"] = time.perf_counter() - t
        dtype = np.uint8 if max(self.labels) < 256 else np.int16
        out = Volume(label.astype(dtype), volume.affine.copy(), {"model_id": self.model_id})
        return Prediction(label=out, trace=trace, timings=timings, probabilities=full_probs, postprocess=stats)


def _rules(config: RunConfig, labels: dict[int, str]) -> dict[int, ComponentRule]:
    """The config's post-processing rules; a rule for a label the model does not have is an error."""
    rules = {int(k): ComponentRule.from_dict(v) for k, v in config.postprocess.rules.items()}
    if unknown := sorted(set(rules) - set(labels)):
        known = ", ".join(f"{k} {v}" for k, v in labels.items() if k != 0)
        raise MedsegError(f"postprocess.rules name label(s) {unknown} the model does not have (labels: {known})")
    return rules
