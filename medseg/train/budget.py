"""Time-aware planning: with ``train.time_budget`` on a CPU, pick the plan that fits enough steps in it.

The full-resolution plan (:func:`medseg.preprocess.make_plan`) is right for GPUs and for runs without a
budget. On a CPU the same plan can take 10+ s per step (OpenKBP's 96x96x128 patches on 2 cores), so a
30-minute run would end untrained. Candidates, in order of preference:

1. full resolution, the planned patch, then patches shrunk by 20 % of their volume at a time (the axis
   with the largest physical extent first, as the planner does), down to 1/8 of the planned volume;
2. the same ladder at a coarser target spacing (1.5x, then 2x: nnU-Net's low-resolution stage; the
   prediction is restored to each scan's own grid at inference like any other plan);
3. the same at half the network width (when that is still >= 8 filters).

Two passes. First the full-resolution patches alone, for ``train.min_steps`` steps; when none fits, the
whole ladder for :data:`COARSE_SHARE` of them. A coarser grid loses thin structures (OpenKBP's esophagus was
never predicted at 7.81 mm, 2026-12-07), so more steps are bought with smaller patches, not with resolution.
In each pass the first candidate whose measured step time gives at least the pass's steps in the training
share of the budget wins, after the one just above it is timed once more (and the next while they fit): a
busy moment while a larger candidate was timed must not shrink the plan for the whole run. A candidate timed
in the first pass is not timed again in the second. Step time is a
forward/backward pass on the candidate's batch in the chosen precision (:func:`medseg.model.device.time_steps`),
times :data:`STEP_OVERHEAD` for the optimiser, loss and data (measured on plain DynUNet; the same seconds are a
smaller share of a network whose registry entry costs more, see :func:`_step_overhead`). A candidate predicted
(from measured larger ones, by their fastest seconds per voxel) to take over twice the allowed step time is
skipped without being built. When nothing fits, the fastest measured candidate is
taken and the reason says so.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from medseg.config import RunConfig
from medseg.model.device import autocast_dtype, precision_for, time_steps
from medseg.model.networks import build_network, network_entry
from medseg.preprocess.plan import MIN_FEATURE_MAP, Plan, make_plan, topology

# Real training steps (AdamW, Dice+CE over deep-supervision heads, augmentation in a worker) over the bare
# forward/backward step: on the hippocampus plan (40x56x40 x4, DynUNet 16-128, bf16, AMD EPYC 2 cores)
# train_steps ran 0.33 s per step (benchmarks/train_speed.py) where time_steps measures 0.26 s: 1.28x.
STEP_OVERHEAD = 1.3
# Share of the remaining budget that training steps get; the rest is preprocessing, validation and writing.
TRAIN_SHARE = 0.75
SPACING_FACTORS = (1.0, 1.5, 2.0)
SHRINK = 0.8  # patch volume kept per rung
# Share of train.min_steps (2500) the second pass asks for: 1500, the floor before min_steps was raised
# (hippocampus 30 min, Zen 3 fp32, paired on the test split: 28x28x28 x4 with 3993 steps +0.0059 mean Dice
# [+0.0024, +0.0095] over 32x32x40 x4 with 2200), so that every plan the raised floor would push to a coarser
# grid stays the plan it was (OpenKBP 60 min: 40x40x64 x2 at 3.91 mm, not 32x32x56 at 7.81 mm).
COARSE_SHARE = 0.6
MIN_AXIS = 2 * MIN_FEATURE_MAP * 2  # voxels: no patch axis below 16 (or the image, when smaller)


@dataclass(frozen=True)
class Candidate:
    """One plan tried: its spacing (mm), patch and batch, network width, and seconds per step.

    ``step_s`` is measured when ``measured`` is true, otherwise predicted from a measured larger candidate.
    """

    spacing: list[float]
    patch: list[int]
    batch: int
    base_filters: int
    levels: int
    step_s: float
    measured: bool
    steps: int

    def line(self) -> str:
        how = "measured" if self.measured else "predicted"
        return (f"spacing {_fmt(self.spacing)} mm  patch {'x'.join(map(str, self.patch))} x{self.batch}  "
                f"width {self.base_filters}  {self.levels} levels  {self.step_s:.2f} s/step ({how})  "
                f"~{self.steps} steps")


@dataclass(frozen=True)
class BudgetChoice:
    """The chosen plan, every candidate considered (in order) and one line saying why."""

    plan: Plan
    candidates: list[Candidate]
    reason: str
    precision: str


def plan_for_budget(fingerprint: dict, channels: dict[int, str], labels: dict[int, str], config: RunConfig,
                    device: torch.device, seconds_left: float | None) -> BudgetChoice:
    """The plan for this machine and budget (see the module docstring).

    Args:
        seconds_left: What remains of ``train.time_budget`` (s); None: no budget, the full plan stands.
    """
    full = make_plan(fingerprint, channels, labels, config, network_entry(config.model.name).memory)
    if seconds_left is None or device.type == "cuda":
        why = "no time budget" if seconds_left is None else "GPU"
        return BudgetChoice(full, [], f"full-resolution plan ({why})", config.train.precision)
    if config.train.patch_size or config.preprocess.target_spacing:
        return BudgetChoice(full, [], "full-resolution plan (patch size or spacing set in the config)",
                            config.train.precision)
    t0 = time.perf_counter()
    ladder = _ladder(fingerprint, channels, labels, config, full)
    precision = _precision(config, device, ladder)
    seconds = seconds_left - (time.perf_counter() - t0)
    timings: dict[int, Candidate] = {}  # the latest measurement (or prediction) of each ladder index
    tried: list[Candidate] = []
    full_resolution = [i for i, (plan, width) in enumerate(ladder)
                       if plan.target_spacing == full.target_spacing and width == config.model.base_filters]
    for indices, steps in ((full_resolution, config.train.min_steps),
                           (range(len(ladder)), math.ceil(COARSE_SHARE * config.train.min_steps))):
        allowed = _allowed_step(seconds, steps, config)
        fit = _first_fit(ladder, indices, allowed, timings, tried, config, device, precision, seconds_left)
        if fit is not None:
            plan, candidate = ladder[fit[0]][0], fit[1]
            reason = (f"{'full-resolution' if plan.target_spacing == full.target_spacing else 'low-resolution'} "
                      f"plan: {candidate.steps} steps fit the budget (>= {steps}); "
                      f"chosen in {time.perf_counter() - t0:.0f} s")
            return BudgetChoice(plan, tried, reason, precision)
    return _fastest(ladder, timings, tried, config, device, precision, seconds_left)


def _first_fit(ladder, indices, allowed: float, timings: dict[int, Candidate], tried: list[Candidate], config,
               device, precision: str, seconds_left: float) -> tuple[int, Candidate] | None:
    """The ladder index (among ``indices``, in order) and timing of the first candidate whose step fits
    ``allowed`` seconds, the one above re-checked (:func:`_recheck_larger`); None when none fits. A candidate
    measured before is not timed again; every new timing goes to ``timings`` and ``tried``."""
    for index in indices:
        candidate = timings.get(index)
        if candidate is None or not candidate.measured:
            candidate = _try(*ladder[index], config, device, precision, allowed, tried, seconds_left)
            timings[index] = candidate
            tried.append(candidate)
        if candidate.measured and candidate.step_s <= allowed:
            return _recheck_larger(ladder, tried, index, candidate, config, device, precision, allowed,
                                   seconds_left)
    return None


def _fastest(ladder, timings: dict[int, Candidate], tried: list[Candidate], config, device, precision: str,
             seconds_left: float) -> BudgetChoice:
    """When no candidate fits: the fastest one, timed now if it was only predicted (a run whose first timing
    was slow predicted every smaller one too slow to time, and the largest, measured, plan would win)."""
    index = min(timings, key=lambda i: timings[i].step_s)
    best = timings[index]
    if not best.measured:
        best = _try(*ladder[index], config, device, precision, math.inf, [], seconds_left)
        tried.append(best)
    reason = (f"no candidate fits {math.ceil(COARSE_SHARE * config.train.min_steps)} steps in the budget; the "
              f"fastest one ({best.steps} steps, measured) is used")
    return BudgetChoice(ladder[index][0], tried, reason, precision)


def _recheck_larger(ladder, tried: list[Candidate], index: int, chosen: Candidate, config, device, precision: str,
                    allowed: float, seconds_left: float) -> tuple[int, Candidate]:
    """The ladder index and timing of the plan to take once ``ladder[index]`` fits (``chosen``): a busy moment
    can make a larger candidate time slow (or be predicted slow), so the one just above is timed again, and the
    next while they fit. Every timing is appended to ``tried``."""
    while index > 0:
        plan, width = ladder[index - 1]
        again = _try(plan, width, config, device, precision, allowed, [], seconds_left)
        tried.append(again)
        if again.step_s > allowed:
            break
        index, chosen = index - 1, again
    return index, chosen


def _ladder(fingerprint, channels, labels, config: RunConfig, full: Plan) -> list[tuple[Plan, int]]:
    """Candidate plans in order of preference, each with its network width (base filters)."""
    widths = [config.model.base_filters] + ([config.model.base_filters // 2] if config.model.base_filters >= 16
                                            else [])
    out: list[tuple[Plan, int]] = []
    for width in widths:
        for factor in SPACING_FACTORS:
            spacing = [s * factor for s in full.target_spacing]
            top = full if factor == 1.0 else _planned(fingerprint, channels, labels, config, spacing, None,
                                                      full.batch_size, width)
            median = np.asarray(full.median_shape_resampled) / factor
            for patch in _patches(top.patch_size, spacing, median):
                out.append((_planned(fingerprint, channels, labels, config, spacing, patch, full.batch_size, width),
                            width))
    return out


def _planned(fingerprint, channels, labels, config: RunConfig, spacing, patch, batch: int, width: int) -> Plan:
    cfg = copy.deepcopy(config)
    cfg.preprocess.target_spacing = [round(float(s), 5) for s in spacing]
    cfg.train.patch_size = patch
    cfg.train.batch_size = batch
    cfg.model.base_filters = width
    return make_plan(fingerprint, channels, labels, cfg, network_entry(cfg.model.name).memory)


def _patches(top, spacing, median_shape) -> list[list[int]]:
    """The planned patch, then ones with ~20 % less volume each, rounded to the network's divisor."""
    spacing = np.asarray(spacing, float)
    floor = np.minimum(MIN_AXIS, np.maximum(np.floor(median_shape), MIN_FEATURE_MAP))
    out, patch = [list(map(int, top))], np.asarray(top, float)
    target = float(np.prod(patch))
    while target > np.prod(top) / 8:
        target *= SHRINK
        while np.prod(patch) > target and (patch > floor).any():
            axis = int(np.argmax(np.where(patch > floor, patch * spacing, -1)))
            patch[axis] = max(patch[axis] * 0.95, floor[axis])
        rounded = _rounded(patch, spacing)
        if np.prod(rounded) < np.prod(out[-1]):
            out.append(rounded)
        if not (patch > floor).any():
            break
    return out


