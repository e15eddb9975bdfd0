"""Find DICOM image series in a folder as PACS exports them, and decide which can be read as volumes.

Header-only: nothing here decodes pixel data. A folder is walked recursively in any file order. Every
file whose header names a SeriesInstanceUID is accounted for: it is a slice of a series, or the series
is refused naming the file and why (a series is read whole or refused whole, never with a slice
dropped). A UID holding several orientations (a localizer beside the axial stack) or echoes is split
into parts; orientations are compared within a tolerance, so float noise never splits a series. Slices
are sorted by their position along the slice normal (never by file name or InstanceNumber). Enhanced
multi-frame images (one file per volume) are series of their own, with geometry from highdicom.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import one_line
from medseg.io.dicom_files import NOT_DICOM_SUFFIXES, FileInfo, open_dicom, read_file_info
from medseg.io.geometry import lps_to_ras
from medseg.io.paths import regular_file_problem

# Imported inside functions, measured on import after numpy: highdicom 0.61 s. `import medseg` (so `medseg --help`)
# loads this module; only the calls that need them pay.

log = logging.getLogger(__name__)

# Slice steps may deviate from the median step by this much before a series is refused:
# 2% of the step (at least 0.01 mm) tolerates rounded positions, yet catches any missing slice.
SPACING_REL_TOL = 0.02
SPACING_ABS_TOL_MM = 0.01
# Slices may drift sideways (gantry tilt) by at most this fraction of the in-plane pixel size.
TILT_TOL_PIXELS = 0.1
# Direction cosines closer than this are one orientation (0.06 degrees): exporters' float noise
# (1e-5) stays within, a localizer (90 degrees) or a re-planned stack (> 0.1 degree) does not.
ORIENTATION_TOL = 1e-3
# Pixel spacings of one series may differ by this fraction (rounding in the header text).
PIXEL_SPACING_REL_TOL = 1e-3
MIN_SLICES = 3


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
        index: 1-based order of discovery within the scan (for display only; names never use it).
        files: Slice files sorted along the slice normal (head first for axial LPS); one file for an
            enhanced multi-frame image.
        problems: Why the series cannot be read as a volume; empty when it can.
        notes: Facts worth a warning that do not stop reading (e.g. duplicate copies ignored).
        frames: Number of frames of an enhanced multi-frame image; 0 for a series of slices.
        frame_affine: RAS affine of a multi-frame volume (frames sorted along the slice normal).
        flip_frames: The multi-frame file stores its frames against the slice normal.
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
    notes: list[str] = field(default_factory=list)
    slice_step: float = 0.0
    frames: int = 0
    frame_affine: np.ndarray | None = None
    flip_frames: bool = False
    identity: str = ""  # the SeriesInstanceUID, or the folder of files that have none
    study_uid: str = ""

    @property
    def key(self) -> str:
        """Stable identity of this volume (UID or folder, plus the split part), for names and sidecars."""
        return f"{self.identity or self.uid}{self.split_part}"

    @property
    def files(self) -> list[Path]:
        return [s.path for s in self.slices]

    @property
    def readable(self) -> bool:
        return not self.problems

    @property
    def depth(self) -> int:
        """Number of slices of the volume (frames for a multi-frame image)."""
        return self.frames or len(self.slices)

    @property
    def name(self) -> str:
        """Human label without identifiers: series number, description, modality, slice count."""
        number = f"series {self.series_number}" if self.series_number is not None else f"series #{self.index}"
        desc = f" '{self.description}'" if self.description else ""
        kind = f"{self.frames} frames in one file" if self.frames else f"{len(self.slices)} slices"
        return f"{number}{self.split_part}{desc} ({self.modality or '?'}, {kind})"

    @property
    def shape(self) -> tuple[int, int, int]:
        """Volume shape (X = columns, Y = rows, Z = slices)."""
        return (self.columns, self.rows, self.depth)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return (self.pixel_spacing[1], self.pixel_spacing[0], self.slice_step)

    @property
    def affine(self) -> np.ndarray:
        """RAS affine of the sorted volume (array index order column, row, slice)."""
        if self.frame_affine is not None:
            return self.frame_affine.copy()
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
    skipped: list[tuple[Path, str]]  # files that are not part of any image series, with the reason


def scan_folder(root: str | Path) -> FolderScan:
    """Walk ``root`` recursively and group its DICOM image files into validated series."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(root)
    infos: list[FileInfo] = []
    non_dicom: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in sorted(_walk(root, skipped)):
        info = None if path.name.lower().endswith(NOT_DICOM_SUFFIXES) else read_file_info(path)
        if info is None:
            non_dicom.append(path)
            continue
        if info.kind == "other":
            skipped.append((path, info.reason))
        else:
            infos.append(info)
    if non_dicom:
        log.info("%s: ignored %d non-DICOM file(s)", root, len(non_dicom))
    return FolderScan(root=root, series=_build_series(infos), non_dicom=non_dicom, skipped=skipped)


