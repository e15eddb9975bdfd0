"""Load a model folder and segment volumes: preprocess exactly as in training, predict, undo, clean up.

``Predictor.from_dir(model_dir).predict(volume)`` returns a :class:`Prediction` whose label map has
exactly the input's shape and affine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from medseg.config import RunConfig, config_from_dict
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
        self.model_dir: Path | None = None

    @classmethod
    def from_dir(cls, model_dir: str | Path, device: str = "auto", precision: str = "auto") -> Predictor:
        """Load a model folder, or a folder of fold folders (ensembled by averaging probabilities).

        The folder's SHA256SUMS is verified and weights are loaded with ``weights_only=True``.
        """
        from medseg.model import build_network
        from medseg.train.checkpoint import verify_sha256sums
        from medseg.train.data import load_plan

        root = Path(model_dir)
        folders = [root] if (root / "plan.json").exists() else sorted(p.parent for p in root.glob("*/plan.json"))
        if not folders:
            raise MedsegError("not a model folder (no plan.json)", root)
        dev = resolve_device(device)
        nets, plan, config = [], None, None
        for folder in folders:
            for name in ("weights.pt", "config.yaml", "SHA256SUMS"):
                if not (folder / name).exists():
                    raise MedsegError(f"model folder is incomplete: {name} missing", folder)
            if bad := verify_sha256sums(folder):
                raise MedsegError(f"model files changed since training (SHA256SUMS mismatch: {', '.join(bad)})",
                                  folder)
            this_plan = load_plan(folder / "plan.json")
            if plan is not None and this_plan != plan:
                raise MedsegError("fold folders were trained with different plans; cannot ensemble", folder)
            plan = this_plan
            config = config_from_dict(yaml.safe_load((folder / "config.yaml").read_text()), str(folder))
            net = build_network(plan, config.model.__dict__)
            state = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
            net.load_state_dict(state)
            nets.append(net.to(dev).eval())
        model_id = (folders[0] / "SHA256SUMS").read_text().split()[0][:12]
        dtype = autocast_dtype(precision if precision != "auto" else config.train.precision, dev)
        predictor = cls(nets, plan, config, dev, dtype, model_id)
        predictor.model_dir = root
        return predictor

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
        cfg = self.config.infer
        probs = None
        for net in self.nets:
            p = predict_probabilities(net, data, self.plan["patch_size"], self.device, self.dtype,
                                      overlap=cfg.overlap if overlap is None else overlap,
                                      sw_batch_size=cfg.sw_batch_size,
                                      mirror=cfg.mirror_tta if mirror is None else mirror)
            probs = p if probs is None else probs + p
        probs /= len(self.nets)
        timings["predict"] = time.perf_counter() - t
        t = time.perf_counter()
        label = restore_labels(probs, trace, sorted(self.labels))
        full_probs = restore_probabilities(probs, trace).astype(np.float16) if keep_probabilities else None
        timings["restore"] = time.perf_counter() - t
        t = time.perf_counter()
        rules = {int(k): ComponentRule(**v) for k, v in self.config.postprocess.rules.items()}
        label, stats = postprocess(label, rules, volume.spacing) if rules else (label, {})
        timings["postprocess"] = time.perf_counter() - t
        dtype = np.uint8 if max(self.labels) < 256 else np.int16
        out = Volume(label.astype(dtype), volume.affine.copy(), {"model_id": self.model_id})
        return Prediction(label=out, trace=trace, timings=timings, probabilities=full_probs, postprocess=stats)
