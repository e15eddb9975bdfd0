"""Evaluate predicted label maps against ground truth: per case and label, then summaries.

Partial annotations: when the ground truth is a dataset whose cases say which labels were contoured
(``Case.annotated``, e.g. OpenKBP's ``annotated_labels.json``), a label is scored only in the cases that
contoured it. The rows of uncontoured labels are omitted (from ``metrics.csv``, ``lesions.csv`` and so from
every mean; ``summary.json`` counts them under ``uncontoured_omitted``), as training's validation does.

Lesions (definitions in :mod:`medseg.metrics.lesions`): ``lesions.csv`` has one row per truth lesion (connected
component) of each scored case and label; ``summary.json`` pools them per label under ``lesions``.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np

from medseg.data import load_dataset
from medseg.data.dataset import is_dataset_folder
from medseg.errors import MedsegError
from medseg.io.atomic import write_csv_atomic, write_text_atomic
from medseg.io.geometry import grid_mismatch
from medseg.io.paths import image_stem, image_suffix
from medseg.io.volume_io import read_volume
from medseg.metrics.lesions import (
    LESION_COLUMNS,
    SMALL_LESION_MM3,
    detection_rates,
    lesion_markdown,
    lesion_rows,
    match_lesions,
    summarize_lesions,
)
from medseg.metrics.overlap import dice, iou, volume_mm3
from medseg.metrics.surface import surface_metrics
from medseg.types import Volume

log = logging.getLogger(__name__)

METRICS = ["dice", "iou", "hd95", "assd", "nsd", "volume_pred_mm3", "volume_gt_mm3", "volume_diff_mm3",
           "lesion_sensitivity", "lesion_precision", "lesion_f1"]


def evaluate_case(pred: Volume, truth: Volume, labels: dict[int, str], tolerance_mm: float = 1.0,
                  case_id: str = "", annotated: tuple[int, ...] | None = None,
                  min_lesion_mm3: float = 0.0) -> list[dict]:
    """One row per foreground label with every metric; with ``annotated`` (the label values contoured in
    this case), per contoured foreground label only. :func:`score_case` also gives the per-lesion rows.

    Raises:
        MedsegError: when the grids differ (a silently wrong number is worse than none).
    """
    return score_case(pred, truth, labels, tolerance_mm, case_id, annotated, min_lesion_mm3)[0]


def score_case(pred: Volume, truth: Volume, labels: dict[int, str], tolerance_mm: float = 1.0,
               case_id: str = "", annotated: tuple[int, ...] | None = None,
               min_lesion_mm3: float = 0.0) -> tuple[list[dict], list[dict]]:
    """``(rows, lesions)``: the rows of :func:`evaluate_case` and one row per truth lesion of the same scored
    labels (:func:`medseg.metrics.lesions.lesion_rows`; volumes in mm^3 from the truth's spacing). Truth
    components under ``min_lesion_mm3`` are not lesions (:mod:`medseg.metrics.lesions`); Dice and the other
    voxel metrics still count every voxel.

    Raises:
        MedsegError: when the grids differ (a silently wrong number is worse than none).
    """
    if mismatch := grid_mismatch(pred.spatial_shape, pred.affine, truth.spatial_shape, truth.affine):
        raise MedsegError(f"prediction and ground truth grids differ: {'; '.join(mismatch)}",
                          pred.meta.get("source"))
    rows: list[dict] = []
    lesions: list[dict] = []
    min_voxels = math.ceil(min_lesion_mm3 / float(np.prod(truth.spacing)) - 1e-9) if min_lesion_mm3 > 0 else 0
    for value, name in sorted(labels.items()):
        if value == 0 or (annotated is not None and value not in annotated):
            continue
        p, t = pred.array == value, truth.array == value
        surface = surface_metrics(p, t, truth.spacing, tolerance_mm)
        match = match_lesions(p, t, min_voxels)
        found = detection_rates(match)
        lesions += lesion_rows(match, truth.spacing, case_id, name)
        vp, vt = volume_mm3(p, truth.spacing), volume_mm3(t, truth.spacing)
        rows.append({"case": case_id, "label": name, "dice": dice(p, t), "iou": iou(p, t), **surface,
                     "volume_pred_mm3": vp, "volume_gt_mm3": vt, "volume_diff_mm3": vp - vt,
                     "lesion_sensitivity": found["sensitivity"], "lesion_precision": found["precision"],
                     "lesion_f1": found["f1"], "lesions_gt": found["lesions"],
                     "lesions_detected": found["detected"], "lesions_false_positive": found["false_positives"],
                     "lesion_fragments": match.fragments})
    return rows, lesions


def pair_cases(pred_dir: Path, gt: Path) -> tuple[list[tuple[str, Path, Path]], list[str], dict[int, str] | None,
                                                 dict[str, tuple[int, ...]]]:
    """``(id, prediction, truth)`` pairs, ids missing a prediction, and label names and contoured label values
    by case id when ``gt`` is a dataset (see :func:`ground_truth`)."""
    preds = {image_stem(p): p for p in sorted(Path(pred_dir).iterdir())
             if image_suffix(p) and not image_stem(p).endswith("_probabilities")}
    truths, names, annotated = ground_truth(gt)
    pairs = [(i, preds[i], truths[i]) for i in sorted(truths) if i in preds]
    missing = sorted(i for i in truths if i not in preds)
    return pairs, missing, names, annotated


def ground_truth(gt: Path) -> tuple[dict[str, Path], dict[int, str] | None, dict[str, tuple[int, ...]]]:
    """Label files by case id, label names when ``gt`` is a dataset, and the contoured label values of the
    dataset's cases that list them (``Case.annotated``; empty for a folder of label files).

    ``gt`` is a folder of label files (e.g. nnU-Net's ``labelsTs``: ``CASE.nii.gz`` per case) or a dataset
    (manifest, MSD or nnU-Net folder, datalist). A dataset contributes its labelled test cases when it has
    any (nnU-Net ``labelsTs``, also without ``imagesTs``; datalist ``testing`` entries with a label), else
    every labelled case, so that the cases `medseg infer` segmented from it are the ones scored.
    """

    if gt.is_dir() and not is_dataset_folder(gt):
        return _label_files(gt), None, {}

    dataset = load_dataset(gt)
    truths = {c.id: c.label for c in dataset.cases if c.split == "test" and c.label is not None}
    if not truths and dataset.source == "nnunet" and (dataset.root / "labelsTs").is_dir():
        truths = _label_files(dataset.root / "labelsTs")
    annotated = {c.id: c.annotated for c in dataset.cases if c.annotated is not None}
    return truths or {c.id: c.label for c in dataset.labelled}, dataset.labels, annotated


def _label_files(folder: Path) -> dict[str, Path]:
    return {image_stem(p): p for p in sorted(folder.iterdir()) if image_suffix(p)}


def evaluate_folder(pred_dir, gt, out_dir, labels: dict[int, str] | None = None, tolerance_mm: float = 1.0,
                    min_lesion_mm3: float = 0.0) -> dict:
    """Evaluate every prediction in ``pred_dir`` against ``gt`` (folder of label files or a dataset).

    Writes ``metrics.csv`` (case x label), ``lesions.csv`` (one row per truth lesion), ``summary.json`` (mean,
    median, std per label and metric under ``summary``; pooled lesion figures per label under ``lesions``) and
    ``summary.md``. Cases whose grids differ are errors, listed and counted, never scored. Labels a case did
    not contour (module docstring) get no row. Truth components under ``min_lesion_mm3`` are not lesions
    (:mod:`medseg.metrics.lesions`). Returns what ``summary.json`` holds, with ``rows`` (the case x
    label rows) and ``lesion_rows`` added.
    """
    pairs, missing, names, annotated = pair_cases(Path(pred_dir), Path(gt))
    names = names or _names_from_results(Path(pred_dir))
    if not pairs:
        raise MedsegError("no prediction matches a ground-truth case id", pred_dir)
    rows, lesions, errors = [], [], [f"{i}: no prediction" for i in missing]
    omitted: Counter[str] = Counter()  # label name -> cases that did not contour it
    for case_id, pred_path, truth_path in pairs:
        try:
            truth = read_volume(truth_path, label=True)
            pred = read_volume(pred_path, label=True)
            names_here = labels or names or {int(v): f"label_{int(v)}" for v in
                                             np.union1d(np.unique(truth.array), np.unique(pred.array)) if v != 0}
            contoured = annotated.get(case_id)
            case_rows, case_lesions = score_case(pred, truth, names_here, tolerance_mm, case_id, contoured,
                                                    min_lesion_mm3)
        except MedsegError as exc:
            errors.append(f"{case_id}: {exc}")
            continue
        rows += case_rows
        lesions += case_lesions
        if contoured is not None:
            omitted.update(name for value, name in names_here.items() if value != 0 and value not in contoured)
    for line in errors:
        log.error(f"{line}")
    result = {"summary": summarize(rows),
              "lesions": summarize_lesions(lesions, _false_positives(rows), _fragments(rows)),
              "small_lesion_mm3": SMALL_LESION_MM3, "min_lesion_mm3": min_lesion_mm3, "errors": errors,
              "cases": len(pairs), "uncontoured_omitted": dict(omitted), "tolerance_mm": tolerance_mm}
    _write_outputs(Path(out_dir), result, rows, lesions)
    return {**result, "rows": rows, "lesion_rows": lesions}


def _false_positives(rows: list[dict]) -> dict[str, list[int]]:
    """Label -> false-positive lesion components of each case row of that label."""
    out: dict[str, list[int]] = {}
    for row in rows:
        out.setdefault(row["label"], []).append(int(row["lesions_false_positive"]))
    return out


def _fragments(rows: list[dict]) -> dict[str, int]:
    """Label -> truth components left unscored as under the minimum lesion size, over all cases."""
    out: dict[str, int] = {}
    for row in rows:
        out[row["label"]] = out.get(row["label"], 0) + int(row["lesion_fragments"])
    return out


def _write_outputs(out: Path, result: dict, rows: list[dict], lesions: list[dict]) -> None:
    """``metrics.csv``, ``lesions.csv`` (a header alone when there is no lesion), ``summary.json``, ``summary.md``."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(out / "metrics.csv", rows)
    if lesions:
        write_csv_atomic(out / "lesions.csv", lesions)
    else:
        write_text_atomic(out / "lesions.csv", ",".join(LESION_COLUMNS) + "\n")
    write_text_atomic(out / "summary.json", json.dumps(result, indent=1))
    write_text_atomic(out / "summary.md", markdown_table(result["summary"]) + "\n"
                      + lesion_markdown(result["lesions"], result["min_lesion_mm3"]))


def summarize(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """``{label: {metric: {mean, median, std}}}`` over cases."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label in dict.fromkeys(r["label"] for r in rows):
        these = [r for r in rows if r["label"] == label]
        out[label] = {}
        for metric in METRICS:
            values = np.array([r[metric] for r in these], float)
            out[label][metric] = {"mean": float(values.mean()), "median": float(np.median(values)),
                                  "std": float(values.std()), "n": int(len(values))}
    return out


def markdown_table(summary: dict) -> str:
    """Mean / median / std per label for the main metrics, as a Markdown table."""
    shown = ["dice", "iou", "hd95", "assd", "nsd", "volume_diff_mm3", "lesion_f1"]
    lines = ["| label | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
    for label, metrics in summary.items():
        cells = [f"{metrics[m]['mean']:.3f} / {metrics[m]['median']:.3f} / {metrics[m]['std']:.3f}" for m in shown]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "Mean / median / std over cases.\n\n" + "\n".join(lines) + "\n"


def _names_from_results(pred_dir: Path) -> dict[int, str] | None:
    """Label names recorded by `medseg infer` in its per-case JSON files, when there are any."""
    for path in sorted(pred_dir.glob("*.json")):
        try:
            labels = json.loads(path.read_text()).get("labels")
        except (OSError, ValueError, AttributeError):
            continue
        if labels:
            return {int(k): v for k, v in labels.items()}
    return None