def _walk(root: Path, skipped: list[tuple[Path, str]]):
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            path = Path(folder) / name
            if problem := regular_file_problem(path):
                skipped.append((path, problem))
            else:
                yield path


def _build_series(infos: list[FileInfo]) -> list[DicomSeries]:
    by_uid: dict[str, list[FileInfo]] = {}
    for info in infos:  # files without a SeriesInstanceUID (some anonymisers drop it) group by folder
        by_uid.setdefault(info.uid or f"folder:{info.path.parent}", []).append(info)
    result: list[DicomSeries] = []
    for identity, members in by_uid.items():
        slices = [m for m in members if m.kind == "slice"]
        parts = [_slice_series(group) for group in _orientation_groups(slices)]
        parts += [_multiframe_series(m) for m in members if m.kind == "multiframe"]
        bad = [m for m in members if m.kind == "bad"]
        if not parts:
            parts = [_refused_series(bad)]
        elif bad:
            text = f"{len(bad)} file(s) of this series cannot be used, e.g. {bad[0].path.name}: {bad[0].reason}"
            for series in parts:
                series.problems.insert(0, text)
        for k, series in enumerate(parts, start=1):
            series.identity = identity
            series.split_part = f".{k}" if len(parts) > 1 else ""
            series.index = len(result) + 1
            result.append(series)
    return result


def _orientation_groups(slices: list[FileInfo]) -> list[list[FileInfo]]:
    """Slices clustered by orientation (within :data:`ORIENTATION_TOL`) and echo number; the largest
    cluster first, so part numbers do not depend on file names."""
    groups: list[list[FileInfo]] = []
    for info in slices:
        echo = str(info.ds.get("EchoNumbers", ""))
        for group in groups:
            first = group[0]
            if str(first.ds.get("EchoNumbers", "")) == echo and \
                    np.abs(first.orientation - info.orientation).max() < ORIENTATION_TOL:
                group.append(info)
                break
        else:
            groups.append([info])
    return sorted(groups, key=lambda g: (-len(g), tuple(np.round(g[0].orientation, 3))))


def _base_series(info: FileInfo) -> DicomSeries:
    ds = info.ds
    number = ds.get("SeriesNumber")
    try:
        series_number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        series_number = None
    return DicomSeries(
        index=0, uid=info.uid, modality=str(ds.get("Modality", "") or ""),
        description=" ".join(str(ds.get("SeriesDescription", "") or "").split()), series_number=series_number,
        rows=int(ds.get("Rows", 0) or 0), columns=int(ds.get("Columns", 0) or 0),
        pixel_spacing=info.pixel_spacing or (1.0, 1.0),
        orientation=info.orientation if info.orientation is not None else np.full(6, np.nan),
        slices=[SliceHeader(info.path, info.position if info.position is not None else np.zeros(3))],
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
    )


def _refused_series(bad: list[FileInfo]) -> DicomSeries:
    """A series none of whose files can be used: listed, refused with the first file's reason."""
    series = _base_series(bad[0])
    series.slices = [SliceHeader(b.path, np.zeros(3)) for b in bad]
    series.problems.append(f"{bad[0].path.name}: {bad[0].reason}"
                           + (f" (and {len(bad) - 1} more file(s))" if len(bad) > 1 else ""))
    return series


def _slice_series(group: list[FileInfo]) -> DicomSeries:
    series = _base_series(group[0])
    group = _deduplicate(group, series)
    series.slices = [SliceHeader(g.path, g.position, g.truncated) for g in group]
    _check_uniform(series, group)
    if not series.problems:
        _sort_and_validate(series)
    return series


