"""A folder of DICOM exports (images + RTSTRUCT or DICOM SEG) as a labelled dataset.

:func:`scan_export` pairs each label object with the image series it references by SeriesInstanceUID
(never by folder names), at any depth and in any file order. A label object whose series is absent or
refused, or a series that two different label objects label, is left out with a one-line reason.
:func:`import_export` rasterises each case's structures through a :class:`LabelMapping` and writes an
nnU-Net v2 raw dataset (``imagesTr/<id>_0000.nii.gz``, ``labelsTr/<id>.nii.gz``, ``dataset.json``,
``annotated_labels.json``) that every other part of medseg reads like any dataset; a case already imported
from the same files with the same mapping is kept, so a DICOM export is decoded once per run.

Case ids are the series' non-identifying ids (``s<series number>_<8 hex of the UID's hash>``), the names
``medseg infer`` gives its outputs for the same series, so predictions pair with these truths.

Honest labels: a label whose ROI is missing, has no contours, or cannot be rasterised is *not contoured*
in that case (``annotated_labels.json``), never background. Where ROIs of two labels overlap, the earlier
label of the mapping wins and the overlap (mm^3) is reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.data.roi_names import LabelMapping
from medseg.errors import MedsegError, one_line
from medseg.io.atomic import make_output_dir, write_text_atomic
from medseg.io.dicom import read_series
from medseg.io.dicom_series import DicomSeries, scan_folder
from medseg.io.label_objects import LabelObject, read_label_object, structure_masks
from medseg.io.naming import series_digest, series_id
from medseg.io.volume_io import write_volume
from medseg.types import Volume

log = logging.getLogger(__name__)

RECORDS = "import_records"
# Words in the series reader's reason for skipping a file that mark an RTSTRUCT or SEG (by modality or SOP class).
_LABEL_OBJECT_WORDS = ("structure set", "seg object", "segmentation")


@dataclass(frozen=True)
class ExportCase:
    """One labelled image series: the series and the label object that references it."""

    id: str
    series: DicomSeries
    label: LabelObject


@dataclass
class ExportScan:
    """What a folder of DICOM exports holds. ``left_out``: one line (path: reason) per refused object."""

    root: Path
    cases: list[ExportCase]
    left_out: list[str] = field(default_factory=list)
    unlabelled: int = 0  # readable image series no label object references

    def roi_names(self) -> list[str]:
        return [s.name for c in self.cases for s in c.label.structures]


def scan_export(root: str | Path) -> ExportScan:
    """Find image series and label objects under ``root`` and pair them by UID.

    Raises:
        MedsegError: when the folder holds no RTSTRUCT or SEG at all.
    """
    root = Path(root)
    scan = scan_folder(root)
    objects, left_out = [], []
    for path, reason in scan.skipped:
        if not any(word in reason.lower() for word in _LABEL_OBJECT_WORDS):
            continue
        try:
            objects.append(read_label_object(path))
        except MedsegError as exc:
            left_out.append(str(exc))
    if not objects and not left_out:
        raise MedsegError("no RTSTRUCT or DICOM SEG found: not a labelled DICOM export (and no dataset.json "
                          "or manifest)", root)
    by_uid = {s.uid: s for s in scan.series if not s.split_part}
    labelled: dict[str, list[LabelObject]] = {}
    for obj in _unique(objects):
        found = [by_uid[u] for u in obj.series_uids if u in by_uid]
        if len(found) != 1:
            left_out.append(f"{obj.path}: {obj.kind} references " + (
                f"{len(found)} series of the export; expected one" if found else
                "an image series that is not in the export (or was split into parts)"))
        elif found[0].problems:
            left_out.append(f"{obj.path}: its image series is refused ({found[0].problems[0]})")
        else:
            labelled.setdefault(found[0].uid, []).append(obj)
    cases = []
    for uid, objs in labelled.items():
        if len(objs) > 1:
            names = ", ".join(o.path.name for o in objs)
            left_out.append(f"{objs[0].path.parent}: one image series is labelled by {len(objs)} different "
                            f"label objects ({names}); keep one")
            continue
        cases.append(ExportCase(series_id(by_uid[uid]), by_uid[uid], objs[0]))
    unlabelled = sum(1 for s in scan.series if s.readable and s.uid not in labelled)
    return ExportScan(root, sorted(cases, key=lambda c: c.id), left_out, unlabelled)


def _unique(objects: list[LabelObject]) -> list[LabelObject]:
    """One of each SOP instance (an export may hold the same file twice)."""
    return list({(o.sop_uid or str(o.path)): o for o in objects}.values())


@dataclass
class CaseLabels:
    """A case's label map and what went into it.

    ``used``: label value -> name of the ROI it came from; ``notes``: one line per ROI not used or refused
    and per overlap; ``overlaps_mm3``: (earlier label, later label) -> overlapping volume.
    """

    label: Volume
    used: dict[int, str]
    notes: list[str]
    overlaps_mm3: dict[tuple[int, int], float]


def case_labels(case: ExportCase, image: Volume, mapping: LabelMapping) -> CaseLabels:
    """Rasterise ``case``'s mapped structures onto ``image``'s grid and combine them by priority."""
    chosen, notes = _choose(case.label, mapping)
    masks, problems = structure_masks(case.label, case.series, [s.number for s in chosen.values()])
    array = np.zeros(image.spatial_shape, dtype=np.uint8)
    voxel = float(np.prod(image.spacing))
    used, overlaps = {}, {}
    for value in sorted(chosen):
        roi = chosen[value]
        if roi.number in problems:
            notes.append(f"ROI {roi.name!r} refused ({problems[roi.number]}): "
                         f"{mapping.labels[value]} not contoured")
            continue
        mask = masks[roi.number]
        if not mask.any():
            notes.append(f"ROI {roi.name!r} encloses no voxel: {mapping.labels[value]} not contoured")
            continue
        for earlier in np.unique(array[mask]):
            if earlier:
                overlaps[(int(earlier), value)] = float((array[mask] == earlier).sum()) * voxel
        array[mask & (array == 0)] = value
        used[value] = roi.name
    notes += [f"{mapping.labels[a]} and {mapping.labels[b]} overlap by {mm3:.0f} mm^3 ({mapping.labels[a]} kept)"
              for (a, b), mm3 in overlaps.items()]
    return CaseLabels(Volume(array, image.affine.copy()), used, notes, overlaps)


def _choose(obj: LabelObject, mapping: LabelMapping) -> tuple[dict, list[str]]:
    """Per label, the drawn structure with the best-ranked name; the others noted, ties refused."""
    candidates: dict[int, list] = {}
    for s in obj.structures:
        value = mapping.label_of(s.name)
        if value is not None and s.drawn:
            candidates.setdefault(value, []).append((mapping.rank(value, s.name), s))
    chosen, notes = {}, []
    for value, ranked in candidates.items():
        ranked.sort(key=lambda item: item[0])
        if len(ranked) > 1 and ranked[0][0] == ranked[1][0]:
            names = ", ".join(repr(s.name) for _, s in ranked)
            notes.append(f"ROIs {names} all name {mapping.labels[value]}: not contoured (ambiguous)")
            continue
        chosen[value] = ranked[0][1]
        notes += [f"ROI {s.name!r} not used ({mapping.labels[value]} taken from {ranked[0][1].name!r})"
                  for _, s in ranked[1:]]
    return chosen, notes


def import_export(scan: ExportScan, mapping: LabelMapping, out_dir: str | Path, overwrite: bool = False) -> dict:
    """Write ``scan``'s cases as an nnU-Net v2 raw dataset in ``out_dir`` (module docstring).

    A case whose image and label already exist is kept when its record shows the same series, label object
    and mapping; otherwise refused unless ``overwrite``. One case failing never stops the others.

    Returns:
        ``{"cases": {id: {"annotated": [...], "notes": [...]}}, "left_out": [lines]}`` (also the records).
    """
    out = make_output_dir(out_dir)
    for sub in ("imagesTr", "labelsTr", RECORDS):
        (out / sub).mkdir(exist_ok=True)
    digest = _mapping_digest(mapping)
    cases, left_out = {}, list(scan.left_out)
    for k, case in enumerate(scan.cases, start=1):
        try:
            cases[case.id] = _import_case(case, mapping, out, digest, overwrite)
        except MedsegError as exc:
            left_out.append(f"{case.label.path}: {exc.problem}")
        except Exception as exc:  # one broken case must never stop the others
            left_out.append(f"{case.label.path}: unexpected {type(exc).__name__}: {one_line(exc)}")
        if k % 10 == 0 or k == len(scan.cases):
            log.info(f"imported {k} of {len(scan.cases)} labelled series")
    _write_description(out, mapping, scan, cases)
    return {"cases": cases, "left_out": left_out}


def _import_case(case: ExportCase, mapping: LabelMapping, out: Path, digest: str, overwrite: bool) -> dict:
    image_path = out / "imagesTr" / f"{case.id}_0000.nii.gz"
    label_path = out / "labelsTr" / f"{case.id}.nii.gz"
    record_path = out / RECORDS / f"{case.id}.json"
    identity = {"series": series_digest(case.series), "label_object": _sha(case.label.sop_uid or
                                                                            str(case.label.path)),
                "mapping": digest}
    old = _read_record(record_path)
    if old and old.get("identity") == identity and image_path.exists() and label_path.exists():
        return old["case"]
    if (image_path.exists() or label_path.exists()) and not overwrite and old is None:
        raise MedsegError("outputs exist without an import record; use --overwrite or another folder", image_path)
    image = read_series(case.series)
    labels = case_labels(case, image, mapping)
    write_volume(image, image_path, overwrite=True)
    write_volume(labels.label, label_path, overwrite=True, label=True)
    result = {"annotated": sorted(labels.used), "rois": {str(v): n for v, n in labels.used.items()},
              "notes": labels.notes, "modality": case.series.modality}
    write_text_atomic(record_path, json.dumps({"identity": identity, "case": result}, indent=1))
    return result


def _write_description(out: Path, mapping: LabelMapping, scan: ExportScan, cases: dict) -> None:
    modalities = sorted({c["modality"] for c in cases.values()}) or ["CT"]
    description = {"name": "DICOM export", "channel_names": {"0": "/".join(modalities)},
                   "labels": {"background": 0, **{n: v for v, n in mapping.labels.items()}},
                   "numTraining": len(cases), "file_ending": ".nii.gz",
                   "imported_from": "DICOM export (RTSTRUCT/SEG)", "label_mapping": mapping.source}
    write_text_atomic(out / "dataset.json", json.dumps(description, indent=1))
    annotated = {i: c["annotated"] for i, c in sorted(cases.items())}
    write_text_atomic(out / "annotated_labels.json", json.dumps(annotated, indent=1))


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _mapping_digest(mapping: LabelMapping) -> str:
    text = json.dumps({"labels": mapping.labels, "accepts": {v: [repr(a) for a in items]
                                                             for v, items in mapping.accepts.items()}})
    return _sha(text)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
