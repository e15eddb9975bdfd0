"""`medseg infer` over many cases: progress, skip what is done, isolate failures, atomic outputs, summary."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError, unexpected
from medseg.infer.inputs import InputCase, SeriesFilter, discover
from medseg.io.atomic import make_output_dir, remove_stale_temporaries, write_csv_atomic, write_text_atomic


@dataclass
class InferOptions:
    """Options of a batch run (the CLI maps its flags onto these)."""

    overwrite: bool = False
    save_probabilities: bool = False
    dicom_seg: bool = True
    mirror: bool | None = None
    overlap: float | None = None
    series: SeriesFilter | None = None
    shard: tuple[int, int] | None = None  # (index, count): take every count-th case from index


def run_batch(model_dir, input_path, out_dir, options: InferOptions | None = None, device: str = "auto",
              precision: str = "auto", echo: Callable[[str], None] = print) -> dict:
    """Segment every case under ``input_path`` into ``out_dir``.

    A case is done when its ``<id>.json`` exists (written last). A done case is skipped only when that
    JSON names this model (its id) and the same result-changing settings (mirroring, overlap,
    post-processing rules) and lists every output asked for; otherwise it is redone and its status says
    why. ``overwrite`` redoes every case. A failing case is reported in one line and the rest go on.

    Returns:
        Summary with counts (``done``, of which ``redone``; ``skipped``, ``failed``), total seconds and the
        CSV path.
    """
    from tqdm import tqdm

    from medseg.infer.predictor import Predictor
    from medseg.model.distributed import setup, shutdown

    options = options or InferOptions()
    start = time.perf_counter()
    out = make_output_dir(out_dir)  # a mistyped output path fails before any work
    ctx, dev = setup(device)  # under torchrun: one shard per rank, one GPU per rank
    shard = options.shard or ((ctx.rank, ctx.world) if ctx.world > 1 else None)
    cases, skipped_lines = discover(input_path, options.series)
    for line in skipped_lines if not shard or shard[0] == 0 else []:
        echo(line)
    if not cases:
        raise MedsegError("nothing to segment (no image files, DICOM series or manifest cases found)", input_path)
    if shard:
        index, count = shard
        if not 0 <= index < count:
            raise MedsegError(f"shard {index}/{count}: the index must be 0..{count - 1}")
        cases = sorted(cases, key=lambda c: c.id)[index::count]
    predictor = Predictor.from_dir(model_dir, device=str(dev), precision=precision)
    settings = predictor.settings(options.mirror, options.overlap)
    remove_stale_temporaries(out)  # left by a run that was killed mid-write
    rows = []
    for case in tqdm(cases, desc="cases", unit="case", disable=None):
        previous = _read_record(out / f"{case.id}.json")
        reason = "" if previous is None else redo_reason(previous, predictor.model_id, settings, options, case)
        if previous is not None and not reason:
            rows.append(summary_row(previous, "skipped (done; --overwrite to redo)"))
            continue
        try:
            record = segment_case(predictor, case, out, options)
            rows.append(summary_row(record, f"redone: {reason}" if reason else "ok"))
            for text in record["warnings"]:
                echo(f"warning: {case.id}: {text}")
            echo(f"{case.id} ({case.description}): ok in {record['seconds']:.1f} s"
                 + (f" (redone: {reason})" if reason else ""))
        except MedsegError as exc:
            rows.append({"id": case.id, "status": "failed", "error": str(exc)})
            echo(f"error: {case.id}: {exc}")
        except Exception as exc:  # one broken case must not stop an unattended batch
            rows.append({"id": case.id, "status": "failed", "error": unexpected(exc)})
            echo(f"error: {case.id}: {unexpected(exc)}")
    summary_path = out / "summary.csv"
    if shard:  # each shard writes its own rows; the summary merges every shard done so far (all, under torchrun)
        write_csv_atomic(out / f"summary.shard{shard[0]}of{shard[1]}.csv", rows)
        ctx.barrier()
        rows = merge_shard_summaries(out, shard[1])
        shutdown(ctx)
    counts = {s: sum(r["status"].startswith(s) for r in rows) for s in ("ok", "redone", "skipped", "failed")}
    total = time.perf_counter() - start
    if ctx.main:
        write_csv_atomic(summary_path, rows)
        redone = f" ({counts['redone']} redone)" if counts["redone"] else ""
        echo(f"{counts['ok'] + counts['redone']} segmented{redone}, {counts['skipped']} skipped, "
             f"{counts['failed']} failed in {total:.1f} s; model {predictor.model_id}; summary in {summary_path}")
    return {"done": counts["ok"] + counts["redone"], "redone": counts["redone"], "skipped": counts["skipped"],
            "failed": counts["failed"], "seconds": total, "summary": str(summary_path)}


def _read_record(path: Path) -> dict | None:
    """The case JSON of an earlier run; ``{}`` when unreadable (so the case is redone), None when absent."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def redo_reason(record: dict, model_id: str, settings: dict, options: InferOptions, case: InputCase) -> str:
    """Why an earlier result must be redone (empty: it still holds and is skipped)."""
    if options.overwrite:
        return "--overwrite"
    if "outputs" not in record:
        return "earlier result unreadable"
    if record.get("model_id") != model_id:
        return "model changed"
    earlier = record.get("settings") or {}
    if changed := [k for k in settings if earlier.get(k) != settings[k]]:
        return f"settings changed ({', '.join(changed)})"
    wanted = ["label"] + (["probabilities"] if options.save_probabilities else [])
    wanted += ["dicom_seg"] if options.dicom_seg and case.series is not None else []
    if missing := [k for k in wanted if k not in record["outputs"]]:
        return f"{', '.join(missing)} asked for"
    if any(not Path(p).exists() for p in record["outputs"].values()):
        return "output file missing"
    return ""


