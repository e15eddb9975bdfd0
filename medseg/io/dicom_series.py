"""Find DICOM image series in a folder as PACS exports them, and decide which can be read as volumes.

Header-only: nothing here decodes pixel data. A folder is walked recursively in any file order;
non-DICOM files are counted and skipped; files are grouped by SeriesInstanceUID and a UID that mixes
orientations, image sizes, pixel spacings or echoes is split; slices are sorted by their position
along the slice normal (never by file name or InstanceNumber); every reason a series cannot be a
volume is recorded in :attr:`DicomSeries.problems` as a one-line text.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.io.geometry import lps_to_ras

log = logging.getLogger("medseg")

# Slice steps may deviate from the median step by this much before a series is refused:
# 2% of the step (at least 0.01 mm) tolerates rounded positions, yet catches any missing slice.
SPACING_REL_TOL = 0.02
SPACING_ABS_TOL_MM = 0.01
# Slices may drift sideways (gantry tilt) by at most this fraction of the in-plane pixel size.
TILT_TOL_PIXELS = 0.1
MIN_SLICES = 3
# Files with these endings are never opened as DICOM (a forced parse of a large .nii.gz is slow).
_NOT_DICOM = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".json", ".yaml", ".yml", ".txt", ".csv",
              ".md", ".png", ".jpg", ".jpeg", ".pdf", ".xml", ".zip", ".gz", ".npz", ".npy", ".pt", ".html")

_HEADER_TAGS = [
    "SOPClassUID", "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
    "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns",
    "BitsAllocated", "SamplesPerPixel", "NumberOfFrames", "EchoNumbers",
    "PixelRepresentation", "PhotometricInterpretation", "PixelData",
]


@dataclass
class SliceHeader:
    """What one file says about its slice (header only)."""

    path: Path
    position: np.ndarray  # ImagePositionPatient, LPS mm
    truncated: bool = False


@dataclass
class DicomSeries:
    """One candidate volume: a group of slices sharing series, orientation and size.

    Attributes:
        index: 1-based order of discovery within the scan (stable for a folder's content).
        files: Slice files sorted along the slice normal (head first for axial LPS).
        problems: Why the series cannot be read as a volume; empty when it can.
    """

    index: int
    uid: str
    modality: str
    description: str
    series_number: int | None
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    orientation: np.ndarray  # 6 direction cosines (row, column), LPS
    slices: list[SliceHeader]
    split_part: str = ""
    problems: list[str] = field(default_factory=list)
    slice_step: float = 0.0

    @property
    def files(self) -> list[Path]:
        return [s.path for s in self.slices]

    @property
    def readable(self) -> bool:
        return not self.problems

    @property
    def name(self) -> str:
        """Human label without identifiers: series number, description, modality, slice count."""
        number = f"series {self.series_number}" if self.series_number is not None else f"series #{self.index}"
        desc = f" '{self.description}'" if self.description else ""
        return f"{number}{self.split_part}{desc} ({self.modality or '?'}, {len(self.slices)} slices)"

    @property
    def shape(self) -> tuple[int, int, int]:
        """Volume shape (X = columns, Y = rows, Z = slices)."""
        return (self.columns, self.rows, len(self.slices))

    @property
    def spacing(self) -> tuple[float, float, float]:
        return (self.pixel_spacing[1], self.pixel_spacing[0], self.slice_step)

    @property
    def affine(self) -> np.ndarray:
        """RAS affine of the sorted volume (array index order column, row, slice)."""
        row_dir, col_dir = self.orientation[:3], self.orientation[3:]
        normal = np.cross(row_dir, col_dir)
        lps = np.eye(4)
        lps[:3, 0] = row_dir * self.pixel_spacing[1]
        lps[:3, 1] = col_dir * self.pixel_spacing[0]
        lps[:3, 2] = normal * (self.slice_step if len(self.slices) > 1 else 1.0)
        lps[:3, 3] = self.slices[0].position
        return lps_to_ras(lps)


@dataclass
class FolderScan:
    """Everything found under a folder."""

    root: Path
    series: list[DicomSeries]
    non_dicom: list[Path]
    skipped: list[tuple[Path, str]]  # DICOM files that are not image slices, with the reason


def scan_folder(root: str | Path) -> FolderScan:
    """Walk ``root`` recursively and group its DICOM image files into validated series."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(root)
    groups: dict[tuple, list[tuple[SliceHeader, object]]] = {}
    non_dicom: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in sorted(_walk(root)):
        ds = None if path.name.lower().endswith(_NOT_DICOM) else _read_header(path)
        if ds is None:
            non_dicom.append(path)
            continue
        try:
            reason = _not_a_slice(ds)
            if not reason:
                groups.setdefault(_group_key(ds), []).append((_slice_header(path, ds), ds))
        except Exception as exc:  # malformed values (non-numeric positions, broken sequences...)
            reason = f"malformed header ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
        if reason:
            skipped.append((path, reason))
    if non_dicom:
        log.info("%s: ignored %d non-DICOM file(s)", root, len(non_dicom))
    series = _build_series(groups)
    return FolderScan(root=root, series=series, non_dicom=non_dicom, skipped=skipped)


def _walk(root: Path):
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith(".") and name.upper() != "DICOMDIR":
                yield Path(folder) / name


def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, defer_size=1024, specific_tags=_HEADER_TAGS)
    except InvalidDicomError:
        pass
    except Exception:  # damaged beyond reading: treated as not DICOM
        return None
    try:  # old exports without the 128-byte preamble: accept only if it looks like an image slice
        ds = pydicom.dcmread(path, defer_size=1024, force=True, specific_tags=_HEADER_TAGS)
        return ds if "ImagePositionPatient" in ds and "Rows" in ds else None
    except Exception:
        return None


