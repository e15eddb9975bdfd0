"""`medseg qa`: one self-contained HTML page (images embedded) to review a batch of results, worst first.

Per case: the prediction on three planes (with ground truth: truth as contour lines, false positives and
negatives marked, planes through the largest error), an uncertainty map when probabilities were saved,
flags, volumes and metrics; above the cases, the training curve of the model when its folder has one.
Case ids and model ids are shown, never file paths, patient names or IDs.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError
from medseg.infer.inputs import discover
from medseg.infer.outputs import output_path
from medseg.io.atomic import write_text_atomic
from medseg.io.dicom import read_series
from medseg.io.geometry import grid_mismatch
from medseg.io.volume_io import read_volume
from medseg.metrics.evaluate import evaluate_case, ground_truth
from medseg.preprocess.io import load_image
from medseg.qa.figures import comparison_figure, figure_png_base64, overlay_figure, uncertainty_figure
from medseg.qa.flags import case_flags
from medseg.qa.uncertainty import normalised_entropy
from medseg.types import Volume

log = logging.getLogger(__name__)

NO_PROBABILITIES = ("No probabilities saved for this case, so no uncertainty map "
                    "(medseg infer --probabilities saves them).")


@dataclass
class CaseReview:
    """Everything the report shows for one case."""

    id: str
    volumes: dict[str, float]
    flags: list[str]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> metric -> value
    image_png: str = ""  # base64 PNG: the prediction (against the truth when given)
    uncertainty_png: str = ""  # base64 PNG: the uncertainty map, when probabilities were saved
    notes: list[str] = field(default_factory=list)  # what is not shown, and why
    quality: float | None = None  # predicted quality (lowest expected Dice over labels), from the case JSON

    @property
    def mean_dice(self) -> float | None:
        values = [m["dice"] for m in self.metrics.values()]
        return float(np.mean(values)) if values else None

    def severity(self, by_quality: bool = False) -> tuple:
        """Sort key: most flags first, then lowest Dice; ``by_quality`` (no ground truth): lowest predicted
        quality first (cases without one last), then most flags."""
        if by_quality:
            return (self.quality if self.quality is not None else 2.0, -len(self.flags), self.id)
        return (-len(self.flags), self.mean_dice if self.mean_dice is not None else 1.0, self.id)


def load_result_image(record: dict) -> Volume:
    """The input image of an inference record (a file, or the DICOM series the id names)."""
    source = Path(record["input"]["path"])
    if source.is_dir():

        cases, _ = discover(source)
        match = [c for c in cases if c.id == record["id"] and c.series is not None]
        if not match:
            raise MedsegError(f"series of case {record['id']} not found any more", source)
        return read_series(match[0].series)

    return load_image([Path(p) for p in record["input"].get("images", [source])])


@dataclass
class ResultCase:
    """The volumes of one inference result, read for review.

    Attributes:
        image: The input image's first channel, on the label's grid when ``geometry`` is empty.
        label: The predicted label map.
        names: Foreground label value -> name.
        geometry: Mismatches between the image and label grids (empty: same grid).
        probabilities: ``(K, X, Y, Z)`` class probabilities, when `medseg infer --probabilities` saved them.
        truth: The ground truth label map, when given.
    """

    image: Volume
    label: Volume
    names: dict[int, str]
    geometry: list[str]
    probabilities: np.ndarray | None = None
    truth: Volume | None = None


def load_result(record: dict, gt_label: str | Path | None = None) -> ResultCase:
    """Read the image, label map, probabilities (if saved) and ground truth (if given) of an inference record."""
    label = read_volume(record["outputs"]["label"], label=True)
    image = load_result_image(record)
    if image.array.ndim == 4:
        image = image.with_array(image.array[0])
    names = {int(k): v for k, v in record.get("labels", {}).items() if int(k) != 0} or {
        int(v): f"label_{int(v)}" for v in np.unique(label.array) if v != 0}
    probs = record["outputs"].get("probabilities")
    return ResultCase(image=image, label=label, names=names,
                      geometry=grid_mismatch(image.spatial_shape, image.affine, label.spatial_shape, label.affine),
                      probabilities=read_volume(probs).array if probs else None,
                      truth=read_volume(gt_label, label=True) if gt_label is not None else None)


def review_case(record: dict, gt_label: Path | None = None, training: dict | None = None,
                annotated: tuple[int, ...] | None = None) -> CaseReview:
    """Flags, volumes, metrics (when ``gt_label``; only labels the truth contoured, given ``annotated``) and
    pictures for one inference record; ``training``: the model's fingerprint (label volumes, border contact)."""

    case = load_result(record, gt_label)
    label, names = case.label, case.names
    flags = case_flags(label.array, label.spacing, names, (training or {}).get("label_volume_mm3"),
                       case.probabilities, case.geometry, (training or {}).get("label_border_fraction"))
    volumes = {n: float((label.array == v).sum()) * float(np.prod(label.spacing)) for v, n in names.items()}
    review = CaseReview(id=record["id"], volumes=volumes, flags=flags,
                        quality=(record.get("quality") or {}).get("min"))
    truth = None
    if case.truth is not None and not case.geometry:
        try:
            rows = evaluate_case(label, case.truth, {0: "background", **names}, case_id=record["id"],
                                 annotated=annotated)
            review.metrics = {r["label"]: {k: r[k] for k in ("dice", "hd95", "nsd", "volume_diff_mm3")} for r in rows}
            truth = case.truth.array
        except MedsegError as exc:
            review.flags.append(f"ground truth: {exc.problem}")
    if case.geometry:
        review.notes.append("No pictures: the label map is not on the image's grid.")
        return review
    image, grid = case.image.array, label.affine
    fig = (comparison_figure(image, label.array, truth, grid, names, title=record["id"]) if truth is not None
           else overlay_figure(image, label.array, grid, names, title=record["id"]))
    review.image_png = figure_png_base64(fig)
    if case.probabilities is None:
        review.notes.append(NO_PROBABILITIES)
    else:
        fig = uncertainty_figure(image, normalised_entropy(case.probabilities), label.array, grid, title=record["id"])
        review.uncertainty_png = figure_png_base64(fig)
    return review


