"""DICOM label objects in: RT Structure Sets and DICOM SEG as named structures on their image series' grid.

:func:`read_label_object` reads what a label object says (its structures, the series and frame of reference
it references) without rasterising anything; :func:`structure_masks` turns chosen structures into boolean
masks on the exact grid of the referenced series, as :func:`medseg.io.dicom.read_series` reads it (same
slice order, so a mask and the image share one affine).

RTSTRUCT contours are filled by voxel centre with the even-odd rule per slice (an inner contour is a hole);
voxels whose centre lies *on* a contour count as inside. That keeps both conventions exact: contours drawn
through boundary voxel centres (OpenCV-based writers such as rt-utils, most planning systems' exports of
masks) and contours along voxel edges (medseg's own writer, whose lines never pass through a centre). A
contour that references an image missing from the series, lies more than half a slice off its image plane,
or whose point data is damaged makes that structure unusable; the others of the object still are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from skimage.draw import polygon

from medseg.errors import MedsegError, one_line
from medseg.io.dicom_series import DicomSeries
from medseg.io.rtstruct import image_plane
from medseg.io.seg import read_source_headers

KINDS = ("RTSTRUCT", "SEG")
_ON_CONTOUR_PX = 1e-3  # a voxel centre this close (pixels) to a contour line lies on it


@dataclass(frozen=True)
class Structure:
    """One ROI of a structure set or one segment of a SEG.

    ``name`` is raw tag text (ROIName / SegmentLabel): shown in tables, never used to build a path.
    ``drawn``: the object holds contours (RTSTRUCT) or frames (SEG) for it; a template ROI has none.
    """

    number: int
    name: str
    drawn: bool


@dataclass(frozen=True)
class LabelObject:
    """What an RTSTRUCT or SEG file says, header level."""

    path: Path
    kind: str  # "RTSTRUCT" or "SEG"
    sop_uid: str
    series_uids: tuple[str, ...]  # the image series it references
    frame_uid: str
    structures: tuple[Structure, ...]


def read_label_object(path: str | Path) -> LabelObject:
    """Read an RTSTRUCT or DICOM SEG file's structures and references.

    Raises:
        MedsegError: when the file is neither, or references no image series.
    """

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        kind = str(ds.get("Modality", "")).upper()
        if kind not in KINDS:
            raise MedsegError(f"not an RTSTRUCT or SEG (modality {kind or 'missing'})", path)
        series, frame, structures = (_rtstruct_header if kind == "RTSTRUCT" else _seg_header)(ds)
    except MedsegError:
        raise
    except Exception as exc:  # damaged sequences or values pydicom cannot convert
        raise MedsegError(f"unreadable label object ({one_line(exc)})", path) from exc
    if not series:
        raise MedsegError(f"{kind} references no image series", path)
    return LabelObject(path, kind, str(ds.get("SOPInstanceUID", "")), series, frame, structures)


def _rtstruct_header(ds) -> tuple[tuple[str, ...], str, tuple[Structure, ...]]:
    series, frames = [], []
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        frames.append(str(frame.get("FrameOfReferenceUID", "")))
        for study in frame.get("RTReferencedStudySequence", []):
            series += [str(s.SeriesInstanceUID) for s in study.get("RTReferencedSeriesSequence", [])]
    contours = {int(roi.ReferencedROINumber): len(roi.get("ContourSequence", []))
                for roi in ds.get("ROIContourSequence", [])}
    structures = tuple(Structure(int(roi.ROINumber), str(roi.get("ROIName", "")),
                                 contours.get(int(roi.ROINumber), 0) > 0)
                       for roi in ds.get("StructureSetROISequence", []))
    roi_frames = {str(r.get("ReferencedFrameOfReferenceUID", "")) for r in ds.get("StructureSetROISequence", [])}
    frame = next(iter(roi_frames)) if len(roi_frames) == 1 else (frames[0] if frames else "")
    return tuple(dict.fromkeys(series)), frame, structures


def _seg_header(ds) -> tuple[tuple[str, ...], str, tuple[Structure, ...]]:
    series = [str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])]
    framed = {int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
              for f in ds.get("PerFrameFunctionalGroupsSequence", []) if "SegmentIdentificationSequence" in f}
    shared = ds.get("SharedFunctionalGroupsSequence", [])
    if shared and "SegmentIdentificationSequence" in shared[0]:
        framed.add(int(shared[0].SegmentIdentificationSequence[0].ReferencedSegmentNumber))
    structures = tuple(Structure(int(s.SegmentNumber), str(s.get("SegmentLabel", "")),
                                 int(s.SegmentNumber) in framed) for s in ds.get("SegmentSequence", []))
    return tuple(dict.fromkeys(series)), str(ds.get("FrameOfReferenceUID", "")), structures


def structure_masks(obj: LabelObject, series: DicomSeries, numbers: list[int]
                    ) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Boolean masks ``(X=columns, Y=rows, Z=slices)`` of the structures ``numbers`` on ``series``' grid.

    Returns:
        ``(masks, problems)``: a mask per usable structure; one line per structure that cannot be used.

    Raises:
        MedsegError: when the object as a whole does not fit the series (another frame of reference,
            multi-frame images for an RTSTRUCT, SEG frames that reference none of its images).
    """
    if not numbers:
        return {}, {}
    sources = read_source_headers(series.files, obj.path)
    frames = {str(s.get("FrameOfReferenceUID", "")) for s in sources}
    if obj.frame_uid and obj.frame_uid not in frames:
        raise MedsegError("its structures are in another frame of reference than the series it references",
                          obj.path)
    if obj.kind == "SEG":
        return _seg_masks(obj, sources, numbers), {}
    if series.frames:
        raise MedsegError("RTSTRUCT contours need single-frame images; the referenced series is multi-frame",
                          obj.path)
    return _rtstruct_masks(obj, sources, series.slice_step, numbers)