def summary_row(record: dict, status: str) -> dict:
    """A ``summary.csv`` row from a case JSON (fresh or from an earlier run)."""
    return {"id": record["id"], "status": status, "model_id": record.get("model_id"),
            "seconds": record.get("seconds"),
            **{f"volume_mm3_{k}": v for k, v in record.get("label_volumes_mm3", {}).items()},
            "warnings": " | ".join(record.get("warnings", []))}


def segment_case(predictor, case: InputCase, out: Path, options: InferOptions) -> dict:
    """Read, predict and write one case; ``<id>.json`` is written last, as the done marker."""
    from medseg.io.dicom import read_series
    from medseg.io.volume_io import write_volume
    from medseg.preprocess.io import load_image

    t0 = time.perf_counter()
    volume = read_series(case.series) if case.series is not None else load_image(case.images)
    read_seconds = time.perf_counter() - t0
    prediction = predictor.predict(volume, keep_probabilities=options.save_probabilities, mirror=options.mirror,
                                   overlap=options.overlap)
    label = prediction.label
    if label.spatial_shape != volume.spatial_shape or not np.array_equal(label.affine, volume.affine):
        raise MedsegError("internal error: prediction grid differs from the input grid; nothing written")
    t1 = time.perf_counter()
    outputs = {"label": str(write_volume(label, out / f"{case.id}.nii.gz", overwrite=True, label=True))}
    if prediction.probabilities is not None:
        probs = volume.with_array(prediction.probabilities.astype(np.float32))
        outputs["probabilities"] = str(write_volume(probs, out / f"{case.id}_probabilities.nii.gz", overwrite=True,
                                                    label=False))
    if case.series is not None and options.dicom_seg:
        from medseg.io.seg import write_dicom_seg

        names = {k: v for k, v in predictor.labels.items() if k != 0}
        outputs["dicom_seg"] = str(write_dicom_seg(label, case.series.files, names, out / f"{case.id}.seg.dcm",
                                                   algorithm_version=predictor.model_id, overwrite=True))
    voxel_mm3 = float(np.prod(volume.spacing))
    volumes = {name: float((label.array == value).sum()) * voxel_mm3
               for value, name in predictor.labels.items() if value != 0}
    record = {
        "id": case.id, "model_id": predictor.model_id,
        "settings": predictor.settings(options.mirror, options.overlap), "outputs": outputs,
        "label_volumes_mm3": volumes, "warnings": [str(w) for w in volume.meta.get("warnings", [])],
        "labels": {str(k): v for k, v in predictor.labels.items()}, "model_dir": str(predictor.model_dir),
        "input": {"path": _source_path(case),
                  "images": [str(p) for p in case.images],
                  "shape": list(volume.spatial_shape), "spacing_mm": list(volume.spacing),
                  "affine": volume.affine.tolist(), "modality": volume.meta.get("modality"),
                  "description": case.description},
        "timings_s": {"read": read_seconds, **prediction.timings, "write": time.perf_counter() - t1},
        "postprocess": {str(k): v for k, v in prediction.postprocess.items()},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_text_atomic(out / f"{case.id}.json", json.dumps(record, indent=1))
    return record


def _source_path(case: InputCase) -> str:
    """Where the case's image lives: the file, or the deepest folder holding all of a series' slices."""
    import os

    if case.series is not None:
        return os.path.commonpath([str(p.parent) for p in case.series.files])
    return str(case.images[0])


def merge_shard_summaries(out: Path, count: int) -> list[dict]:
    """Rows of every ``summary.shard<i>of<count>.csv`` present in ``out`` (all shards once they are done)."""
    import csv

    rows: list[dict] = []
    for i in range(count):
        path = out / f"summary.shard{i}of{count}.csv"
        if path.exists():
            with open(path, newline="") as fh:
                rows += list(csv.DictReader(fh))
    return sorted(rows, key=lambda r: r["id"])
