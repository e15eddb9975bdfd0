"""Lesion-wise metrics: each 26-connected component of a label's truth mask is a lesion to find.

Detection (per case, :func:`lesion_detection`): a truth lesion is detected (true positive) when a predicted
component overlaps it by at least ``min_overlap`` of the lesion's voxels (default: any voxel). A predicted
component that overlaps no truth lesion is a false positive. Sensitivity = TP / lesions; precision = predicted
components touching a lesion / predicted components; F1 from the two. Conventions: no lesions and no
predictions -> sensitivity = precision = F1 = 1; no lesions but predictions -> sensitivity 1, precision 0;
lesions but no predictions -> 0, 1 (and F1 0).

A minimum lesion size (``min_voxels`` of :func:`match_lesions`; ``medseg evaluate --min-lesion-mm3``) leaves
truth components below it unscored, as BraTS 2023's lesion-wise metrics do (each task sets a minimum volume): a
dataset's own definition of a lesion can exclude them, e.g. LIDC outlines only nodules of 3 mm and more, so a
1-voxel piece a majority vote of outlines left beside a nodule is not a nodule to find. Such a fragment is no
lesion (no row), and a predicted component touching only fragments is neither a hit nor a false positive; the
count of fragments is kept (``fragments``). The default, 0, scores every component.

Per lesion (:func:`lesion_rows`), for truth lesion ``T`` with ``P`` the union of the predicted components
that overlap ``T`` by at least one voxel:

- ``volume_mm3`` = voxels of ``T`` x voxel volume (mm^3);
- ``detected`` = ``P`` is not empty (the any-voxel rule above);
- ``dice`` = 2 |T n P| / (|T| + |P|), and 0 when missed. ``P`` counts whole components, so a prediction that
  spills beyond the lesion is penalised, and one predicted component touching two lesions counts in both;
- ``small`` = ``volume_mm3 < SMALL_LESION_MM3``.

Pooled over a dataset (:func:`summarize_lesions`), per label: ``lesions``, ``detected``, ``sensitivity`` =
detected / lesions over all cases, ``dice_mean`` = mean per-lesion Dice, ``false_positives_per_case`` = mean
over the scored cases (also those without lesions) of their false-positive components, and ``small`` /
``large`` (volume < / >= ``SMALL_LESION_MM3``) with their own ``lesions``, ``detected``, ``sensitivity`` and
``dice_mean``. A rate over no lesions is ``None`` (JSON ``null``): there is nothing to find, and no
convention would be honest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medseg.postprocess.components import components

SMALL_LESION_MM3 = 100.0
"""Lesions under this volume (mm^3) are "small" and summarised on their own, so that they cannot vanish
in a mean dominated by large ones."""

LESION_COLUMNS = ["case", "label", "lesion", "volume_mm3", "small", "detected", "dice", "predicted_components",
                  "predicted_volume_mm3"]


@dataclass(frozen=True)
class LesionMatch:
    """Connected components of a truth and a predicted mask and how they overlap.

    Attributes:
        truth_sizes: Voxels per truth component, shape ``(n_truth + 1,)``; index 0 is background.
        pred_sizes: Voxels per predicted component, shape ``(n_pred + 1,)``; index 0 is background.
        overlap: Predicted voxels inside each truth component, shape ``(n_truth + 1,)``.
        pairs: ``(truth component, predicted component)`` pairs that share a voxel, shape ``(2, k)``, unique.
        fragments: Truth components below the minimum size, left out of all the above (module docstring).
    """

    truth_sizes: np.ndarray
    pred_sizes: np.ndarray
    overlap: np.ndarray
    pairs: np.ndarray
    fragments: int = 0

    @property
    def n_truth(self) -> int:
        """Number of truth lesions."""
        return len(self.truth_sizes) - 1

    @property
    def n_pred(self) -> int:
        """Number of predicted components."""
        return len(self.pred_sizes) - 1


def match_lesions(pred: np.ndarray, truth: np.ndarray, min_voxels: int = 0) -> LesionMatch:
    """Label both masks (same shape, any dtype; non-zero is foreground) and pair overlapping components; truth
    components of fewer than ``min_voxels`` voxels are fragments (module docstring)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    fragments = 0
    if min_voxels > 1:
        pred, truth, fragments = _without_fragments(pred, truth, min_voxels)
    truth_cc, truth_sizes = components(truth)
    pred_cc, pred_sizes = components(pred)
    both = (truth_cc > 0) & (pred_cc > 0)
    pairs = np.unique(np.stack([truth_cc[both], pred_cc[both]]), axis=1) if both.any() else np.zeros((2, 0), int)
    overlap = np.bincount(truth_cc[both], minlength=len(truth_sizes))
    return LesionMatch(truth_sizes, pred_sizes, overlap, pairs, fragments)


