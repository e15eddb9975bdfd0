"""What `medseg infer` segments: files, folders of files, DICOM folders (any number of studies), manifests."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from medseg.io.paths import image_stem, image_suffix


@dataclass
class InputCase:
    """One thing to segment. ``id`` names its outputs; it never contains DICOM tag text."""

    id: str
    images: list[Path] = field(default_factory=list)  # image files (one per channel)
    series: object | None = None  # a DicomSeries, for DICOM inputs
    description: str = ""  # for the log only (series number and description, sanitised)


@dataclass
class SeriesFilter:
    """Which DICOM series to segment (all readable volumetric series by default)."""

    modality: str | None = None
    description: str | None = None  # regular expression, case-insensitive
    min_slices: int = 3

    def why_not(self, series) -> str:
        """Empty when the series is selected, else the reason it is skipped."""
        if series.problems:
            return "; ".join(series.problems)
        if self.modality and series.modality.upper() != self.modality.upper():
            return f"modality {series.modality or '?'} (selected: {self.modality})"
        if self.description and not re.search(self.description, series.description, re.IGNORECASE):
            return f"description does not match '{self.description}'"
        if series.depth < self.min_slices:
            return f"{series.depth} slices (minimum {self.min_slices})"
        return ""


def discover(path: str | Path, series_filter: SeriesFilter | None = None) -> tuple[list[InputCase], list[str]]:
    """Cases under ``path`` and lines describing what was skipped and why.

    ``path`` may be an image file, a manifest/dataset, or a folder holding image files and/or DICOM
    files (searched recursively, many series and studies allowed).
    """
    path = Path(path)
    series_filter = series_filter or SeriesFilter()
    if path.is_file() and image_suffix(path):
        return [InputCase(id=image_stem(path), images=[path], description=path.name)], []
    if path.is_file() or (path / "dataset.json").exists() or any((path / n).exists() for n in ("medseg.yaml",
                                                                                             "manifest.yaml")):
        return _from_dataset(path), []
    if not path.is_dir():
        from medseg.errors import MedsegError

        raise MedsegError("input not found (expected an image, a folder or a manifest)", path)
    cases = [InputCase(id=image_stem(p), images=[p], description=p.name)
             for p in sorted(path.iterdir()) if p.is_file() and image_suffix(p)]
    skipped: list[str] = []
    dicom_cases, dicom_skipped = _from_dicom(path, series_filter)
    return cases + dicom_cases, skipped + dicom_skipped


def _from_dataset(path: Path) -> list[InputCase]:
    from medseg.data import load_dataset

    dataset = load_dataset(path)
    return [InputCase(id=c.id, images=list(c.images), description=c.id) for c in dataset.cases]


def _from_dicom(path: Path, series_filter: SeriesFilter) -> tuple[list[InputCase], list[str]]:
    from medseg.io.dicom import scan_dicom
    from medseg.io.naming import safe_token, series_id

    scan = scan_dicom(path)
    cases, skipped = [], []
    for series in scan.series:
        reason = series_filter.why_not(series)
        if reason:
            skipped.append(f"skipped {series.name}: {reason}")
            continue
        number = series.series_number if series.series_number is not None else f"#{series.index}"
        label = f"series {number} {safe_token(series.description)}".strip()
        cases.append(InputCase(id=series_id(series), series=series, description=label))
    reasons: dict[str, int] = {}
    for _, reason in scan.skipped:
        reasons[reason] = reasons.get(reason, 0) + 1
    skipped += [f"skipped {n} DICOM file(s): {r}" for r, n in reasons.items()]
    return cases, skipped
