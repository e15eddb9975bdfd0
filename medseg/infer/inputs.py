"""What `medseg infer` segments: files, folders of files, DICOM folders (any number of studies), datasets.

In a folder, image files named like nnU-Net's channel files, ``<id>_<4 digits><suffix>``
(``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``...), are the channels of one case ``CASE``, in channel order, so
its outputs are ``CASE.nii.gz``. Every such id must have the complete run ``_0000`` .. ``_000K`` and every id
the same number of channels; a gap or a different count is an error naming the case. Files not named so are
one single-channel case each. A folder with no ``_0000`` file is not an nnU-Net folder: its numbered files
(``scan_0001.nii.gz``...) are single-channel cases too.

A dataset (manifest, MSD or nnU-Net folder, datalist) contributes its test cases (``split: test``: nnU-Net
``imagesTs``, a datalist's ``testing``) when it has any, else every case.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medseg.data import load_dataset
from medseg.data.dataset import channel_tag, is_dataset_folder
from medseg.errors import MedsegError
from medseg.io.dicom import scan_dicom
from medseg.io.naming import safe_token, series_id
from medseg.io.paths import image_stem, image_suffix


@dataclass
class InputCase:
    """One thing to segment. ``id`` names its outputs; it never contains DICOM tag text."""

    id: str
    images: list[Path] = field(default_factory=list)  # image files (one per channel)
    series: object | None = None  # a DicomSeries, for DICOM inputs
    description: str = ""  # for the log only (series number and description, sanitised)
    refused: str = ""  # why the input cannot be segmented (a DICOM series refused by the reading checks)


@dataclass
class SeriesFilter:
    """Which DICOM series to segment (all readable volumetric series by default)."""

    modality: str | None = None
    description: str | None = None  # regular expression, case-insensitive
    min_slices: int = 3

    def why_not(self, series) -> str:
        """Empty when the series is selected, else the reason it is not (a refused series is selected: it is
        reported as refused, not silently left out)."""
        if self.modality and series.modality.upper() != self.modality.upper():
            return f"modality {series.modality or '?'} (selected: {self.modality})"
        if self.description and not re.search(self.description, series.description, re.IGNORECASE):
            return f"description does not match '{self.description}'"
        if series.depth < self.min_slices:
            return f"{series.depth} slices (minimum {self.min_slices})"
        return ""


def discover(path: str | Path, series_filter: SeriesFilter | None = None) -> tuple[list[InputCase], list[str]]:
    """Cases under ``path`` and lines describing what was skipped and why.

    ``path`` may be an image file, a manifest/dataset, or a folder holding image files (nnU-Net channel
    files grouped, see the module docstring) and/or DICOM files (searched recursively, many series and
    studies allowed).

    Raises:
        MedsegError: when ``path`` is missing, channel files do not add up, or two cases share an id.
    """
    path = Path(path)
    series_filter = series_filter or SeriesFilter()
    if path.is_file() and image_suffix(path):
        return [InputCase(id=image_stem(path), images=[path], description=path.name)], []
    if path.is_file() or is_dataset_folder(path):
        return _refuse_shared_ids(_from_dataset(path), path), []
    if not path.is_dir():
        raise MedsegError("input not found (expected an image, a folder or a manifest)", path)
    file_cases = image_file_cases(path)
    dicom_cases, skipped = _from_dicom(path, series_filter)
    return _refuse_shared_ids(file_cases + dicom_cases, path), skipped


def image_file_cases(folder: Path) -> list[InputCase]:
    """The image files directly in ``folder`` as cases, nnU-Net channel files grouped (module docstring).

    Raises:
        MedsegError: naming the case, when its channel files have a gap, repeat a channel or number fewer
            or more than the other cases'.
    """
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and image_suffix(p)]
    tags = {p: channel_tag(p) for p in files}
    if not any(tag and tag[1] == 0 for tag in tags.values()):
        tags = dict.fromkeys(files)
    singles, groups = [], {}
    for file, tag in tags.items():
        if tag is None:
            singles.append(InputCase(id=image_stem(file), images=[file], description=file.name))
            continue
        case_id, channel = tag
        channels = groups.setdefault(case_id, {})
        if channel in channels:
            raise MedsegError(f"case '{case_id}' has two files for channel _{channel:04d} ({channels[channel].name}, "
                              f"{file.name})", folder)
        channels[channel] = file
    return sorted(singles + _channel_cases(groups, folder), key=lambda c: c.id)


def _channel_cases(groups: dict[str, dict[int, Path]], folder: Path) -> list[InputCase]:
    """One case per id from its channel files (``{channel: file}``), after checking every run is complete."""
    for case_id, files in sorted(groups.items()):
        if missing := sorted(set(range(max(files) + 1)) - set(files)):
            raise MedsegError(f"case '{case_id}' lacks channel file(s) {_tags(missing)} (found {_tags(files)}); "
                              "nnU-Net channel files run _0000, _0001, ... without gaps", folder)
    counts = Counter(len(files) for files in groups.values())
    if len(counts) > 1:
        usual = counts.most_common(1)[0][0]
        odd = next(case_id for case_id, files in sorted(groups.items()) if len(files) != usual)
        example = next(case_id for case_id, files in sorted(groups.items()) if len(files) == usual)
        raise MedsegError(f"case '{odd}' has {len(groups[odd])} channel file(s) but {counts[usual]} case(s) have "
                          f"{usual} (e.g. '{example}'); every case needs the same channels", folder)
    cases = []
    for case_id, files in groups.items():
        images = [files[c] for c in sorted(files)]
        shown = images[0].name if len(images) == 1 else f"{images[0].name} .. {images[-1].name}"
        cases.append(InputCase(id=case_id, images=images, description=shown))
    return cases


def _tags(channels) -> str:
    return ", ".join(f"_{c:04d}" for c in sorted(channels))


def _refuse_shared_ids(cases: list[InputCase], where: Path) -> list[InputCase]:
    """``cases`` when their ids (and so their output names) differ.

    Raises:
        MedsegError: naming both inputs of an id that two cases share.
    """
    seen: dict[str, InputCase] = {}
    for case in cases:
        if case.id in seen:
            raise MedsegError(f"two inputs would both be written as {case.id}.nii.gz ({seen[case.id].description}; "
                              f"{case.description}); rename one", where)
        seen[case.id] = case
    return cases


def _from_dataset(path: Path) -> list[InputCase]:
    """The dataset's test cases when it has any, else every case."""
    dataset = load_dataset(path)
    cases = [c for c in dataset.cases if c.split == "test"] or dataset.cases
    return [InputCase(id=c.id, images=list(c.images), description=c.id) for c in cases]


def _from_dicom(path: Path, series_filter: SeriesFilter) -> tuple[list[InputCase], list[str]]:
    scan = scan_dicom(path)
    cases, skipped = [], []
    for series in scan.series:
        reason = series_filter.why_not(series)
        if reason:
            skipped.append(f"skipped {series.name}: {reason}")
            continue
        number = series.series_number if series.series_number is not None else f"#{series.index}"
        label = f"series {number}{series.split_part} {safe_token(series.description)}".strip()
        cases.append(InputCase(id=series_id(series), series=series, description=label,
                               refused="; ".join(series.problems)))
    reasons: dict[str, int] = {}
    for _, reason in scan.skipped:
        reasons[reason] = reasons.get(reason, 0) + 1
    skipped += [f"skipped {n} DICOM file(s): {r}" for r, n in reasons.items()]
    return cases, skipped