def _rounded(patch, spacing) -> list[int]:
    strides, _ = topology(patch, spacing)
    divisor = np.prod(np.asarray(strides), axis=0)
    return [int(max(np.round(p / d), 1) * d) for p, d in zip(patch, divisor, strict=True)]


def _precision(config: RunConfig, device, ladder) -> str:
    """``train.precision``; ``auto`` is measured on the smallest full-resolution candidate (fast to time)."""
    smallest = [plan for plan, width in ladder if width == config.model.base_filters
                and plan.target_spacing == ladder[0][0].target_spacing][-1]
    return precision_for(smallest, config, device).precision


def _step_overhead(config: RunConfig) -> float:
    """Real training step over the bare forward/backward step for ``model.name``: :data:`STEP_OVERHEAD` was
    measured on plain DynUNet; its extra seconds (optimiser, loss, data) are a share ``1 / compute`` as large
    of a network whose registry entry costs ``compute`` times as much per step."""
    return 1.0 + (STEP_OVERHEAD - 1.0) / network_entry(config.model.name).compute


def _allowed_step(seconds_left: float, steps: int, config: RunConfig) -> float:
    """Seconds a bare forward/backward step may take for ``steps`` steps to fit the training share."""
    return max(seconds_left, 0.0) * TRAIN_SHARE / max(steps, 1) / _step_overhead(config)


