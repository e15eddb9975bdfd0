"""The files one case of `medseg infer` writes, each by a writer, and the case JSON that lists them.

A writer (:class:`Writer`) has a ``name`` (its key in the case JSON's ``outputs`` and in ``summary.json``),
a ``title`` for messages, a rule for the cases it applies to (:meth:`Writer.applies`: asked for, and for this
kind of input), the reason an input cannot have it although it applies (:meth:`Writer.why_not`: a DICOM SEG
of an enhanced multi-frame series; the case then carries a warning that says so) and :meth:`Writer.write`.
:data:`WRITERS` lists them in writing order. Writing a case (`segment_case`), the skip rule (`redo_reason`)
and the DICOM node all go through that list, so a new output is one more writer there, plus its test.

The case JSON (``<id>.json``) is not a writer: it names the writers' files and is written after them, as
the mark that the case is done.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.infer.inputs import InputCase
from medseg.infer.options import InferOptions
from medseg.io.atomic import write_text_atomic
from medseg.io.rtstruct import write_rtstruct
from medseg.io.seg import write_dicom_seg
from medseg.io.volume_io import write_volume
from medseg.model.inference import Prediction
from medseg.types import Volume


@dataclass(frozen=True)
class Segmented:
    """One segmented case, as the writers get it."""

    case: InputCase
    volume: Volume  # the input, as read
    prediction: Prediction  # its label map (and probabilities, when asked for) on the input's grid
    model_id: str
    labels: dict[int, str]  # label value -> name, background included
    out: Path  # the output folder
    options: InferOptions

    def path(self, suffix: str) -> Path:
        """``<output folder>/<case id><suffix>``."""
        return self.out / f"{self.case.id}{suffix}"

    @property
    def foreground(self) -> dict[int, str]:
        """Label value -> name, without the background."""
        return {value: name for value, name in self.labels.items() if value != 0}


class Writer:
    """One output file of a case. A subclass sets ``name`` and ``title`` and implements :meth:`write`."""

    name = ""  # key in the case JSON's ``outputs``: never renamed, earlier results are read by it
    title = ""  # in messages
    dicom = False  # a DICOM object referencing the input series, which the DICOM node sends back

    def applies(self, case: InputCase, options: InferOptions) -> bool:
        """Whether this case is to have the output: asked for, and for this kind of input."""
        return True

    def why_not(self, case: InputCase) -> str:
        """Why this case's input cannot have the output although it applies; empty when it can."""
        return ""

    def write(self, result: Segmented) -> Path:
        """Write the output (atomically, replacing an earlier one) and return its path."""
        raise NotImplementedError


class LabelMap(Writer):
    """``<id>.nii.gz``: the uint8 label map on the input's exact grid, for every case."""

    name, title = "label", "label map"

    def write(self, result: Segmented) -> Path:
        return write_volume(result.prediction.label, result.path(".nii.gz"), overwrite=True, label=True)


class Probabilities(Writer):
    """``<id>_probabilities.nii.gz``: one channel per class, when asked for."""

    name, title = "probabilities", "probability map"

    def applies(self, case: InputCase, options: InferOptions) -> bool:
        return options.probabilities

    def write(self, result: Segmented) -> Path:
        probabilities = result.volume.with_array(result.prediction.probabilities.astype(np.float32))
        return write_volume(probabilities, result.path("_probabilities.nii.gz"), overwrite=True, label=False)


class DicomWriter(Writer):
    """An output referencing the input's DICOM slices: for DICOM series only."""

    dicom = True

    def why_not(self, case: InputCase) -> str:
        if case.series is not None and case.series.frames:
            return "enhanced multi-frame sources are not supported yet"
        return ""


class DicomSeg(DicomWriter):
    """``<id>.seg.dcm``: a binary DICOM SEG with one coded segment per model label (unless ``--no-dicom-seg``)."""

    name, title = "dicom_seg", "DICOM SEG"

    def applies(self, case: InputCase, options: InferOptions) -> bool:
        return options.dicom_seg and case.series is not None

    def write(self, result: Segmented) -> Path:
        options = result.options
        return write_dicom_seg(result.prediction.label, result.case.series.files, result.foreground,
                               result.path(".seg.dcm"), algorithm_version=result.model_id, overwrite=True,
                               series_number=options.series_number, series_description=options.series_description)


class RtStruct(DicomWriter):
    """``<id>.rt.dcm``: an RTSTRUCT with one ROI per model label, the series number after the SEG's
    (``--rtstruct``)."""

    name, title = "rtstruct", "RTSTRUCT"

    def applies(self, case: InputCase, options: InferOptions) -> bool:
        return options.rtstruct and case.series is not None

    def write(self, result: Segmented) -> Path:
        options = result.options
        return write_rtstruct(result.prediction.label, result.case.series.files, result.foreground,
                              result.path(".rt.dcm"), algorithm_version=result.model_id, overwrite=True,
                              series_number=options.series_number + 1,
                              series_description=f"{options.series_description} RTSTRUCT"[:64])


WRITERS: tuple[Writer, ...] = (LabelMap(), Probabilities(), DicomSeg(), RtStruct())


def writers_for(case: InputCase, options: InferOptions) -> list[Writer]:
    """The writers whose output this case is to have and can have, in writing order."""
    return [writer for writer in WRITERS if writer.applies(case, options) and not writer.why_not(case)]


def expected_outputs(case: InputCase, options: InferOptions) -> list[str]:
    """Names of the outputs this case is to have and can have, in writing order."""
    return [writer.name for writer in writers_for(case, options)]


def cannot_write(case: InputCase, options: InferOptions) -> list[str]:
    """One line per output that applies to this case but that its input cannot have, with the reason."""
    return [f"no {writer.title} written: {why}" for writer in WRITERS
            if writer.applies(case, options) and (why := writer.why_not(case))]


def write_outputs(result: Segmented) -> dict[str, str]:
    """Write every output of :func:`writers_for`; their file names (relative to the output folder) by name."""
    return {writer.name: writer.write(result).name for writer in writers_for(result.case, result.options)}


def output_path(out: str | Path, name: str) -> Path:
    """Where an output named in a case JSON lies: names are relative to the output folder (older JSONs
    held absolute paths, which this also accepts)."""
    return Path(out) / name


def write_case_json(out: Path, record: dict) -> Path:
    """Write ``<id>.json`` (atomically): the case is done once it is there."""
    path = out / f"{record['id']}.json"
    write_text_atomic(path, json.dumps(record, indent=1))
    return path


def read_case_json(path: Path) -> dict | None:
    """The case JSON of an earlier run; ``{}`` when unreadable (so the case is redone), None when absent."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
