"""DICOM RT Structure Set out (and back in): one ROI per label, closed planar contours on each slice it is on.

Contours are the 0.5 iso-lines of each label's binary slice (scikit-image ``find_contours``), so they run
along voxel edges, cutting the corners of diagonal steps through their midpoints: every voxel centre of the
label lies inside its contours and every other centre outside. A hole is an inner contour on the same slice;
readers fill a slice's contours of one ROI by the even-odd rule (as :func:`read_rtstruct_labels` does).
Points are in patient coordinates (LPS, mm), in the plane of the referenced source image.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.uid import generate_uid
from scipy.ndimage import find_objects
from skimage.draw import polygon
from skimage.measure import approximate_polygon, find_contours

from medseg.errors import MedsegError
from medseg.io.atomic import atomic_path
from medseg.io.codes import SegmentConcept, label_concepts
from medseg.io.dicom_series import (
    ORIENTATION_TOL,
    PIXEL_SPACING_REL_TOL,
    SPACING_ABS_TOL_MM,
    TILT_TOL_PIXELS,
)
from medseg.io.geometry import ras_to_lps
from medseg.io.seg import TYPE2_PATIENT_STUDY, read_source_headers
from medseg.types import Volume

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
# The SOP class conventionally named in RTReferencedStudySequence items: the retired Detached Study Management.
STUDY_REFERENCE_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
CONTOUR_DATA = 0x30060050

# Optional (Type 3) patient and study attributes copied from the source images when present.
_COPIED_TYPE3 = ("SpecificCharacterSet", "IssuerOfPatientID", "StudyDescription", "PatientAge", "PatientSize",
                 "PatientWeight")

def write_rtstruct(label: Volume, source_files: Sequence[str | Path], label_names: Mapping[int, str],
                   path: str | Path, algorithm_version: str = "0", overwrite: bool = False,
                   label_codes: Mapping | None = None, series_number: int = 9001,
                   series_description: str = "medseg RTSTRUCT") -> Path:
    """Write ``label`` (on the grid of the DICOM series ``source_files``) as an RT Structure Set.

    Args:
        label: Integer label map ``(X=columns, Y=rows, Z=slices)``, Z in ``source_files``' order, on the
            series' grid (affine checked against each file's position, orientation and pixel spacing).
        source_files: The series' single-frame slice files, sorted along the slice normal.
        label_names: Label value -> name of the foreground labels; each becomes one ROI (ROI Number = label
            value), contoured or not. A lesion-like name (nodule, lesion, tumour) is a GTV, others ORGAN.
        path: Output ``.dcm`` file, written atomically.
        algorithm_version: Model id/version, recorded in ROIGenerationDescription.
        overwrite: Replace an existing ``path``.
        label_codes: Optional per-label code metadata as for :func:`medseg.io.seg.write_dicom_seg`; here it
            sets the display colour and the ROI's interpreted type (lesion category -> GTV).
        series_number: SeriesNumber of the new RTSTRUCT series.
        series_description: SeriesDescription of the new series (at most 64 characters).

    Raises:
        MedsegError: when the label's slices or grid differ from the series', or the files do not share one
            study, series and frame of reference.
    """
    path = Path(path)
    sources = read_source_headers(source_files, path)
    _check_sources(sources, label, path)
    planes = _checked_planes(sources, label, path)
    names = {int(v): str(n) for v, n in label_names.items()}
    concepts = label_concepts(names, label_codes)
    ds = _header(sources[0], int(series_number), str(series_description)[:64])
    ds.ReferencedFrameOfReferenceSequence = [_frame_reference(sources)]
    frame_uid = sources[0].FrameOfReferenceUID
    array = np.asarray(label.array)
    boxes = find_objects(np.clip(array, 0, max(concepts, default=0)).astype(np.int64))
    contour_items = []
    for value, concept in concepts.items():
        box = boxes[value - 1] if value <= len(boxes) else None
        contour_items.append(_roi_contour(value, concept, _label_contours(array, value, box, planes, sources)))
    ds.StructureSetROISequence = [_structure_set_roi(value, names[value], frame_uid, algorithm_version)
                                  for value in concepts]
    ds.ROIContourSequence = contour_items
    ds.RTROIObservationsSequence = [_observation(value, concept) for value, concept in concepts.items()]
    with atomic_path(path, overwrite=overwrite) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def _check_sources(sources: list, label: Volume, path: Path) -> None:
    if not np.issubdtype(np.asarray(label.array).dtype, np.integer):
        raise MedsegError(f"label map must hold integers, not {label.array.dtype}", path)
    if len(sources) != label.spatial_shape[2]:
        raise MedsegError(f"label has {label.spatial_shape[2]} slices but the series has {len(sources)} files", path)
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in sources):
        raise MedsegError("RTSTRUCT output needs single-frame source images; this series is multi-frame", path)
    if any((int(ds.Columns), int(ds.Rows)) != label.spatial_shape[:2] for ds in sources):
        raise MedsegError(f"source images are not {label.spatial_shape[0]} columns x {label.spatial_shape[1]} "
                          "rows like the label", path)


def _checked_planes(sources: list, label: Volume, path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per slice ``(origin (3,), in-plane matrix (3, 2))``: LPS mm = origin + matrix @ (column, row) index.

    Taken from each file, so contours lie in its image plane, after checking that the label's grid is the
    series' own: orientation and pixel spacing within the series reader's tolerances, positions within its
    sideways tolerance and less than half a slice along the normal (the reader's affine uses the median
    slice step, so a slice may sit a little off it along the normal).
    """
    affine = ras_to_lps(label.affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    normal = affine[:3, 2] / spacing[2]
    vector_tol = (ORIENTATION_TOL + PIXEL_SPACING_REL_TOL) * float(spacing[:2].max())
    sideways_tol = TILT_TOL_PIXELS * float(spacing[:2].min()) + SPACING_ABS_TOL_MM
    planes = []
    for k, ds in enumerate(sources):
        origin, matrix = image_plane(ds)
        if not np.allclose(matrix, affine[:3, :2], atol=vector_tol, rtol=0):
            raise MedsegError(f"slice {k}: orientation or pixel spacing differs from the label grid's", path)
        offset = origin - affine[:3, :3] @ np.array([0.0, 0.0, k]) - affine[:3, 3]
        along = float(offset @ normal)
        sideways = float(np.linalg.norm(offset - along * normal))
        if abs(along) >= 0.5 * spacing[2] or sideways > sideways_tol:
            raise MedsegError(f"slice {k}: position is {along:.3f} mm along the normal and {sideways:.3f} mm "
                              "sideways off the label grid's", path)
        planes.append((origin, matrix))
    return planes


def image_plane(ds) -> tuple[np.ndarray, np.ndarray]:
    """``(ImagePositionPatient (3,), (3, 2) matrix)`` of one image: columns step along the first direction
    cosine by the column spacing, rows along the second by the row spacing (PixelSpacing is row, column)."""
    cosines = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    matrix = np.stack([cosines[:3] * column_spacing, cosines[3:] * row_spacing], axis=1)
    return np.asarray(ds.ImagePositionPatient, dtype=np.float64), matrix


def _header(first, series_number: int, series_description: str):
    """The new object's patient, study, series, equipment, structure set and SOP common attributes."""

    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    for keyword in (*_COPIED_TYPE3, *TYPE2_PATIENT_STUDY, "StudyInstanceUID"):
        if keyword in first:
            setattr(ds, keyword, first[keyword].value)
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.OperatorsName = ""
    ds.Manufacturer = "medseg"
    ds.ManufacturerModelName = "medseg"
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "medseg"
    ds.StructureSetDate, ds.StructureSetTime = date, time
    return ds


def _frame_reference(sources: list):
    """ReferencedFrameOfReferenceSequence item: frame of reference -> study -> series -> every image."""

    images = [_image_reference(ds) for ds in sources]
    series = pydicom.Dataset()
    series.SeriesInstanceUID = sources[0].SeriesInstanceUID
    series.ContourImageSequence = images
    study = pydicom.Dataset()
    study.ReferencedSOPClassUID = STUDY_REFERENCE_SOP_CLASS
    study.ReferencedSOPInstanceUID = sources[0].StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = pydicom.Dataset()
    frame.FrameOfReferenceUID = sources[0].FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    return frame


def _image_reference(ds):

    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


def _label_contours(array: np.ndarray, value: int, box: tuple[slice, ...] | None, planes: list,
                    sources: list) -> list:
    """ContourSequence items of label ``value`` in ``array`` ``(X, Y, Z)``: its 0.5 iso-lines slice by slice,
    in LPS mm. ``box`` is the label's bounding box (None when absent), so only that part is traced."""

    if box is None:
        return []
    mask = array[box] == value
    corner = np.array([box[0].start, box[1].start], dtype=np.float64) - 1.0  # the padding below adds 1
    items = []
    for z in range(mask.shape[2]):
        k = box[2].start + z
        origin, matrix = planes[k]
        # Padding closes contours at the image border; tolerance 0 drops only exactly collinear points.
        for line in find_contours(np.pad(mask[:, :, z], 1).astype(np.float32), 0.5):
            points = approximate_polygon(line + corner, tolerance=0)[:-1]  # closed: the first point not repeated
            lps = origin + points @ matrix.T  # (n, 3) mm
            item = pydicom.Dataset()
            item.ContourImageSequence = [_image_reference(sources[k])]
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(lps)
            item[CONTOUR_DATA] = _decimal_strings(lps.ravel())
            items.append(item)
    return items


def _decimal_strings(values: np.ndarray):
    """A ContourData element holding ``values`` (mm) as DS text with 4 decimals (0.1 µm), already encoded.

    Built as raw bytes: letting pydicom parse and validate each of the many thousands of numbers took
    most of a large structure set's writing time.
    """

    text = "\\".join(f"{v:.4f}" for v in values).encode("ascii")
    text += b" " * (len(text) % 2)  # values have even length, DS pads with a space
    return RawDataElement(CONTOUR_DATA, "DS", len(text), text, 0, False, True, True, False)


def _roi_contour(value: int, concept: SegmentConcept, contours: list):

    item = pydicom.Dataset()
    item.ROIDisplayColor = list(concept.color)
    item.ReferencedROINumber = value
    if contours:
        item.ContourSequence = contours
    return item


def _structure_set_roi(value: int, name: str, frame_uid: str, algorithm_version: str):

    item = pydicom.Dataset()
    item.ROINumber = value
    item.ReferencedFrameOfReferenceUID = frame_uid
    item.ROIName = name[:64]
    item.ROIGenerationAlgorithm = "AUTOMATIC"
    item.ROIGenerationDescription = f"medseg {algorithm_version}"[:64]
    return item


def _observation(value: int, concept: SegmentConcept):

    item = pydicom.Dataset()
    item.ObservationNumber = value
    item.ReferencedROINumber = value
    item.RTROIInterpretedType = "GTV" if concept.is_lesion else "ORGAN"
    item.ROIInterpreter = ""
    return item


def read_rtstruct_labels(path: str | Path, source_files: Sequence[str | Path]) -> np.ndarray:
    """Rasterise an RT Structure Set's closed planar contours onto the grid of ``source_files``.

    Each contour is placed on the slice its ContourImageSequence names (else the slice whose plane it lies
    in) and filled by voxel centre; one ROI's contours on a slice combine by the even-odd rule (inner
    contours are holes). Contours of other geometric types (points, open lines) enclose nothing: skipped.

    Returns:
        ``(X=columns, Y=rows, Z=slices)`` int32 array of ROI numbers (0 outside every ROI; where ROIs
        overlap, the later one in ROIContourSequence wins), slices in ``source_files``' order.

    Raises:
        MedsegError: when the file is no RTSTRUCT of this series' frame of reference, or a contour lies off
            every slice.
    """

    path = Path(path)
    ds = pydicom.dcmread(path)
    if ds.get("Modality") != "RTSTRUCT":
        raise MedsegError(f"not an RTSTRUCT (modality {ds.get('Modality')!r})", path)
    sources = read_source_headers(source_files, path)
    frame_uids = {str(s.get("FrameOfReferenceUID", "")) for s in sources}
    roi_frames = {str(r.get("ReferencedFrameOfReferenceUID", "")) for r in ds.get("StructureSetROISequence", [])}
    if roi_frames - frame_uids:
        raise MedsegError("its ROIs are in another frame of reference than the source images", path)
    planes = [image_plane(s) for s in sources]
    by_uid = {str(s.SOPInstanceUID): k for k, s in enumerate(sources)}
    shape = (int(sources[0].Columns), int(sources[0].Rows))
    out = np.zeros((*shape, len(sources)), dtype=np.int32)
    for roi in ds.get("ROIContourSequence", []):
        mask = np.zeros(out.shape, dtype=bool)
        for contour in roi.get("ContourSequence", []):
            if contour.get("ContourGeometricType") != "CLOSED_PLANAR":
                continue
            points = _contour_points(contour)
            k = _contour_slice(contour, points, planes, by_uid, path)
            origin, matrix = planes[k]
            index = np.linalg.lstsq(matrix, (points - origin).T, rcond=None)[0]  # (2, n): column, row
            fill = np.zeros(shape, dtype=bool)
            fill[polygon(index[0], index[1], shape=shape)] = True
            mask[:, :, k] ^= fill
        out[mask] = int(roi.ReferencedROINumber)
    return out


def _contour_points(contour) -> np.ndarray:
    """``(n, 3)`` ContourData points in mm, parsed from the raw text when pydicom has not converted it yet."""
    element = contour.get_item(CONTOUR_DATA)
    if element is not None and element.is_raw and isinstance(element.value, bytes):
        values = np.array(element.value.decode("ascii").split("\\"), dtype=np.float64)
    else:
        values = np.asarray(contour.ContourData, dtype=np.float64)
    return values.reshape(-1, 3)


def _contour_slice(contour, points: np.ndarray, planes: list, by_uid: dict[str, int], path: Path) -> int:
    """Index of the source slice a contour belongs to: the image it references, else the plane it lies in."""
    for image in contour.get("ContourImageSequence", []):
        k = by_uid.get(str(image.ReferencedSOPInstanceUID))
        if k is not None:
            return k
    centre = points.mean(axis=0)
    distances = []
    for origin, matrix in planes:
        normal = np.cross(matrix[:, 0], matrix[:, 1])
        distances.append(abs(float((centre - origin) @ normal / np.linalg.norm(normal))))
    k = int(np.argmin(distances))
    steps = [float(np.linalg.norm(a[0] - b[0])) for a, b in zip(planes, planes[1:], strict=False)]
    if distances[k] > 0.5 * (min(steps) if steps else 1.0):
        raise MedsegError(f"a contour lies {distances[k]:.2f} mm from the nearest source slice", path)
    return k