def _without_fragments(pred: np.ndarray, truth: np.ndarray, min_voxels: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The masks without truth components under ``min_voxels`` and without the predicted components that touch
    only those, and how many truth components were left out."""
    truth_cc, sizes = components(truth)
    small = sizes < min_voxels
    small[0] = False
    if not small.any():
        return pred, truth, 0
    fragment = small[truth_cc]
    pred_cc, _ = components(pred)
    on_fragments = np.unique(pred_cc[fragment & pred])
    on_lesions = np.unique(pred_cc[truth & ~fragment & pred])
    aside = np.setdiff1d(on_fragments, on_lesions)
    return pred & ~np.isin(pred_cc, aside), truth & ~fragment, int(small.sum())


def lesion_detection(pred: np.ndarray, truth: np.ndarray, min_overlap: float = 0.0) -> dict[str, float]:
    """Counts (``lesions``, ``detected``, ``predicted``, ``false_positives``) and rates for two masks."""
    return detection_rates(match_lesions(pred, truth), min_overlap)


def detection_rates(match: LesionMatch, min_overlap: float = 0.0) -> dict[str, float]:
    """:func:`lesion_detection` from a :class:`LesionMatch` (module docstring for the conventions)."""
    n_truth, n_pred, overlap = match.n_truth, match.n_pred, match.overlap
    fraction = overlap[1:] / np.maximum(match.truth_sizes[1:], 1)
    detected = int((fraction > min_overlap).sum()) if min_overlap > 0 else int((overlap[1:] > 0).sum())
    hit_preds = len(set(match.pairs[1].tolist()))
    sensitivity = 1.0 if n_truth == 0 else detected / n_truth
    precision = 1.0 if n_pred == 0 else hit_preds / n_pred
    if n_truth == 0 and n_pred > 0:
        precision = 0.0
    f1 = 0.0 if sensitivity + precision == 0 else 2 * sensitivity * precision / (sensitivity + precision)
    if n_truth > 0 and n_pred == 0:
        f1 = 0.0
    return {"lesions": n_truth, "detected": detected, "predicted": n_pred, "false_positives": n_pred - hit_preds,
            "sensitivity": sensitivity, "precision": precision, "f1": f1}


def lesion_rows(match: LesionMatch, spacing: Sequence[float], case_id: str = "", label: str = "") -> list[dict]:
    """One row per truth lesion (columns :data:`LESION_COLUMNS`; definitions in the module docstring).

    Args:
        match: The components of one case and label (:func:`match_lesions`).
        spacing: Voxel size in mm, three values; volumes are in mm^3.
        case_id, label: Copied into every row.
    """
    voxel_mm3 = float(np.prod(spacing))
    union = np.zeros(match.n_truth + 1, np.int64)  # voxels of the predicted components touching each lesion
    hits = np.zeros(match.n_truth + 1, np.int64)
    np.add.at(union, match.pairs[0], match.pred_sizes[match.pairs[1]])
    np.add.at(hits, match.pairs[0], 1)
    rows = []
    for lesion in range(1, match.n_truth + 1):
        size, inside = int(match.truth_sizes[lesion]), int(match.overlap[lesion])
        volume = size * voxel_mm3
        rows.append({"case": case_id, "label": label, "lesion": lesion, "volume_mm3": volume,
                     "small": volume < SMALL_LESION_MM3, "detected": inside > 0,
                     "dice": 2.0 * inside / (size + int(union[lesion])), "predicted_components": int(hits[lesion]),
                     "predicted_volume_mm3": int(union[lesion]) * voxel_mm3})
    return rows


def summarize_lesions(rows: list[dict], false_positives: dict[str, list[int]],
                      fragments: dict[str, int] | None = None) -> dict[str, dict]:
    """Dataset-level lesion figures per label (module docstring).

    Args:
        rows: Per-lesion rows of every case (:func:`lesion_rows`).
        false_positives: Label -> false-positive components of each scored case of that label (one entry per
            case, zeros included); its labels are the ones summarised.
        fragments: Label -> truth components left unscored as under the minimum lesion size (none if absent).
    """
    out = {}
    for label, per_case in false_positives.items():
        these = [r for r in rows if r["label"] == label]
        out[label] = {**_pool(these), "cases": len(per_case), "fragments": (fragments or {}).get(label, 0),
                      "false_positives": int(sum(per_case)),
                      "false_positives_per_case": float(np.mean(per_case)) if per_case else None,
                      "small": _pool([r for r in these if r["small"]]),
                      "large": _pool([r for r in these if not r["small"]])}
    return out


def _pool(rows: list[dict]) -> dict[str, float | int | None]:
    """``lesions``, ``detected``, pooled ``sensitivity`` and ``dice_mean`` of some lesion rows (None if none)."""
    detected = sum(bool(r["detected"]) for r in rows)
    return {"lesions": len(rows), "detected": detected, "sensitivity": detected / len(rows) if rows else None,
            "dice_mean": float(np.mean([r["dice"] for r in rows])) if rows else None}


def lesion_markdown(summary: dict[str, dict], min_lesion_mm3: float = 0.0) -> str:
    """The lesion summary of :func:`summarize_lesions` as a short Markdown section."""
    head = ["lesions", "detected", "sensitivity", "FP / case", "Dice", "small: n / sens. / Dice",
            "large: n / sens. / Dice"]
    lines = ["| label | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for label, s in summary.items():
        groups = [f"{g['lesions']} / {_fmt(g['sensitivity'])} / {_fmt(g['dice_mean'])}"
                  for g in (s["small"], s["large"])]
        cells = [str(s["lesions"]), str(s["detected"]), _fmt(s["sensitivity"]),
                 _fmt(s["false_positives_per_case"]), _fmt(s["dice_mean"]), *groups]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    intro = (f"## Lesions\n\nPooled over cases; Dice is the mean per-lesion Dice; small = under "
             f"{SMALL_LESION_MM3:g} mm^3, large = the others; n/a = no lesions. Per lesion: lesions.csv.\n\n")
    if min_lesion_mm3 > 0:
        left = ", ".join(f"{label} {s['fragments']}" for label, s in summary.items())
        intro += (f"Truth components under {min_lesion_mm3:g} mm^3 are not scored as lesions (left out: "
                  f"{left}).\n\n")
    return intro + "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