def _deduplicate(group: list[FileInfo], series: DicomSeries) -> list[FileInfo]:
    """Drop identical copies of one instance (noted); refuse two different instances sharing a SOPInstanceUID."""
    kept: dict[str, FileInfo] = {}
    unique: list[FileInfo] = []
    dropped = 0
    for info in group:
        sop = str(info.ds.get("SOPInstanceUID", "") or "")
        first = kept.get(sop) if sop else None
        if first is None:
            kept[sop] = info
            unique.append(info)
        elif _same_instance(first, info):
            dropped += 1
        else:
            series.problems.append(f"{first.path.name} and {info.path.name} share a SOPInstanceUID but differ "
                                   "(an instance re-sent with other content?)")
    if dropped:
        series.notes.append(f"{dropped} identical duplicate file(s) of the same instance ignored")
    return unique


def _same_instance(a: FileInfo, b: FileInfo) -> bool:
    if a.path.read_bytes() == b.path.read_bytes():
        return True
    da, db = open_dicom(a.path), open_dicom(b.path)
    return (da is not None and db is not None and np.array_equal(a.position, b.position)
            and da.get("PixelData") == db.get("PixelData"))


def _check_uniform(series: DicomSeries, group: list[FileInfo]) -> None:
    """Refuse a series whose slices differ in size or pixel spacing, naming an odd file."""
    sizes = [(int(g.ds.Rows), int(g.ds.Columns)) for g in group]
    common = max(set(sizes), key=sizes.count)
    series.rows, series.columns = common
    if odd := [g for g, s in zip(group, sizes, strict=True) if s != common]:
        r, c = int(odd[0].ds.Rows), int(odd[0].ds.Columns)
        series.problems.append(f"{odd[0].path.name} has {r} x {c} pixels, the other {sizes.count(common)} slice(s) "
                               f"{common[0]} x {common[1]} ({len(odd)} file(s) differ)")
    with_spacing = [g for g in group if g.pixel_spacing is not None]
    if not with_spacing:
        series.problems.append("no PixelSpacing: the voxel size is unknown")
        return
    if len(with_spacing) != len(group):
        missing = next(g for g in group if g.pixel_spacing is None)
        series.problems.append(f"{missing.path.name} has no PixelSpacing while other slices do")
        return
    reference = np.asarray(with_spacing[0].pixel_spacing)
    series.pixel_spacing = with_spacing[0].pixel_spacing
    for g in with_spacing:
        if not np.allclose(g.pixel_spacing, reference, rtol=PIXEL_SPACING_REL_TOL, atol=0):
            series.problems.append(f"{g.path.name} has pixel spacing {g.pixel_spacing} mm, other slices "
                                   f"{tuple(reference)}")
            return


def _multiframe_series(info: FileInfo) -> DicomSeries:
    """A series for one enhanced multi-frame image, its geometry computed by highdicom."""
    series = _base_series(info)
    series.frames = int(info.ds.get("NumberOfFrames", 1) or 1)
    try:
        import highdicom as hd

        geometry = hd.Image.from_dataset(open_dicom(info.path, "deferred"), copy=False).get_volume_geometry()
    except Exception as exc:  # highdicom raises many types for inconsistent functional groups
        series.problems.append(f"frames do not describe a volume ({one_line(exc, 150)})")
        return series
    if geometry is None:
        series.problems.append("frames do not form a regularly spaced volume (missing or uneven frames)")
        return series
    _set_frame_geometry(series, np.asarray(geometry.affine, float), geometry.spatial_shape)
    if series.frames < MIN_SLICES:
        series.problems.append(f"only {series.frames} frame(s); a volume needs at least {MIN_SLICES}")
    return series


def _set_frame_geometry(series: DicomSeries, hd_affine: np.ndarray, shape) -> None:
    """Convert highdicom's (frame, row, column) -> LPS affine into medseg's (column, row, slice) -> RAS,
    with slices sorted along the slice normal ``row x column`` as for single-frame series."""
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = hd_affine[:3, 2], hd_affine[:3, 1], hd_affine[:3, 0]
    lps[:3, 3] = hd_affine[:3, 3]
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    if float(np.cross(row_dir, col_dir) @ lps[:3, 2]) < 0:
        lps[:3, 3] += (int(shape[0]) - 1) * lps[:3, 2]
        lps[:3, 2] *= -1
        series.flip_frames = True
    series.frames, series.rows, series.columns = (int(s) for s in shape)
    series.pixel_spacing = (float(spacing[1]), float(spacing[0]))
    series.orientation = np.concatenate([row_dir, col_dir])
    series.slice_step = float(spacing[2])
    series.frame_affine = lps_to_ras(lps)


def _sort_and_validate(series: DicomSeries) -> None:
    problems = series.problems
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
