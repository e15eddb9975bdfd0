"""One case of `medseg infer`: read, predict, check plausibility, write every output, then the case JSON.

The case JSON (``<id>.json``, written last, so it marks the case as done) records the model id, the
result-changing settings, output file names relative to the output folder, label volumes, the predicted
quality (expected Dice per label from the calibrated probabilities), plausibility flags, input warnings, timings
and, for DICOM inputs, the StudyInstanceUID and SeriesInstanceUID (to send results back), never patient names,
IDs or dates.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError
from medseg.infer.inputs import InputCase
from medseg.infer.options import InferOptions
from medseg.infer.outputs import Segmented, cannot_write, write_case_json, write_outputs
from medseg.infer.plausibility import input_flags, quality_flags, result_flags
from medseg.io.dicom import read_series
from medseg.preprocess.io import load_image


def segment_case(predictor, case: InputCase, out: Path, options: InferOptions) -> dict:
    """Read, predict, write every output that applies (:mod:`medseg.infer.outputs`) and then ``<id>.json``,
    the done marker.

    Raises:
        MedsegError: when the input was refused or cannot be read, or an output cannot be written.
    """
    if case.refused:
        raise MedsegError(f"input refused: {case.refused}")
    t0 = time.perf_counter()
    volume = read_series(case.series) if case.series is not None else load_image(case.images)
    read_seconds = time.perf_counter() - t0
    prediction = predictor.predict(volume, probabilities=options.probabilities, mirror=options.mirror,
                                   overlap=options.overlap, focus=options.focus)
    label = prediction.label
    if label.spatial_shape != volume.spatial_shape or not np.array_equal(label.affine, volume.affine):
        raise MedsegError("internal error: prediction grid differs from the input grid; nothing written")
    t1 = time.perf_counter()
    outputs = write_outputs(Segmented(case, volume, prediction, predictor.model_id, predictor.labels, out, options))
    warnings = [str(w) for w in volume.meta.get("warnings", [])] + cannot_write(case, options)
    flags = input_flags(volume, predictor.plan, predictor.fingerprint)
    flags += result_flags(label, predictor.labels, predictor.fingerprint)
    flags += quality_flags(prediction.quality, predictor.labels)
    record = {
        "id": case.id, "model_id": predictor.model_id,
        "settings": predictor.settings(options.mirror, options.overlap, options.focus), "outputs": outputs,
        "label_volumes_mm3": _volumes(label, predictor.labels), "flags": flags,
        "quality": _quality(prediction.quality, predictor.labels, predictor.temperature),
        "warnings": warnings,
        "labels": {str(k): v for k, v in predictor.labels.items()}, "model_dir": str(predictor.model_dir),
        "input": _input_record(case, volume),
        "timings_s": {"read": read_seconds, **prediction.timings, "write": time.perf_counter() - t1},
        "postprocess": {str(k): v for k, v in prediction.postprocess.items()},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_case_json(out, record)
    return record


def _quality(quality: dict[int, float], labels: dict[int, str], temperature: float) -> dict:
    """The case JSON's predicted quality: expected Dice per label name, its minimum (what the QA report sorts
    by) and the temperature that calibrated the probabilities."""
    named = {labels[v]: round(q, 4) for v, q in sorted(quality.items())}
    return {"expected_dice": named, "min": min(named.values(), default=1.0), "temperature": temperature}


def _volumes(label, labels: dict[int, str]) -> dict[str, float]:
    voxel_mm3 = float(np.prod(label.spacing))
    return {name: float((label.array == value).sum()) * voxel_mm3 for value, name in labels.items() if value != 0}


def _input_record(case: InputCase, volume) -> dict:
    record = {"path": _source_path(case), "images": [str(p) for p in case.images],
              "shape": list(volume.spatial_shape), "spacing_mm": list(volume.spacing),
              "affine": volume.affine.tolist(), "modality": volume.meta.get("modality"),
              "description": case.description}
    if case.series is not None:
        record["dicom"] = {"study_instance_uid": volume.meta.get("study_uid", ""),
                           "series_instance_uid": volume.meta.get("series_uid", "")}
    return record


def _source_path(case: InputCase) -> str:
    """Where the case's image lives: the file, or the deepest folder holding all of a series' slices."""
    if case.series is not None:
        return os.path.commonpath([str(p.parent) for p in case.series.files])
    return str(case.images[0])
