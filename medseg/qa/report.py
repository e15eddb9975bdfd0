"""`medseg qa`: one self-contained HTML page (images embedded) to review a batch of results, worst first.

Case ids are shown, never file paths, patient names or IDs.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError
from medseg.infer.case import output_path
from medseg.io.atomic import write_text_atomic
from medseg.io.geometry import grid_mismatch
from medseg.io.volume_io import read_volume
from medseg.qa.figures import figure_png_base64, overlay_figure
from medseg.qa.flags import case_flags
from medseg.types import Volume


@dataclass
class CaseReview:
    """Everything the report shows for one case."""

    id: str
    volumes: dict[str, float]
    flags: list[str]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> metric -> value
    image_png: str = ""

    @property
    def mean_dice(self) -> float | None:
        values = [m["dice"] for m in self.metrics.values()]
        return float(np.mean(values)) if values else None

    def severity(self) -> tuple:
        """Sort key: most flags first, then lowest Dice."""
        return (-len(self.flags), self.mean_dice if self.mean_dice is not None else 1.0, self.id)


def load_result_image(record: dict) -> Volume:
    """The input image of an inference record (a file, or the DICOM series the id names)."""
    source = Path(record["input"]["path"])
    if source.is_dir():
        from medseg.infer.inputs import discover
        from medseg.io.dicom import read_series

        cases, _ = discover(source)
        match = [c for c in cases if c.id == record["id"] and c.series is not None]
        if not match:
            raise MedsegError(f"series of case {record['id']} not found any more", source)
        return read_series(match[0].series)
    from medseg.preprocess.io import load_image

    return load_image([Path(p) for p in record["input"].get("images", [source])])


def review_case(record: dict, gt_label: Path | None = None, training_volumes: dict | None = None) -> CaseReview:
    """Flags, volumes, metrics (when ``gt_label``) and an overlay picture for one inference record."""
    from medseg.metrics.evaluate import evaluate_case

    label = read_volume(record["outputs"]["label"], label=True)
    image = load_result_image(record)
    names = {int(k): v for k, v in record.get("labels", {}).items()} or {
        int(v): f"label_{int(v)}" for v in np.unique(label.array) if v != 0}
    probs = None
    if "probabilities" in record["outputs"]:
        probs = read_volume(record["outputs"]["probabilities"]).array
    geometry = grid_mismatch(image.spatial_shape, image.affine, label.spatial_shape, label.affine)
    flags = case_flags(label.array, label.spacing, names, training_volumes, probs, geometry)
    volumes = {n: float((label.array == v).sum()) * float(np.prod(label.spacing)) for v, n in names.items() if v}
    review = CaseReview(id=record["id"], volumes=volumes, flags=flags)
    if gt_label is not None and not geometry:
        truth = read_volume(gt_label, label=True)
        try:
            rows = evaluate_case(label, truth, {0: "background", **names}, case_id=record["id"])
            review.metrics = {r["label"]: {k: r[k] for k in ("dice", "hd95", "nsd", "volume_diff_mm3")} for r in rows}
        except MedsegError as exc:
            review.flags.append(f"ground truth: {exc.problem}")
    channel = image.array if image.array.ndim == 3 else image.array[0]
    if not geometry:
        fig = overlay_figure(channel, label.array, label.spacing, names, title=record["id"])
        review.image_png = figure_png_base64(fig)
    return review


def build_report(results_dir: str | Path, gt: str | Path | None = None, out: str | Path | None = None,
                 echo: Callable[[str], None] = print) -> Path:
    """Review every case of a `medseg infer` output folder and write ``qa_report.html`` (worst first)."""
    results = Path(results_dir)
    records = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    records = [r for r in records if isinstance(r, dict) and "label" in r.get("outputs", {})]
    for record in records:  # case JSONs name outputs relative to the results folder
        record["outputs"] = {k: str(output_path(results, v)) for k, v in record["outputs"].items()}
    if not records:
        raise MedsegError("no inference results (<id>.json from medseg infer) found", results)
    truths = _truth_paths(Path(gt)) if gt else {}
    training = _training_volumes(records[0])
    reviews = []
    for record in records:
        try:
            reviews.append(review_case(record, truths.get(record["id"]), training))
        except MedsegError as exc:
            reviews.append(CaseReview(id=record["id"], volumes={}, flags=[f"cannot review: {exc.problem}"]))
            echo(f"error: {record['id']}: {exc}")
    reviews.sort(key=CaseReview.severity)
    path = Path(out) if out else results / "qa_report.html"
    write_text_atomic(path, render_html(reviews, has_gt=bool(truths)))
    flagged = sum(bool(r.flags) for r in reviews)
    echo(f"QA report: {len(reviews)} cases, {flagged} flagged -> {path}")
    return path


def _truth_paths(gt: Path) -> dict[str, Path]:
    """The same pairing as ``medseg evaluate``: label files by case id."""
    from medseg.metrics.evaluate import ground_truth

    return ground_truth(gt)[0]


def _training_volumes(record: dict) -> dict | None:
    model_dir = record.get("model_dir")
    fp = Path(model_dir) / "fingerprint.json" if model_dir else None
    if fp and fp.exists():
        return json.loads(fp.read_text()).get("label_volume_mm3")
    return None


def render_html(reviews: list[CaseReview], has_gt: bool) -> str:
    """The report page: a summary table and one section per case, images inlined as base64 PNG."""
    esc = html.escape
    dice = [r.mean_dice for r in reviews if r.mean_dice is not None]
    head = (f"<p>{len(reviews)} cases, {sum(bool(r.flags) for r in reviews)} flagged"
            + (f"; mean Dice {np.mean(dice):.3f}" if dice else "") + ". Sorted worst first.</p>")
    rows = []
    for r in reviews:
        d = f"{r.mean_dice:.3f}" if r.mean_dice is not None else "-"
        rows.append(f"<tr><td><a href='#{esc(r.id)}'>{esc(r.id)}</a></td><td>{d}</td>"
                    f"<td>{len(r.flags)}</td><td>{esc('; '.join(r.flags)) or 'ok'}</td></tr>")
    sections = []
    for r in reviews:
        vols = ", ".join(f"{esc(k)} {v:.0f} mm³" for k, v in r.volumes.items())
        metrics = "".join(f"<tr><td>{esc(k)}</td>" + "".join(f"<td>{v:.3f}</td>" for v in m.values()) + "</tr>"
                          for k, m in r.metrics.items())
        table = (f"<table><tr><th>label</th><th>Dice</th><th>HD95 mm</th><th>NSD</th><th>vol. diff mm³</th></tr>"
                 f"{metrics}</table>") if metrics else ""
        flags = "".join(f"<li class='flag'>{esc(f)}</li>" for f in r.flags) or "<li>no flags</li>"
        img = f"<img alt='overlay {esc(r.id)}' src='data:image/png;base64,{r.image_png}'>" if r.image_png else ""
        sections.append(f"<section id='{esc(r.id)}'><h2>{esc(r.id)}</h2><ul>{flags}</ul><p>{vols}</p>{table}{img}"
                        "</section>")
    gt_col = "mean Dice" if has_gt else "mean Dice (no ground truth)"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>medseg QA report</title>
<style>body{{font-family:sans-serif;margin:1.5em;}} table{{border-collapse:collapse;}}
td,th{{border:1px solid #ccc;padding:3px 8px;}} .flag{{color:#b00;}} img{{max-width:100%;}}
section{{border-top:2px solid #ddd;margin-top:1em;}}</style></head><body>
<h1>medseg QA report</h1>{head}
<table><tr><th>case</th><th>{gt_col}</th><th>flags</th><th>what to look at</th></tr>{''.join(rows)}</table>
{''.join(sections)}
</body></html>
"""