def _not_a_slice(ds) -> str:
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return "multi-frame object (enhanced multi-frame images and SEG are not read as series yet)"
    missing = [t for t in ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns") if t not in ds]
    if missing:
        kind = getattr(ds.get("SOPClassUID"), "name", "") or ds.get("Modality", "") or "object"
        return f"not an image slice ({kind}; no {', '.join(missing)})"
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return "colour image (SamplesPerPixel > 1)"
    if len(ds.ImageOrientationPatient) != 6 or len(ds.ImagePositionPatient) != 3:
        return "malformed ImageOrientationPatient/ImagePositionPatient"
    return ""


def _group_key(ds) -> tuple:
    iop = tuple(np.round(np.asarray(ds.ImageOrientationPatient, float), 4))
    spacing = tuple(np.round(np.asarray(ds.get("PixelSpacing", [1, 1]), float), 4))
    echo = str(ds.get("EchoNumbers", ""))
    return (str(ds.get("SeriesInstanceUID", "")), iop, int(ds.Rows), int(ds.Columns), spacing, echo)


def _slice_header(path: Path, ds) -> SliceHeader:
    # PixelData is deferred (not read): its declared length and file offset tell whether the file
    # was cut short, without decoding. Compressed data is checked when it is decoded.
    raw = ds.get_item(0x7FE00010)
    if raw is None or raw.value is None and not hasattr(raw, "value_tell"):
        truncated = True
    elif hasattr(raw, "value_tell"):  # deferred raw element
        truncated = raw.length != 0xFFFFFFFF and raw.value_tell + raw.length > path.stat().st_size
    else:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        need = int(ds.Rows) * int(ds.Columns) * int(ds.get("BitsAllocated", 16)) // 8
        truncated = not getattr(syntax, "is_compressed", False) and len(raw.value) < need
    return SliceHeader(path=path, position=np.asarray(ds.ImagePositionPatient, float), truncated=truncated)


def _build_series(groups: dict[tuple, list]) -> list[DicomSeries]:
    by_uid: dict[str, int] = {}
    for key in groups:
        by_uid[key[0]] = by_uid.get(key[0], 0) + 1
    seen: dict[str, int] = {}
    result = []
    for index, (key, members) in enumerate(groups.items(), start=1):
        uid = key[0]
        part = ""
        if by_uid[uid] > 1:
            seen[uid] = seen.get(uid, 0) + 1
            part = f".{seen[uid]}"
        ds = members[0][1]
        number = ds.get("SeriesNumber")
        series = DicomSeries(
            index=index, uid=uid, modality=str(ds.get("Modality", "")),
            description=" ".join(str(ds.get("SeriesDescription", "")).split()),
            series_number=int(number) if number not in (None, "") else None,
            rows=key[2], columns=key[3],
            pixel_spacing=tuple(float(v) for v in ds.get("PixelSpacing", [1.0, 1.0])),  # type: ignore
            orientation=_orthonormal_iop(np.asarray(ds.ImageOrientationPatient, float)),
            slices=[m[0] for m in members], split_part=part,
        )
        if "PixelSpacing" not in ds:
            series.problems.append("no PixelSpacing: the voxel size is unknown")
        _sort_and_validate(series)
        result.append(series)
    return result


def _orthonormal_iop(iop: np.ndarray) -> np.ndarray:
    row, col = iop[:3], iop[3:]
    row = row / np.linalg.norm(row)
    col = col - row * float(row @ col)
    return np.concatenate([row, col / np.linalg.norm(col)])


def _sort_and_validate(series: DicomSeries) -> None:
    problems = series.problems
    if not np.isfinite(series.orientation).all() or series.pixel_spacing[0] <= 0 or series.pixel_spacing[1] <= 0:
        problems.append("invalid ImageOrientationPatient or PixelSpacing")
        return
    normal = np.cross(series.orientation[:3], series.orientation[3:])
    series.slices.sort(key=lambda s: float(s.position @ normal))
    n = len(series.slices)
    truncated = [s.path.name for s in series.slices if s.truncated]
    if truncated:
        problems.append(f"truncated or missing pixel data in {len(truncated)} file(s), e.g. {truncated[0]}")
    if n < MIN_SLICES:
        problems.append(f"only {n} slice(s); a volume needs at least {MIN_SLICES}")
        return
    positions = np.stack([s.position for s in series.slices])
    along = positions @ normal
    steps = np.diff(along)
    duplicates = int((np.abs(steps) < 1e-4).sum())
    if duplicates:
        problems.append(f"{duplicates} slice(s) share a position with another (several acquisitions, "
                        "echoes or time points in one series?)")
        return
    step = float(np.median(steps))
    series.slice_step = step
    _check_spacing(series, along, steps, step)
    _check_tilt(series, positions, normal)


def _check_spacing(series: DicomSeries, along: np.ndarray, steps: np.ndarray, step: float) -> None:
    deviation = np.abs(steps - step)
    worst = int(deviation.argmax())
    if deviation[worst] <= max(SPACING_ABS_TOL_MM, SPACING_REL_TOL * step):
        return
    gap = float(steps[worst])
    ratio = gap / step
    where = f"between slice positions {along[worst]:.2f} and {along[worst + 1]:.2f} mm"
    if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
        missing = int(round(ratio)) - 1
        series.problems.append(f"missing slice(s): gap of {gap:.3f} mm {where}, expected {step:.3f} mm "
                               f"(about {missing} slice(s) missing)")
    else:
        series.problems.append(f"non-uniform slice spacing: largest deviation {deviation[worst]:.3f} mm from "
                               f"the median step {step:.3f} mm, {where}")


def _check_tilt(series: DicomSeries, positions: np.ndarray, normal: np.ndarray) -> None:
    offsets = positions - positions[0]
    sideways = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.linalg.norm(sideways, axis=1).max())
    if drift > TILT_TOL_PIXELS * min(series.pixel_spacing):
        extent = float(np.abs(offsets @ normal).max()) or 1.0
        angle = float(np.degrees(np.arctan2(drift, extent)))
        series.problems.append(f"gantry tilt of about {angle:.1f} degrees (slices drift {drift:.2f} mm "
                               "sideways); tilted series are not supported")
