"""The end of a run: the final validation (best weights, the held-out fold, the inference path on original
grids), the post-processing chosen on it (``postprocess.json``), the sealed model folder and the closing line;
and ``medseg tune-postprocess``, which redoes the final validation and the choice for a finished run folder.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from medseg.config import RunConfig
from medseg.data import load_dataset
from medseg.errors import MedsegError
from medseg.io.atomic import write_text_atomic
from medseg.model.calibration import VoxelSample, fit_temperature
from medseg.model.device import autocast_dtype, precision_for, resolve_device
from medseg.model.folder import ModelFolder
from medseg.model.inference import component_rules
from medseg.model.networks import build_network
from medseg.postprocess import choose_rules, describe, postprocess
from medseg.postprocess.choose import MIN_GAIN
from medseg.preprocess.plan import Plan
from medseg.train.checkpoint import load_checkpoint
from medseg.train.schedule import RunState
from medseg.train.validation import (
    ValidationSet,
    inference_settings,
    load_validation,
    predict_labels,
    score_labels,
    summarise,
)

log = logging.getLogger(__name__)


def final_validation(net: torch.nn.Module, config: RunConfig, val_set: ValidationSet, plan: Plan, out: Path,
                     dev: torch.device, dtype: torch.dtype | None) -> dict:
    """Best weights, held-out fold, the inference path on original grids, without post-processing; then the
    rules chosen on these raw label maps (postprocess.json) and the final scores with them (validation.json,
    whose content is returned)."""
    net.load_state_dict(load_checkpoint(out / "weights.pt"))
    mirror = config.train.final_mirror
    settings = replace(inference_settings(config, plan, mirror), rules={})  # rules are applied to the raw maps below
    t0 = time.perf_counter()
    sample = VoxelSample(seed=config.train.seed)
    raw = list(predict_labels([net], val_set, plan, settings, dev, dtype, sample))
    calibration = fit_temperature(sample)
    log.info(f"probabilities calibrated: temperature {calibration['temperature']:.3f} (validation NLL "
             f"{calibration.get('nll_before', 0):.4f} -> {calibration.get('nll_after', 0):.4f} over "
             f"{calibration['voxels']} voxels)")
    cases, rules, choice = _choose_postprocess(raw, config, val_set, plan, out, calibration)
    result = {**summarise(cases, plan.foreground_names), "mirror": mirror, "overlap": settings.overlap,
              "postprocess": bool(rules), "postprocess_rules": {str(v): asdict(r) for v, r in sorted(rules.items())},
              "postprocess_choice": choice, "calibration": calibration}
    write_text_atomic(out / "validation.json", json.dumps(result, indent=1))
    per_class = "  ".join(f"{k} {v:.4f}" for k, v in result["per_class"].items())
    log.info(f"final validation ({len(val_set.ids)} cases, original grids{', mirroring' if mirror else ''}): "
             f"{per_class}  mean {result['mean']:.4f}  ({time.perf_counter() - t0:.0f} s)")
    return result


def _choose_postprocess(raw: list[np.ndarray], config: RunConfig, val_set: ValidationSet, plan: Plan,
                        out: Path, calibration: dict) -> tuple[dict, dict, dict]:
    """Choose rules (:mod:`medseg.postprocess.choose`) on the raw validation label maps (``(X, Y, Z)`` each) for
    the labels the config gives none, write them to postprocess.json (with the ``calibration``), and score the
    maps post-processed with them and the config's rules. Returns (Dice per case and label, the rules applied,
    the choice by label name)."""
    labels = dict(plan.labels)
    fixed = component_rules(config.postprocess.rules, labels)
    spacings = [image.spacing for image in val_set.images]
    choices = choose_rules(raw, [truth.array for truth in val_set.labels], spacings,
                           [{v for v in labels if case.contoured(v)} for case in val_set.cases],
                           {v: name for v, name in labels.items() if v != 0 and v not in fixed})
    chosen = {v: c.rule for v, c in choices.items() if c.changed}
    report = {c.name: c.to_dict() for c in choices.values()}
    ModelFolder(out).write_postprocess({v: asdict(rule) for v, rule in chosen.items()}, report, calibration)
    for value in chosen:
        c = choices[value]
        detection = (f"; lesion sensitivity {c.sensitivity_before:.3f} -> {c.sensitivity_after:.3f}"
                     if c.lesion_like else "")
        log.info(f"post-processing {c.name}: {describe(c.rule)} (validation Dice {c.dice_before:.4f} -> "
                 f"{c.dice_after:.4f}, +{c.gain:.4f} over {c.cases} cases{detection})")
    if not chosen:
        log.info(f"post-processing: no rule raised a label's validation Dice by more than {MIN_GAIN}; none chosen")
    rules = {**chosen, **fixed}
    final = [postprocess(m, rules, spacing)[0] for m, spacing in zip(raw, spacings, strict=True)] if rules else raw
    return score_labels(final, val_set, labels), rules, report


def seal_and_summarise(out: Path, plan: Plan, state: RunState, kept: int, seconds: float, final: dict) -> dict:
    """Seal the model folder (versions, labels, SHA256SUMS) and return the run's summary; ``kept`` is the epoch
    whose weights the final validation scored, ``seconds`` the run's wall-clock time."""
    model_id = ModelFolder(out).seal(plan.labels)
    summary = {"best_mean_dice": state.best, "best_epoch": state.best_epoch, "weights_epoch": kept,
               "epochs": state.epoch, "seconds": seconds, "model_dir": str(out), "model_id": model_id,
               "validation": final}
    log.info(f"done: {state.epoch} epochs in {clock(seconds)}; final validation mean Dice {final['mean']:.4f} with "
             f"epoch {kept}'s weights; model {model_id} in {out} (`medseg export` makes a copy to share)")
    return summary


def clock(seconds: float) -> str:
    """``h:mm:ss``."""
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def tune_postprocess(run_dir, dataset_path, device: str = "auto") -> dict:
    """Choose post-processing for a finished run folder (e.g. one trained before medseg chose it): training's
    final validation again (best weights, the run's validation fold of ``dataset_path``, its settings and
    precision), then postprocess.json and validation.json rewritten and the folder re-summed. Returns
    validation.json's content.
    """
    folder = ModelFolder(run_dir)
    folder.check()
    plan, config = folder.load_plan(), folder.load_config()
    val_ids = validation_ids(folder.path)
    dataset = load_dataset(dataset_path)
    if missing := sorted(set(val_ids) - {c.id for c in dataset.cases}):
        raise MedsegError(f"{len(missing)} validation case(s) of the run are not in this dataset (e.g. "
                          f"{missing[0]}); give the dataset the run was trained on", dataset_path)
    dev = resolve_device(device)
    dtype = autocast_dtype(precision_for(plan, config, dev).precision)
    result = final_validation(build_network(plan, config.model).to(dev), config, load_validation(dataset, val_ids),
                              plan, folder.path, dev, dtype)
    folder.reseal()
    return result


def validation_ids(run: Path) -> list[str]:
    """The run's validation fold: the split in splits.json whose validation cases validation.json scored."""
    try:
        scored = set(json.loads((run / "validation.json").read_text())["cases"])
        splits = json.loads((run / "splits.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        raise MedsegError("not a finished run folder of `medseg train`: validation.json and splits.json are needed "
                          "(an exported model has neither)", run) from None
    for split in splits:
        if set(split["val"]) == scored:
            return list(split["val"])
    raise MedsegError("the cases of validation.json are no validation fold of splits.json", run)
