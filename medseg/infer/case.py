"""One case of `medseg infer`: read, predict, check plausibility, write every output, then the case JSON.

The case JSON (``<id>.json``, written last, so it marks the case as done) records the model id, the
result-changing settings, output file names relative to the output folder, label volumes, plausibility
flags, input warnings, timings and, for DICOM inputs, the StudyInstanceUID and SeriesInstanceUID (to send
results back), never patient names, IDs or dates.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError
from medseg.infer.inputs import InputCase, SeriesFilter
from medseg.infer.plausibility import input_flags, result_flags
from medseg.io.atomic import write_text_atomic


@dataclass
class InferOptions:
    """Options of a batch run (the CLI maps its flags onto these)."""

    overwrite: bool = False
    save_probabilities: bool = False
    dicom_seg: bool = True
    rtstruct: bool = False
    series_number: int = 9000  # of the DICOM SEG; the RTSTRUCT takes the next number
    series_description: str = "medseg"
    mirror: bool | None = None
    overlap: float | None = None
    series: SeriesFilter | None = None
    shard: tuple[int, int] | None = None  # (index, count): take every count-th case from index
    fail_on_flags: bool = False


def output_path(out: str | Path, name: str) -> Path:
    """Where an output named in a case JSON lies: names are relative to the output folder (older JSONs
    held absolute paths, which this also accepts)."""
    return Path(out) / name


def segment_case(predictor, case: InputCase, out: Path, options: InferOptions) -> dict:
    """Read, predict and write one case; ``<id>.json`` is written last, as the done marker.

    Raises:
        MedsegError: when the input was refused or cannot be read, or an output cannot be written.
    """
    from medseg.io.dicom import read_series
    from medseg.io.volume_io import write_volume
    from medseg.preprocess.io import load_image

    if case.refused:
        raise MedsegError(f"input refused: {case.refused}")
    t0 = time.perf_counter()
    volume = read_series(case.series) if case.series is not None else load_image(case.images)
    read_seconds = time.perf_counter() - t0
    prediction = predictor.predict(volume, keep_probabilities=options.save_probabilities, mirror=options.mirror,
                                   overlap=options.overlap)
    label = prediction.label
    if label.spatial_shape != volume.spatial_shape or not np.array_equal(label.affine, volume.affine):
        raise MedsegError("internal error: prediction grid differs from the input grid; nothing written")
    t1 = time.perf_counter()
    outputs = {"label": write_volume(label, out / f"{case.id}.nii.gz", overwrite=True, label=True).name}
    if prediction.probabilities is not None:
        probs = volume.with_array(prediction.probabilities.astype(np.float32))
        outputs["probabilities"] = write_volume(probs, out / f"{case.id}_probabilities.nii.gz", overwrite=True,
                                                label=False).name
    warnings = [str(w) for w in volume.meta.get("warnings", [])]
    if case.series is not None and case.series.frames and (options.dicom_seg or options.rtstruct):
        warnings.append("no DICOM SEG/RTSTRUCT written: enhanced multi-frame sources are not supported yet")
    elif case.series is not None:
        outputs.update(_dicom_outputs(predictor, case, label, out, options))
    flags = input_flags(volume, predictor.plan, predictor.fingerprint)
    flags += result_flags(label, predictor.labels, predictor.fingerprint)
    record = {
        "id": case.id, "model_id": predictor.model_id,
        "settings": predictor.settings(options.mirror, options.overlap), "outputs": outputs,
        "label_volumes_mm3": _volumes(label, predictor.labels), "flags": flags,
        "warnings": warnings,
        "labels": {str(k): v for k, v in predictor.labels.items()}, "model_dir": str(predictor.model_dir),
        "input": _input_record(case, volume),
        "timings_s": {"read": read_seconds, **prediction.timings, "write": time.perf_counter() - t1},
        "postprocess": {str(k): v for k, v in prediction.postprocess.items()},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_text_atomic(out / f"{case.id}.json", json.dumps(record, indent=1))
    return record


def _dicom_outputs(predictor, case: InputCase, label, out: Path, options: InferOptions) -> dict[str, str]:
    names = {k: v for k, v in predictor.labels.items() if k != 0}
    written = {}
    if options.dicom_seg:
        from medseg.io.seg import write_dicom_seg

        written["dicom_seg"] = write_dicom_seg(
            label, case.series.files, names, out / f"{case.id}.seg.dcm", algorithm_version=predictor.model_id,
            overwrite=True, series_number=options.series_number,
            series_description=options.series_description).name
    if options.rtstruct:
        from medseg.io.rtstruct import write_rtstruct

        written["rtstruct"] = write_rtstruct(
            label, case.series.files, names, out / f"{case.id}.rt.dcm", algorithm_version=predictor.model_id,
            overwrite=True, series_number=options.series_number + 1,
            series_description=f"{options.series_description} RTSTRUCT"[:64]).name
    return written


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
