"""Open any dataset medseg reads, DICOM exports included: the one entry point for check, plan, train, convert
and evaluate.

A folder with no ``dataset.json`` or manifest and no image files at its top is read as a DICOM export
(:mod:`medseg.data.dicom_export`) and imported into ``work_dir`` first; a manifest case whose ``label`` is an
RTSTRUCT or SEG file (``images``: the folder of its image series) is imported the same way, so mixed datasets
work. ROI names map through ``labels`` (a mapping file, :mod:`medseg.data.roi_names`), else the built-in
table (for a manifest: its declared label names, looked up in the table).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path

import yaml

from medseg.data.dataset import Dataset, is_dataset_folder, load_dataset
from medseg.data.dicom_export import ExportCase, ExportScan, import_export, scan_export
from medseg.data.roi_names import LabelMapping, default_mapping, load_mapping, mapping_for
from medseg.errors import MedsegError
from medseg.io.atomic import write_text_atomic
from medseg.io.dicom_files import open_dicom
from medseg.io.dicom_series import scan_folder
from medseg.io.label_objects import read_label_object
from medseg.io.paths import image_suffix

log = logging.getLogger(__name__)

BUILTIN = "tg263"  # --labels value naming the built-in table


def is_dicom_export(path: str | Path) -> bool:
    """A folder that is no dataset folder and holds no image file (NIfTI, NRRD, MHA) at its top."""
    path = Path(path)
    return (path.is_dir() and not is_dataset_folder(path)
            and not any(image_suffix(p) for p in path.iterdir() if p.is_file()))


def open_dataset(path: str | Path, work_dir: str | Path, labels: str | Path | None = None) -> Dataset:
    """The dataset at ``path``; DICOM label objects are imported into ``work_dir`` (module docstring).

    The returned dataset's ``notes`` list what was left out and, for a DICOM export, the ROI table.
    """
    path = Path(path)
    if is_dicom_export(path):
        scan = scan_export(path)
        mapping = _mapping(labels, scan.roi_names())
        log.info(f"DICOM export: {len(scan.cases)} labelled series, {len(scan.left_out)} label object(s) left out, "
                 f"{scan.unlabelled} unlabelled series; ROI names mapped by {mapping.source}")
        result = import_export(scan, mapping, work_dir, overwrite=True)
        dataset = load_dataset(work_dir)
        notes = roi_table(scan, mapping) + [f"left out: {line}" for line in result["left_out"]]
        notes += [f"{i}: {n}" for i, c in result["cases"].items() for n in c["notes"]]
        return replace(dataset, root=path, notes=notes)
    dataset = load_dataset(path)
    dicom_cases = [c for c in dataset.cases if c.label is not None and _is_dicom_file(c.label)]
    if not dicom_cases:
        if labels is not None:
            raise MedsegError("--labels maps ROI names of DICOM label objects; this dataset has none", path)
        return dataset
    return _import_manifest_cases(dataset, dicom_cases, work_dir, labels)


def materialise(path: str | Path, work_dir: str | Path,
                labels: str | Path | None = None) -> tuple[Path, Dataset | None]:
    """A path :func:`load_dataset` reads as the dataset at ``path`` with its DICOM label objects imported.

    Returns ``path`` itself when nothing needed importing, else ``work_dir`` (the nnU-Net raw folder of a
    DICOM export, or a ``medseg.yaml`` manifest there for a manifest with DICOM cases); and the dataset
    (None for a folder of image files that is no dataset, returned as it is).
    """
    path = Path(path)
    if path.is_dir() and not is_dataset_folder(path) and not is_dicom_export(path):
        return path, None  # a folder of label files (medseg evaluate's ground truth), no dataset
    dataset = open_dataset(path, work_dir, labels)
    if is_dicom_export(path):
        return Path(work_dir), dataset
    if not any(c.label is not None and _is_dicom_file(c.label) for c in load_dataset(path).cases):
        return Path(path), dataset
    _write_manifest(dataset, Path(work_dir) / "medseg.yaml")
    return Path(work_dir), dataset


def _write_manifest(dataset: Dataset, target: Path) -> None:

    cases = [{k: v for k, v in {"id": c.id, "images": [str(p.resolve()) for p in c.images],
                                "label": str(c.label.resolve()) if c.label else None, "fold": c.fold,
                                "split": c.split, "annotated": list(c.annotated) if c.annotated is not None
                                else None}.items() if v is not None} for c in dataset.cases]
    text = yaml.safe_dump({"name": dataset.name, "channels": dataset.channels, "labels": dataset.labels,
                           "cases": cases}, sort_keys=False)
    write_text_atomic(target, text)


def _mapping(labels: str | Path | None, names: list[str]) -> LabelMapping:
    if labels is None or str(labels) == BUILTIN:
        return default_mapping(names)
    return load_mapping(labels)


def _is_dicom_file(path: Path) -> bool:
    return path.is_file() and not image_suffix(path) and open_dicom(path, "header") is not None


def _import_manifest_cases(dataset: Dataset, dicom_cases: list, work_dir: str | Path, labels) -> Dataset:
    """Import the cases whose label is an RTSTRUCT or SEG; their label values are the manifest's."""
    mapping = load_mapping(labels) if labels is not None else mapping_for(dataset.labels)
    if labels is not None and mapping.labels != {v: n for v, n in dataset.labels.items() if v}:
        raise MedsegError("the mapping's labels must be the manifest's labels, in the same order", labels)
    export_cases, left_out = [], []
    for case in dicom_cases:
        try:
            obj = read_label_object(case.label)
            found = [s for s in scan_folder(case.images[0]).series if s.uid in obj.series_uids and s.readable]
            if len(found) != 1:
                raise MedsegError(f"{len(found)} readable series of those it references under {case.images[0]}")
            export_cases.append(ExportCase(case.id, found[0], obj))
        except (MedsegError, NotADirectoryError) as exc:
            left_out.append(f"{case.label}: {getattr(exc, 'problem', None) or exc}")
    scan = ExportScan(Path(dataset.root), export_cases, left_out)
    result = import_export(scan, mapping, work_dir, overwrite=True)
    imported, out = result["cases"], Path(work_dir)
    cases = []
    for case in dataset.cases:
        if case in dicom_cases and case.id in imported:
            cases.append(replace(case, images=(out / "imagesTr" / f"{case.id}_0000.nii.gz",),
                                 label=out / "labelsTr" / f"{case.id}.nii.gz",
                                 annotated=tuple(imported[case.id]["annotated"])))
        elif case not in dicom_cases:
            cases.append(case)
    notes = [f"left out: {line}" for line in result["left_out"]]
    return replace(dataset, cases=cases, notes=[*dataset.notes, *notes])


def roi_table(scan: ExportScan, mapping: LabelMapping) -> list[str]:
    """One line per ROI name found: in how many cases (with contours), and the label it maps to."""
    cases: Counter[str] = Counter()
    drawn: Counter[str] = Counter()
    for case in scan.cases:
        for name in {s.name for s in case.label.structures}:
            cases[name] += 1
        for name in {s.name for s in case.label.structures if s.drawn}:
            drawn[name] += 1
    width = max((len(n) for n in cases), default=8)
    lines = [f"{'ROI name':<{width}}  cases  drawn  label"]
    for name in sorted(cases, key=lambda n: (mapping.label_of(n) is None, mapping.label_of(n) or 0, n.lower())):
        value = mapping.label_of(name)
        target = f"{value} {mapping.labels[value]}" if value is not None else "unmapped"
        lines.append(f"{name:<{width}}  {cases[name]:>5}  {drawn[name]:>5}  {target}")
    return lines