def _seg_masks(obj: LabelObject, sources: list, numbers: list[int]) -> dict[int, np.ndarray]:

    seg = hd.seg.segread(obj.path)
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    referenced = {str(item[-1]) for item in seg.get_source_image_uids()}  # (study, series, instance) UIDs
    if not referenced & set(uids):
        raise MedsegError("its frames reference none of the series' images", obj.path)
    present = [k for k, u in enumerate(uids) if u in referenced]  # highdicom refuses images not referenced
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uids[k] for k in present],
                                               segment_numbers=numbers, combine_segments=False,
                                               skip_overlap_checks=True, assert_missing_frames_are_empty=True,
                                               # dcmqi and others leave SpatialLocationsPreserved out; the
                                               # frame references the image it was drawn on, which is enough
                                               ignore_spatial_locations=True)
    array = np.asarray(pixels) > 0  # (referenced slices, rows, columns, segments)
    masks = {}
    for i, number in enumerate(numbers):
        masks[number] = np.zeros((int(sources[0].Columns), int(sources[0].Rows), len(sources)), dtype=bool)
        masks[number][:, :, present] = array[..., i].transpose(2, 1, 0)
    return masks


def _rtstruct_masks(obj: LabelObject, sources: list, step: float, numbers: list[int]
                    ) -> tuple[dict[int, np.ndarray], dict[int, str]]:

    ds = pydicom.dcmread(obj.path)
    planes = [image_plane(s) for s in sources]
    by_uid = {str(s.SOPInstanceUID): k for k, s in enumerate(sources)}
    shape = (int(sources[0].Columns), int(sources[0].Rows), len(sources))
    half = 0.5 * (step if step > 0 else 1.0)
    wanted = set(numbers)
    masks, problems = {}, {}
    for roi in ds.get("ROIContourSequence", []):
        number = int(roi.ReferencedROINumber)
        if number not in wanted:
            continue
        try:
            masks[number] = _fill_roi(roi, planes, by_uid, shape, half)
        except ValueError as exc:
            problems[number] = str(exc)
    for number in wanted - set(masks) - set(problems):
        masks[number] = np.zeros(shape, dtype=bool)  # listed without contours: a template ROI
    return masks, problems


