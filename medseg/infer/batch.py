"""`medseg infer` over many cases: progress, skip what is done, isolate failures, atomic outputs, summary."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError
from medseg.infer.inputs import InputCase, SeriesFilter, discover
from medseg.io.atomic import remove_stale_temporaries, write_csv_atomic, write_text_atomic


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

    A case is done when its ``<id>.json`` exists (written last); done cases are skipped unless
    ``overwrite``. A failing case is reported in one line and the rest go on.

    Returns:
        Summary with counts (``done``, ``skipped``, ``failed``), total seconds and the CSV path.
    """
    from tqdm import tqdm

    from medseg.infer.predictor import Predictor
    from medseg.train.distributed import setup, shutdown

    options = options or InferOptions()
    start = time.perf_counter()
    out = Path(out_dir)
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
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # left by a run that was killed mid-write
    rows = []
    for case in tqdm(cases, desc="cases", unit="case", disable=None):
        done_marker = out / f"{case.id}.json"
        if done_marker.exists() and not options.overwrite:
            rows.append({"id": case.id, "status": "skipped (done; --overwrite to redo)"})
            continue
        t0 = time.perf_counter()
        try:
            record = segment_case(predictor, case, out, options)
            rows.append({"id": case.id, "status": "ok", "seconds": round(time.perf_counter() - t0, 2),
                         **{f"volume_mm3_{k}": v for k, v in record["label_volumes_mm3"].items()}})
            echo(f"{case.id} ({case.description}): ok in {time.perf_counter() - t0:.1f} s")
        except MedsegError as exc:
            rows.append({"id": case.id, "status": "failed", "error": str(exc)})
            echo(f"error: {case.id}: {exc}")
        except Exception as exc:  # one broken case must not stop an unattended batch
            text = " ".join(str(exc).split())[:300]
            rows.append({"id": case.id, "status": "failed", "error": f"{type(exc).__name__}: {text}"})
            echo(f"error: {case.id}: unexpected {type(exc).__name__}: {text}")
    summary_path = out / "summary.csv"
    if shard:  # each shard writes its own rows; the summary merges every shard done so far (all, under torchrun)
        write_csv_atomic(out / f"summary.shard{shard[0]}of{shard[1]}.csv", rows)
        ctx.barrier()
        rows = merge_shard_summaries(out, shard[1])
        shutdown(ctx)
    counts = {s: sum(r["status"].startswith(s) for r in rows) for s in ("ok", "skipped", "failed")}
    total = time.perf_counter() - start
    if ctx.main:
        write_csv_atomic(summary_path, rows)
        echo(f"{counts['ok']} segmented, {counts['skipped']} skipped, {counts['failed']} failed in {total:.1f} s; "
             f"summary in {summary_path}")
    return {"done": counts["ok"], "skipped": counts["skipped"], "failed": counts["failed"], "seconds": total,
            "summary": str(summary_path)}


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
        "id": case.id, "model_id": predictor.model_id, "outputs": outputs, "label_volumes_mm3": volumes,
        "labels": {str(k): v for k, v in predictor.labels.items()}, "model_dir": str(predictor.model_dir),
        "input": {"path": _source_path(case),
                  "images": [str(p) for p in case.images],
                  "shape": list(volume.spatial_shape), "spacing_mm": list(volume.spacing),
                  "affine": volume.affine.tolist(), "modality": volume.meta.get("modality"),
                  "description": case.description},
        "timings_s": {"read": read_seconds, **prediction.timings, "write": time.perf_counter() - t1},
        "postprocess": {str(k): v for k, v in prediction.postprocess.items()},
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
