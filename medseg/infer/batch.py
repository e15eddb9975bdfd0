"""`medseg infer` over many cases: progress, skip what is done, isolate failures, summaries for people and
scripts.

Every case ends with one status from a fixed set (:data:`STATUSES`): ``done`` (segmented by this run,
``redone`` says why when an earlier result was replaced), ``skipped`` (an earlier result by the same model
and settings holds), ``failed`` (an error while segmenting, or plausibility flags with ``fail_on_flags``)
or ``refused`` (the input itself cannot be segmented, e.g. a DICOM series with a missing slice).
``summary.csv`` (one row per case) and ``summary.json`` (counts, model id, timings, every case with its
status, reason, flags, outputs and DICOM UIDs) are written at the end.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from tqdm import tqdm

from medseg.errors import MedsegError, NothingToSegment, UsageError, unexpected
from medseg.infer.case import segment_case
from medseg.infer.inputs import InputCase, discover
from medseg.infer.options import InferOptions
from medseg.infer.outputs import expected_outputs, output_path, read_case_json
from medseg.infer.predictor import Predictor
from medseg.io.atomic import make_output_dir, remove_stale_temporaries, write_csv_atomic, write_text_atomic
from medseg.logs import FLAG, REFUSED
from medseg.model.distributed import setup, shutdown

log = logging.getLogger(__name__)

__all__ = ["STATUSES", "InferOptions", "NothingToSegment", "run_batch", "segment_case"]

STATUSES = ("done", "skipped", "failed", "refused")


def run_batch(model_dir, input_path, out_dir, options: InferOptions | None = None, device: str = "auto",
              precision: str = "auto") -> dict:
    """Segment every case under ``input_path`` into ``out_dir``.

    A case is done when its ``<id>.json`` exists (written last). A done case is skipped only when that
    JSON names this model (its id) and the same result-changing settings (mirroring, overlap,
    focus, post-processing rules) and lists every output asked for; otherwise it is redone and ``redone`` says
    why. ``overwrite`` redoes every case. A failing case is reported in one line and the rest go on.

    Returns:
        The run summary (as written to ``summary.json``): ``counts`` per status, ``flagged``, ``model_id``,
        ``seconds``, ``cases`` and the paths of ``summary.csv`` and ``summary.json``.

    Raises:
        NothingToSegment: when the input holds nothing to segment.
        MedsegError: when the output folder or the model cannot be used (before any case is touched).
    """
    options = options or InferOptions()
    start = time.perf_counter()
    out = make_output_dir(out_dir)  # a mistyped output path fails before any work
    ctx, dev = setup(device)  # under torchrun: one shard per rank, one GPU per rank
    shard = options.shard or ((ctx.rank, ctx.world) if ctx.world > 1 else None)
    cases, skipped_lines = discover(input_path, options.series)
    for line in skipped_lines if not shard or shard[0] == 0 else []:
        log.info(line)
    if not cases:
        raise NothingToSegment("nothing to segment (no image files, DICOM series or dataset cases found)",
                               input_path)
    if shard:
        index, count = shard
        if not 0 <= index < count:
            raise UsageError(f"shard {index}/{count}: the index must be 0..{count - 1}")
        cases = sorted(cases, key=lambda c: c.id)[index::count]
    predictor = Predictor.from_dir(model_dir, device=str(dev), precision=precision)
    settings = predictor.settings(options.mirror, options.overlap, options.focus)
    remove_stale_temporaries(out)  # left by a run that was killed mid-write
    rows = [_run_case(predictor, case, out, options, settings)
            for case in tqdm(cases, desc="cases", unit="case", disable=None)]
    if shard:  # each shard writes its own rows; the summary merges every shard done so far (all, under torchrun)
        write_text_atomic(out / f"summary.shard{shard[0]}of{shard[1]}.json", json.dumps(rows))
        ctx.barrier()
        rows = merge_shard_rows(out, shard[1])
        shutdown(ctx)
    summary = _summary(rows, predictor.model_id, out, time.perf_counter() - start)
    if ctx.main:
        write_csv_atomic(out / "summary.csv", [_csv_row(r) for r in rows])
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
        log.info(summary_line(summary))
    return summary


def _run_case(predictor, case: InputCase, out: Path, options: InferOptions, settings: dict) -> dict:
    """Segment one case unless an earlier result holds; returns its summary row (never raises)."""
    if case.refused:
        log.error(f"{case.id} ({case.description}): {case.refused}", extra=REFUSED)
        return {"id": case.id, "status": "refused", "reason": case.refused, "model_id": predictor.model_id,
                **_dicom_uids(case)}
    previous = read_case_json(out / f"{case.id}.json")
    reason = "" if previous is None else redo_reason(previous, predictor.model_id, settings, options, case, out)
    if previous is not None and not reason:
        return _row(previous, "skipped", "done earlier by this model with these settings", options)
    try:
        record = segment_case(predictor, case, out, options)
    except MedsegError as exc:
        log.error(f"{case.id}: {exc}")
        return {"id": case.id, "status": "failed", "reason": str(exc), "model_id": predictor.model_id,
                **_dicom_uids(case)}
    except Exception as exc:  # one broken case must not stop an unattended batch
        log.error(f"{case.id}: {unexpected(exc)}")
        return {"id": case.id, "status": "failed", "reason": unexpected(exc), "model_id": predictor.model_id,
                **_dicom_uids(case)}
    for text in record["warnings"]:
        log.warning(f"{case.id}: {text}")
    for text in record["flags"]:
        log.warning(f"{case.id}: {text}", extra=FLAG)
    log.info(f"{case.id} ({case.description}): done in {record['seconds']:.1f} s"
             + (f" (redone: {reason})" if reason else ""))
    return _row(record, "done", f"redone: {reason}" if reason else "", options)


def _row(record: dict, status: str, reason: str, options: InferOptions) -> dict:
    """A summary row from a case JSON (fresh or from an earlier run)."""
    flags = list(record.get("flags", []))
    if flags and options.fail_on_flags and status == "done":
        status, reason = "failed", "plausibility flags (--fail-on-flags): " + " | ".join(flags)
    dicom = (record.get("input") or {}).get("dicom") or {}
    return {"id": record["id"], "status": status, "reason": reason, "model_id": record.get("model_id"),
            "seconds": record.get("seconds"), "flags": flags, "warnings": list(record.get("warnings", [])),
            "outputs": dict(record.get("outputs", {})), "label_volumes_mm3": dict(record.get("label_volumes_mm3", {})),
            "predicted_quality": (record.get("quality") or {}).get("min"),
            "study_instance_uid": dicom.get("study_instance_uid"),
            "series_instance_uid": dicom.get("series_instance_uid")}


def _dicom_uids(case: InputCase) -> dict:
    series = case.series
    if series is None:
        return {}
    return {"study_instance_uid": getattr(series, "study_uid", ""), "series_instance_uid": series.uid}


def _summary(rows: list[dict], model_id: str, out: Path, seconds: float) -> dict:
    counts = {status: sum(r["status"] == status for r in rows) for status in STATUSES}
    done = [r["seconds"] for r in rows if r["status"] == "done" and r.get("seconds") is not None]
    return {"counts": counts, "redone": sum(str(r.get("reason", "")).startswith("redone") for r in rows),
            "flagged": sum(bool(r.get("flags")) for r in rows), "model_id": model_id,
            "seconds": round(seconds, 2),
            "seconds_per_case": round(sum(done) / len(done), 2) if done else None,
            "output_dir": str(out.resolve()), "summary_csv": "summary.csv", "cases": rows}


def summary_line(summary: dict) -> str:
    counts = summary["counts"]
    redone = f" ({summary['redone']} redone)" if summary["redone"] else ""
    flagged = f", {summary['flagged']} flagged" if summary["flagged"] else ""
    return (f"{counts['done']} segmented{redone}, {counts['skipped']} skipped, {counts['failed']} failed, "
            f"{counts['refused']} refused{flagged} in {summary['seconds']:.1f} s; model {summary['model_id']}; "
            f"summary in {Path(summary['output_dir']) / 'summary.json'}")


def _csv_row(row: dict) -> dict:
    flat = {k: v for k, v in row.items() if k not in ("flags", "warnings", "outputs", "label_volumes_mm3")}
    flat.update({f"volume_mm3_{k}": v for k, v in row.get("label_volumes_mm3", {}).items()})
    flat["flags"] = " | ".join(row.get("flags", []))
    flat["warnings"] = " | ".join(row.get("warnings", []))
    return flat


def redo_reason(record: dict, model_id: str, settings: dict, options: InferOptions, case: InputCase,
                out: Path) -> str:
    """Why an earlier result must be redone (empty: it still holds and is skipped)."""
    if options.overwrite:
        return "--overwrite"
    if "outputs" not in record or "id" not in record:
        return "earlier result unreadable"
    if record.get("model_id") != model_id:
        return "model changed"
    earlier = record.get("settings") or {}
    if changed := [k for k in settings if earlier.get(k) != settings[k]]:
        return f"settings changed ({', '.join(changed)})"
    if missing := [k for k in expected_outputs(case, options) if k not in record["outputs"]]:
        return f"{', '.join(missing)} asked for"
    if any(not output_path(out, p).exists() for p in record["outputs"].values()):
        return "output file missing"
    return ""


def merge_shard_rows(out: Path, count: int) -> list[dict]:
    """Rows of every ``summary.shard<i>of<count>.json`` present in ``out`` (all shards once they are done)."""
    rows: list[dict] = []
    for i in range(count):
        path = out / f"summary.shard{i}of{count}.json"
        if path.exists():
            rows += json.loads(path.read_text())
    return sorted(rows, key=lambda r: r["id"])
