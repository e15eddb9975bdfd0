"""Choose each label's connected-component rule on validation cases, as nnU-Net does after training.

For every foreground label the candidates are, in this order (the first wins a tie):

1. ``none``;
2. ``largest`` keeping 1, 2 and 3 components;
3. ``min_size`` at 10 %, 25 % and 50 % of the smallest truth component of that label on the validation
   cases (mm^3, 3 significant digits): bars below every component the annotators drew there, so they
   remove only what is smaller than anything real seen. A label with no truth voxels gets no ``min_size``
   candidate.

A label is scored only in the cases that contoured it (partial annotations); its score is the mean Dice
over those cases, with Dice 1.0 where prediction and truth are both empty (MONAI's ``ignore_empty=False``,
as validation scores). The best candidate is kept only when it beats ``none`` by more than
:data:`MIN_GAIN`. For a *lesion-like* label, a candidate must also keep every truth lesion detected that
``none`` detects (pooled lesion-wise sensitivity not lowered; a lesion is a 26-connected truth component,
detected when any kept predicted voxel overlaps it, as :mod:`medseg.metrics.lesions` counts). A label is
lesion-like when its truth has more than one component in some validation case, or when its name says
nodule, lesion, tumour/tumor or metastasis: keeping the largest component is then likely to delete real
findings, and Dice alone, dominated by the big ones, would not notice.

Every candidate only removes components, and a rule for one label never touches another label, so each
label is chosen on its own, from per-component sizes and truth overlaps counted once per case.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from medseg.postprocess.components import ComponentRule, components

# Gains below this are a few voxels on a validation fold of a handful to tens of cases: noise that would not
# carry over to new scans, while a rule changes every output from then on, so it has to earn its place.
MIN_GAIN = 0.001
KEEP_COUNTS = (1, 2, 3)
MIN_SIZE_FRACTIONS = (0.1, 0.25, 0.5)
LESION_NAME = re.compile(r"nodul|lesion|tumou?r|metasta", re.IGNORECASE)


@dataclass(frozen=True)
class LabelChoice:
    """The rule chosen for one label and what it did on the validation cases.

    Attributes:
        value, name: The label.
        rule: The chosen rule (``mode="none"`` when nothing beat raw predictions by :data:`MIN_GAIN`).
        cases: Validation cases that contoured the label (the Dice means are over these).
        dice_before, dice_after: Mean Dice of raw predictions and after ``rule``.
        lesion_like: Whether detection had to be kept (module docstring).
        sensitivity_before, sensitivity_after: Pooled lesion-wise sensitivity (detected truth components /
            truth components over the cases; 1.0 without any), for lesion-like labels, else None.
        tried: Mean Dice of every candidate, by :func:`describe`.
    """

    value: int
    name: str
    rule: ComponentRule
    cases: int
    dice_before: float
    dice_after: float
    lesion_like: bool
    sensitivity_before: float | None = None
    sensitivity_after: float | None = None
    tried: dict[str, float] = field(default_factory=dict)

    @property
    def gain(self) -> float:
        return self.dice_after - self.dice_before

    @property
    def changed(self) -> bool:
        return self.rule.mode != "none"

    def to_dict(self) -> dict:
        """JSON-ready: the rule as a config mapping plus the numbers (``gain`` included)."""
        data = {"value": self.value, "rule": asdict(self.rule), "description": describe(self.rule),
                "cases": self.cases, "dice_before": self.dice_before, "dice_after": self.dice_after,
                "gain": self.gain, "lesion_like": self.lesion_like}
        if self.lesion_like:
            data.update(sensitivity_before=self.sensitivity_before, sensitivity_after=self.sensitivity_after)
        return {**data, "tried": self.tried}


@dataclass(frozen=True)
class _CaseStats:
    """One label in one case. ``sizes[j]``: voxels of predicted component j (0-based: the labelling's j + 1);
    ``overlaps[j]``: how many of them are truth; ``hits``: ``(2, P)`` pairs (truth component, predicted
    component), 0-based, that share a voxel; ``truth_sizes``: voxels per truth component; ``voxel_mm3``:
    the volume of one voxel."""

    sizes: np.ndarray
    overlaps: np.ndarray
    hits: np.ndarray
    truth_sizes: np.ndarray
    voxel_mm3: float

    def kept(self, rule: ComponentRule) -> np.ndarray:
        """Which predicted components ``rule`` keeps: the selection of :func:`~medseg.postprocess.clean_label`."""
        if rule.mode == "largest":
            keep = np.zeros(len(self.sizes), bool)
            keep[np.argsort(-self.sizes, kind="stable")[:rule.keep]] = True
            return keep
        if rule.mode == "min_size":
            return self.sizes * self.voxel_mm3 >= rule.min_volume_mm3
        return np.ones(len(self.sizes), bool)

    def dice(self, keep: np.ndarray) -> float:
        denominator = int(self.sizes[keep].sum()) + int(self.truth_sizes.sum())
        return 1.0 if denominator == 0 else 2.0 * int(self.overlaps[keep].sum()) / denominator

    def detected(self, keep: np.ndarray) -> int:
        return len(np.unique(self.hits[0][keep[self.hits[1]]]))


def choose_rules(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                 spacings: Sequence[Sequence[float]], contoured: Sequence[Collection[int]],
                 labels: Mapping[int, str]) -> dict[int, LabelChoice]:
    """Pick a rule per label (module docstring) from raw validation predictions.

    Args:
        predictions: Raw (not post-processed) label maps, one per case, each ``(X, Y, Z)`` integer.
        truths: The cases' truth label maps, each on its prediction's grid.
        spacings: Voxel sizes in mm per case (what :func:`~medseg.postprocess.postprocess` is given).
        contoured: Label values contoured in each case.
        labels: Foreground label values to choose for -> names (0 is skipped).

    Returns:
        Label value -> :class:`LabelChoice`, for the labels at least one case contoured.
    """
    if not len(predictions) == len(truths) == len(spacings) == len(contoured):
        raise ValueError("predictions, truths, spacings and contoured must have one entry per case")
    chosen = {}
    for value, name in sorted(labels.items()):
        stats = [_case_stats(pred == value, truth == value, float(np.prod(spacing)))
                 for pred, truth, spacing, drawn in zip(predictions, truths, spacings, contoured, strict=True)
                 if value != 0 and value in drawn]
        if stats:
            chosen[value] = _choose(value, name, stats)
    return chosen


def describe(rule: ComponentRule) -> str:
    """A rule in a few words: ``none``, ``largest``, ``largest 2``, ``min_size 12.5 mm3``."""
    if rule.mode == "largest":
        return "largest" if rule.keep == 1 else f"largest {rule.keep}"
    if rule.mode == "min_size":
        return f"min_size {rule.min_volume_mm3:g} mm3"
    return "none"


def _candidates(stats: Sequence[_CaseStats]) -> list[ComponentRule]:
    """The rules tried for one label, ``none`` first (module docstring)."""
    truth_mm3 = [s.truth_sizes.min() * s.voxel_mm3 for s in stats if len(s.truth_sizes)]
    bars = sorted({float(f"{f * min(truth_mm3):.3g}") for f in MIN_SIZE_FRACTIONS} if truth_mm3 else set())
    return ([ComponentRule()] + [ComponentRule("largest", keep=k) for k in KEEP_COUNTS]
            + [ComponentRule("min_size", min_volume_mm3=bar) for bar in bars])


def _choose(value: int, name: str, stats: list[_CaseStats]) -> LabelChoice:
    lesion_like = bool(LESION_NAME.search(name)) or any(len(s.truth_sizes) > 1 for s in stats)
    lesions = sum(len(s.truth_sizes) for s in stats)
    rules = _candidates(stats)
    dice, detected = [], []
    for rule in rules:
        keeps = [s.kept(rule) for s in stats]
        dice.append(float(np.mean([s.dice(k) for s, k in zip(stats, keeps, strict=True)])))
        detected.append(sum(s.detected(k) for s, k in zip(stats, keeps, strict=True)))
    allowed = [i for i in range(len(rules)) if not lesion_like or detected[i] >= detected[0]]
    best = max(allowed, key=lambda i: (dice[i], -i))  # the earliest of equals
    if dice[best] <= dice[0] + MIN_GAIN:
        best = 0

    def sensitivity(i: int) -> float | None:
        return (detected[i] / lesions if lesions else 1.0) if lesion_like else None

    return LabelChoice(value, name, rules[best], len(stats), dice[0], dice[best], lesion_like, sensitivity(0),
                       sensitivity(best), {describe(r): d for r, d in zip(rules, dice, strict=True)})


def _case_stats(pred: np.ndarray, truth: np.ndarray, voxel_mm3: float) -> _CaseStats:
    """Component sizes and truth overlaps of one case's predicted mask, and its truth lesions."""
    pred_cc, sizes = components(pred)
    truth_cc, truth_sizes = components(truth)
    overlaps = np.bincount(pred_cc[truth], minlength=len(sizes))
    both = (pred_cc > 0) & (truth_cc > 0)
    hits = np.unique(np.stack([truth_cc[both], pred_cc[both]]), axis=1) - 1 if both.any() else np.zeros((2, 0), int)
    return _CaseStats(sizes[1:], overlaps[1:], hits, truth_sizes[1:], voxel_mm3)
