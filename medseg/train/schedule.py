"""The run's schedule: how far a run is (by steps, or by wall clock under ``train.time_budget``), the learning
rate, when an epoch must stop stepping, and which epochs validate; and :class:`RunState`, the progress a
checkpoint keeps.

Rank 0's clock decides for every rank (the caller broadcasts what it decides).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

from medseg.config import TrainConfig, parse_duration
from medseg.preprocess.plan import Plan
from medseg.train.validation import ValidationSet

# Validation between epochs may take at most this share of the training time.
VAL_SHARE = 0.1
# The first epoch times validation on at most this many cases (the whole fold when it is no larger). Timing all
# 41 OpenKBP CTs took 186 s of a 25-minute budget (AMD EPYC, 2 cores, 2026-11-26) to score an untrained network.
TIMING_CASES = 4


@dataclass
class RunState:
    """A run's progress, saved in ``checkpoint_last.pt`` under ``state`` as a dict of these keys.

    Attributes:
        epoch: Epochs done.
        step: Optimisation steps done.
        train_seconds: Seconds spent in training steps (validation excluded).
        best: Best mean validation Dice so far (-1.0: none yet).
        best_epoch: The epoch that scored it (-1: none), whose weights ``weights.pt`` holds.
        elapsed: Wall-clock seconds of the run so far, interrupted runs included.
        validated: The last epoch validated on the whole fold (-1: none).
    """

    epoch: int = 0
    step: int = 0
    train_seconds: float = 0.0
    best: float = -1.0
    best_epoch: int = -1
    elapsed: float = 0.0
    validated: int = -1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunState:
        """The state of a checkpoint; one written before a whole-fold validation has no ``validated``."""
        return cls(**{**data, "validated": data.get("validated", data["best_epoch"])})


def validate_now(last: bool, val_seconds: float, val_spent: float, train_seconds: float) -> bool:
    """Validate after the first epoch while validation is not timed yet (``val_seconds`` 0: to time it, on
    :data:`TIMING_CASES` cases), the ``last`` one, and any other while validation has taken under
    :data:`VAL_SHARE` of the training time so far (a 41-case CT fold can take minutes per pass)."""
    return not val_seconds or last or val_spent + val_seconds <= VAL_SHARE * train_seconds


@dataclass
class Schedule:
    """Progress, learning rate, stopping and validation for one run (times are ``time.perf_counter()`` s).

    Attributes:
        train: The ``train`` config section (epochs, steps per epoch, time budget, schedule, mirroring).
        passes: Network passes per window of the validations kept free at the end (see :meth:`for_run`).
        start: When the run started, moved back by a resumed run's elapsed time.
        world: Number of ranks.
        val_seconds: One whole validation pass, estimated from the last one (0: not timed yet).
        val_spent: Seconds spent validating between epochs so far.
        epoch_seconds: The last epoch's length, validation included.
    """

    train: TrainConfig
    passes: int
    start: float
    world: int = 1
    val_seconds: float = 0.0
    val_spent: float = 0.0
    epoch_seconds: float = 0.0

    @classmethod
    def for_run(cls, train: TrainConfig, plan: Plan, start: float, world: int) -> Schedule:
        """The final validation's mirrored flips with ``final_mirror`` (else one pass), plus the last epoch's own
        pass when it scores differently from the final validation, are kept free at the end."""
        final = 2 ** len(plan.mirror_axes) if train.final_mirror else 1
        return cls(train, final + (0 if train.val_mirror == train.final_mirror else 1), start, world)

    @property
    def budget(self) -> float | None:
        """``train.time_budget`` in seconds, or None."""
        return parse_duration(self.train.time_budget)

    def progress(self, state: RunState, epoch_seconds: float | None = None) -> float:
        """Fraction of the run done (1.0: stop): by steps, or by wall clock with a time budget. Under torchrun
        an epoch of ``epoch_seconds`` (default: the last one's) must still fit."""
        budget = self.budget
        if budget is None:
            return state.step / max(self.train.epochs * self.train.iterations_per_epoch, 1)
        epoch = self.epoch_seconds if epoch_seconds is None else epoch_seconds
        return (time.perf_counter() - self.start) / max(self._usable(budget, epoch), 1.0)

    def deadline(self) -> float | None:
        """When the current epoch must stop stepping (mid-epoch if need be) so that the rest still fits the
        budget; None without a budget, and under torchrun, where every rank must take the same number of steps."""
        budget = self.budget
        if budget is None or self.world > 1:
            return None
        return self.start + self._usable(budget, 0.0)

    def _usable(self, budget: float, epoch_seconds: float) -> float:
        """Seconds of the budget for training steps. Kept free: :attr:`passes` validation passes with 20 %
        margin, and 20 s for writing the model folder; before any validation was timed, 15 % of the budget.
        Under torchrun epochs cannot stop midway, so the last epoch's length stays free too (an epoch only
        starts when it can finish)."""
        validations = self.passes * self.val_seconds * 1.2 if self.val_seconds else 0.15 * budget
        return budget - validations - 20.0 - (epoch_seconds if self.world > 1 else 0.0)

    def lr(self, progress: float) -> float:
        """``train.lr`` at ``progress`` (0..1) under ``train.lr_schedule``, a Python float: it goes into the optimiser
        state that checkpoints keep, which load with ``weights_only=True`` (a numpy float would not)."""
        tc, progress = self.train, min(max(float(progress), 0.0), 1.0)
        if tc.lr_schedule == "poly":
            return tc.lr * (1 - progress) ** 0.9
        if tc.lr_schedule == "cosine":
            return tc.lr * 0.5 * (1 + math.cos(math.pi * progress))
        return tc.lr

    def warmup(self, step: int) -> float:
        """Factor on :meth:`lr` for the optimiser step numbered ``step`` (0-based, the run's whole count): rising
        linearly to 1 over ``train.warmup_steps`` (1 / n for the first step), 1 after them or when off."""
        n = self.train.warmup_steps
        return min((step + 1) / n, 1.0) if n > 0 else 1.0

    def validates(self, state: RunState, ending: bool) -> bool:
        """Whether the epoch just done validates (see :func:`validate_now`). The ``ending`` epoch gets a pass of
        its own only when the final validation scores differently (mirroring); otherwise the final validation
        scores its weights and the budget's minutes go to training."""
        last = ending and self.train.val_mirror != self.train.final_mirror
        return validate_now(last, self.val_seconds, self.val_spent, state.train_seconds)

    def validation_cases(self, cases: ValidationSet) -> ValidationSet:
        """The first :data:`TIMING_CASES` cases while validation is not timed yet (to time it); then the whole
        fold."""
        return cases if self.val_seconds else cases.first(TIMING_CASES)

    def timed(self, seconds: float, share: float) -> None:
        """Record a validation pass of ``seconds`` over ``share`` (0..1] of the fold's scanned volume."""
        self.val_spent += seconds
        self.val_seconds = seconds / share  # a whole pass, estimated by volume