def _fill_roi(roi, planes: list, by_uid: dict[str, int], shape: tuple[int, int, int], half: float) -> np.ndarray:
    """One ROI's mask; ValueError (one line) when a contour is damaged or off the series."""
    mask = np.zeros(shape, dtype=bool)
    for n, contour in enumerate(roi.get("ContourSequence", []), start=1):
        kind = str(contour.get("ContourGeometricType", ""))
        if kind != "CLOSED_PLANAR":
            continue  # points and open lines enclose nothing
        points = _points(contour, n)
        k = _slice_of(contour, points, planes, by_uid, half, n)
        origin, matrix = planes[k]
        index = np.linalg.lstsq(matrix, (points - origin).T, rcond=None)[0]  # (2, n): column, row
        if len(points) >= 3:  # one or two points (OpenCV's contour of a lone voxel or a line) enclose nothing
            mask[:, :, k] ^= _interior(index, shape[:2])
        mask[:, :, k] |= _on_contour(index, shape[:2])
    return mask


def _points(contour, n: int) -> np.ndarray:
    try:
        values = np.asarray(contour.ContourData, dtype=np.float64).ravel()
    except (AttributeError, ValueError, TypeError) as exc:
        raise ValueError(f"contour {n} has unreadable ContourData") from exc
    declared = contour.get("NumberOfContourPoints")
    if values.size % 3 or (declared is not None and int(declared) * 3 != values.size):
        raise ValueError(f"contour {n} holds {values.size} values, not 3 x NumberOfContourPoints ({declared})")
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"contour {n} has no points or non-finite coordinates")
    return values.reshape(-1, 3)


def _slice_of(contour, points: np.ndarray, planes: list, by_uid: dict[str, int], half: float, n: int) -> int:
    """Index of the slice a contour is on: the image it references, else the plane it lies in; checked."""
    refs = [str(i.ReferencedSOPInstanceUID) for i in contour.get("ContourImageSequence", [])]
    if refs and refs[0] not in by_uid:
        raise ValueError(f"contour {n} is on an image that is not in the series (a missing slice)")
    distances = np.array([_off_plane(points, plane) for plane in planes])  # (slices, points)
    k = by_uid[refs[0]] if refs else int(np.argmin(np.abs(distances).max(axis=1)))
    off = float(np.abs(distances[k]).max())
    if off > half:
        raise ValueError(f"contour {n} lies {off:.2f} mm off the image plane of its slice (limit {half:.2f} mm)")
    return k


def _off_plane(points: np.ndarray, plane: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    origin, matrix = plane
    normal = np.cross(matrix[:, 0], matrix[:, 1])
    return (points - origin) @ (normal / np.linalg.norm(normal))


def _interior(index: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre is inside the polygon ``index`` ((2, n) column, row)."""

    out = np.zeros(shape, dtype=bool)
    out[polygon(index[0], index[1], shape=shape)] = True
    return out


def _on_contour(index: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies on the closed polyline ``index`` ((2, n) column, row), within 1e-3 pixel.

    Each edge is sampled at most half a pixel apart; the nearest lattice point of each sample is kept when it
    lies on the edge, so every centre an edge passes through is found and no other.
    """
    a = index.T
    b = np.roll(a, -1, axis=0)
    counts = 2 * np.ceil(np.abs(b - a).max(axis=1)).astype(int) + 2
    edge = np.repeat(np.arange(len(a)), counts)
    t = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)) / np.repeat(counts - 1, counts)
    start, delta = a[edge], (b - a)[edge]
    lattice = np.rint(start + t[:, None] * delta)
    along = np.clip(((lattice - start) * delta).sum(1) / np.maximum((delta ** 2).sum(1), 1e-12), 0.0, 1.0)
    near = np.linalg.norm(start + along[:, None] * delta - lattice, axis=1) < _ON_CONTOUR_PX
    cols, rows = lattice[near].astype(int).T
    inside = (cols >= 0) & (cols < shape[0]) & (rows >= 0) & (rows < shape[1])
    out = np.zeros(shape, dtype=bool)
    out[cols[inside], rows[inside]] = True
    return out