def _try(plan: Plan, width: int, config, device, precision: str, allowed: float, tried: list[Candidate],
         seconds_left: float) -> Candidate:
    voxels = plan.batch_size * float(np.prod(plan.patch_size))
    larger = [c for c in tried if c.measured and c.base_filters == width]
    # the fastest seconds per voxel seen so far: a timing taken in a busy moment must not condemn the rest
    predicted = voxels * min(c.step_s / (c.batch * float(np.prod(c.patch))) for c in larger) if larger else None
    if predicted is not None and predicted > 2 * allowed:
        step_s, measured = predicted, False
    else:
        torch.manual_seed(0)
        net = build_network(plan, config.model).to(device)  # the width is in plan.filters
        x = torch.randn(plan.batch_size, plan.in_channels, *plan.patch_size, device=device)
        step_s, measured = time_steps(net, x, device, autocast_dtype(precision), budget_s=1.5,
                                      give_up_s=4 * allowed), True
    steps = int(max(seconds_left, 0.0) * TRAIN_SHARE / (step_s * _step_overhead(config)))
    return Candidate(plan.target_spacing, plan.patch_size, plan.batch_size, width, len(plan.strides), step_s,
                     measured, steps)


def _fmt(values) -> str:
    return "x".join(f"{v:.3g}" for v in values)