def read_records(results: str | Path) -> list[dict]:
    """The case JSONs of a `medseg infer` output folder (by file name), their outputs as full paths."""
    results = Path(results)
    records = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    records = [r for r in records if isinstance(r, dict) and "label" in r.get("outputs", {})]
    for record in records:  # case JSONs name outputs relative to the results folder
        record["outputs"] = {k: str(output_path(results, v)) for k, v in record["outputs"].items()}
    return records


def build_report(results_dir: str | Path, gt: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Review every case of a `medseg infer` output folder and write ``qa_report.html`` (worst first)."""
    results = Path(results_dir)
    records = read_records(results)
    if not records:
        raise MedsegError("no inference results (<id>.json from medseg infer) found", results)
    truths, _, annotated = ground_truth(Path(gt)) if gt else ({}, None, {})
    training = _training_fingerprint(records[0])
    reviews = []
    for record in records:
        try:
            reviews.append(review_case(record, truths.get(record["id"]), training, annotated.get(record["id"])))
        except MedsegError as exc:
            reviews.append(CaseReview(id=record["id"], volumes={}, flags=[f"cannot review: {exc.problem}"]))
            log.error(f"{record['id']}: {exc}")
    reviews.sort(key=lambda r: r.severity(by_quality=not truths))
    path = Path(out) if out else results / "qa_report.html"
    write_text_atomic(path, render_html(reviews, has_gt=bool(truths), training=_training_curves(records)))
    flagged = sum(bool(r.flags) for r in reviews)
    log.info(f"QA report: {len(reviews)} cases, {flagged} flagged -> {path}")
    return path




def _training_fingerprint(record: dict) -> dict | None:
    """The fingerprint of the model folder a record names (label volumes and border contact), when it has one."""
    model_dir = record.get("model_dir")
    fp = Path(model_dir) / "fingerprint.json" if model_dir else None
    if fp and fp.exists():
        return json.loads(fp.read_text())
    return None


def _training_curves(records: list[dict]) -> dict[str, str]:
    """Model id -> base64 ``progress.png`` of each model folder the records name that has one.

    A folder of fold folders contributes each fold's curve; a ``.zip`` model has none.
    """

    curves = {}
    for record in records:
        folder = Path(record["model_dir"]) if record.get("model_dir") else None
        if folder is None or not folder.is_dir():
            continue
        own = folder / "progress.png"
        pngs = [own] if own.is_file() else sorted(folder.glob("*/progress.png"))
        for png in pngs:
            name = record.get("model_id", "model") + ("" if png.parent == folder else f" ({png.parent.name})")
            curves.setdefault(name, base64.b64encode(png.read_bytes()).decode("ascii"))
    return curves


def render_html(reviews: list[CaseReview], has_gt: bool, training: dict[str, str] | None = None) -> str:
    """The report page: a summary table, training curves and one section per case, images inlined as base64 PNG."""
    esc = html.escape
    dice = [r.mean_dice for r in reviews if r.mean_dice is not None]
    order = "worst first" if has_gt else "lowest predicted quality (expected Dice) first"
    head = (f"<p>{len(reviews)} cases, {sum(bool(r.flags) for r in reviews)} flagged"
            + (f"; mean Dice {np.mean(dice):.3f}" if dice else "") + f". Sorted {order}.</p>")
    rows = []
    for r in reviews:
        d = f"{r.mean_dice:.3f}" if r.mean_dice is not None else "-"
        q = f"{r.quality:.3f}" if r.quality is not None else "-"
        rows.append(f"<tr><td><a href='#{esc(r.id)}'>{esc(r.id)}</a></td><td>{d}</td><td>{q}</td>"
                    f"<td>{len(r.flags)}</td><td>{esc('; '.join(r.flags)) or 'ok'}</td></tr>")
    sections = []
    for r in reviews:
        vols = ", ".join(f"{esc(k)} {v:.0f} mm³" for k, v in r.volumes.items())
        metrics = "".join(f"<tr><td>{esc(k)}</td>" + "".join(f"<td>{v:.3f}</td>" for v in m.values()) + "</tr>"
                          for k, m in r.metrics.items())
        table = (f"<table><tr><th>label</th><th>Dice</th><th>HD95 mm</th><th>NSD</th><th>vol. diff mm³</th></tr>"
                 f"{metrics}</table>") if metrics else ""
        flags = "".join(f"<li class='flag'>{esc(f)}</li>" for f in r.flags) or "<li>no flags</li>"
        kind = "prediction against ground truth" if r.metrics else "prediction"
        img = _img(f"{kind} {r.id}", r.image_png) + _img(f"uncertainty {r.id}", r.uncertainty_png)
        notes = "".join(f"<p class='note'>{esc(n)}</p>" for n in r.notes)
        sections.append(f"<section id='{esc(r.id)}'><h2>{esc(r.id)}</h2><ul>{flags}</ul><p>{vols}</p>{table}{img}"
                        f"{notes}</section>")
    curves = "".join(f"<h2>Training curve: model {esc(name)}</h2>{_img(f'training progress {name}', png)}"
                     for name, png in (training or {}).items())
    gt_col = "mean Dice" if has_gt else "mean Dice (no ground truth)"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>medseg QA report</title>
<style>body{{font-family:sans-serif;margin:1.5em;}} table{{border-collapse:collapse;}}
td,th{{border:1px solid #ccc;padding:3px 8px;}} .flag{{color:#b00;}} img{{max-width:100%;}}
section{{border-top:2px solid #ddd;margin-top:1em;}} .note{{color:#555;font-style:italic;}}</style></head><body>
<h1>medseg QA report</h1>{head}
<table><tr><th>case</th><th>{gt_col}</th><th>predicted quality</th><th>flags</th><th>what to look at</th></tr>
{''.join(rows)}</table>
{curves}
{''.join(sections)}
</body></html>
"""


def _img(alt: str, png_base64: str) -> str:
    """An inline ``<img>`` of a base64 PNG ('' when there is none)."""
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{png_base64}'>" if png_base64 else ""
