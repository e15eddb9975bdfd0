"""Load a model folder and segment volumes: preprocess exactly as in training, predict, undo, clean up.

``Predictor.from_dir(model_dir).predict(volume)`` returns a :class:`Prediction` whose label map has
exactly the input's shape and affine.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from medseg.config import RunConfig
from medseg.errors import MedsegError, ModelError, one_line
from medseg.model import build_network
from medseg.model.device import autocast_dtype, precision_for, resolve_device
from medseg.model.folder import combined_id, open_model
from medseg.model.inference import InferenceSettings, Prediction, component_rules, predict_volume
from medseg.postprocess import ComponentRule
from medseg.preprocess.plan import Plan
from medseg.types import Volume

log = logging.getLogger(__name__)

__all__ = ["Predictor", "Prediction"]


class Predictor:
    """A trained model (or several folds) ready to segment volumes."""

    def __init__(self, nets: list[torch.nn.Module], plan: Plan, config: RunConfig, device: torch.device,
                 dtype: torch.dtype | None, model_id: str, chosen_rules: dict[int, ComponentRule] | None = None):
        self.nets, self.plan, self.config = nets, plan, config
        self.device, self.dtype, self.model_id = device, dtype, model_id
        self.labels = dict(plan.labels)
        # Rules chosen on validation (postprocess.json), each replaced by the config's rule for its label.
        self.rules = {**(chosen_rules or {}), **component_rules(config.postprocess.rules, self.labels)}
        self.model_dir: Path | None = None
        self.fingerprint: dict | None = None  # training statistics, for plausibility flags
        self.temperature = 1.0  # calibrates the probabilities and the predicted quality; never changes a label

    @classmethod
    def from_dir(cls, model_dir: str | Path, device: str = "auto", precision: str = "auto") -> Predictor:
        """Load a model folder or its ``.zip`` (``medseg train`` or ``medseg export``), or a folder of fold
        folders (ensembled by averaging probabilities). Post-processing chosen on validation
        (``postprocess.json``) applies where every fold chose the same rule.

        Every folder's SHA256SUMS is verified and weights are loaded with ``weights_only=True``; a zip is
        extracted safely to a temporary folder that is gone once the model is loaded.
        """
        dev = resolve_device(device)
        nets, plan, config, fingerprint, chosen, temperatures = [], None, None, None, [], []
        try:
            with open_model(model_dir) as folders:
                for folder in folders:
                    folder.check()
                    for text in folder.compatibility_warnings():
                        log.warning("%s: %s", folder.path, text)
                    this_plan = folder.load_plan()
                    if plan is not None and this_plan != plan:
                        raise MedsegError("fold folders were trained with different plans; cannot ensemble",
                                          folder.path)
                    plan, config = this_plan, folder.load_config()
                    fingerprint = fingerprint or folder.load_fingerprint()
                    chosen.append(folder.load_postprocess())
                    temperatures.append(folder.load_temperature())
                    net = build_network(plan, config.model)
                    net.load_state_dict(folder.load_weights())
                    nets.append(net.to(dev).eval())
                model_id = combined_id(folders)
                chosen_rules = _agreed_rules(chosen, dict(plan.labels))
        except ModelError:
            raise
        except MedsegError as exc:  # whatever is wrong with the model folder, the model is unusable
            raise ModelError(exc.problem, exc.path) from None
        except (RuntimeError, KeyError, ValueError) as exc:  # weights that do not fit the planned network
            raise ModelError(f"weights do not fit the planned network ({one_line(exc)})", model_dir) from None
        dtype = autocast_dtype(precision_for(plan, config, dev, precision).precision)
        predictor = cls(nets, plan, config, dev, dtype, model_id, chosen_rules)
        predictor.model_dir = Path(model_dir)
        predictor.fingerprint = fingerprint
        predictor.temperature = float(np.exp(np.mean(np.log(temperatures))))  # folds: their geometric mean
        return predictor

    def settings(self, mirror: bool | None = None, overlap: float | None = None, focus: bool | None = None) -> dict:
        """The options that change a result, resolved against the model's config (``None``: the config's).

        Recorded in every case JSON, so a re-run can tell whether an earlier result still holds.
        """
        chosen = self._settings(mirror, overlap, focus)
        return {"mirror": chosen.mirror, "overlap": chosen.overlap, "focus": chosen.focus,
                "postprocess": {str(k): asdict(r) for k, r in sorted(self.rules.items())}}

    def predict(self, volume: Volume, probabilities: bool = False, mirror: bool | None = None,
                overlap: float | None = None, focus: bool | None = None) -> Prediction:
        """Segment ``volume`` (``(X, Y, Z)`` or ``(C, X, Y, Z)``); see :func:`medseg.model.inference.predict_volume`."""
        prediction = predict_volume(self.nets, volume, self.plan, self._settings(mirror, overlap, focus), self.device,
                                    self.dtype, probabilities)
        prediction.label.meta["model_id"] = self.model_id
        return prediction

    def _settings(self, mirror: bool | None, overlap: float | None, focus: bool | None) -> InferenceSettings:
        cfg = self.config.infer
        return InferenceSettings(overlap=float(cfg.overlap if overlap is None else overlap),
                                 mirror=bool(cfg.mirror if mirror is None else mirror),
                                 focus=bool(cfg.focus if focus is None else focus),
                                 sw_batch_size=cfg.sw_batch_size, rules=self.rules, temperature=self.temperature)


def _agreed_rules(per_fold: list[dict | None], labels: dict[int, str]) -> dict[int, ComponentRule]:
    """The rules of the folds' ``postprocess.json`` (None: a fold without one) that every fold chose alike;
    a label they disagree on gets none, with a warning."""
    rule_sets = [component_rules(rules or {}, labels) for rules in per_fold]
    agreed = {v: rule for v, rule in rule_sets[0].items() if all(s.get(v) == rule for s in rule_sets[1:])}
    if differ := sorted(set().union(*rule_sets) - set(agreed)):
        log.warning("the folds chose different post-processing for label(s) %s: none applied to them",
                    ", ".join(map(str, differ)))
    return agreed
