"""DICOM SEG out (highdicom): one segment per label, referencing the source series slice by slice."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medseg.errors import MedsegError
from medseg.io.atomic import atomic_path
from medseg.io.codes import SegmentConcept, label_concepts, srgb_to_dicom_cielab
from medseg.types import Volume

log = logging.getLogger(__name__)


def write_dicom_seg(label: Volume, source_files: list[str | Path], label_names: dict[int, str], path: str | Path,
                    algorithm_version: str = "0", overwrite: bool = False,
                    label_codes: dict[int, dict] | None = None, series_number: int = 9000,
                    series_description: str = "medseg") -> Path:
    """Write ``label`` (on the grid of the DICOM series ``source_files``) as a binary DICOM SEG.

    Args:
        label: Integer label map ``(X=columns, Y=rows, Z=slices)`` whose Z order is ``source_files``' order
            (as :func:`medseg.io.read_series` returns it).
        source_files: The series' slice files, sorted along the slice normal.
        label_names: Label value -> name for the foreground labels (0 is never a segment).
        path: Output ``.dcm`` file, written atomically.
        algorithm_version: Model id/version, recorded as the segmentation algorithm's version.
        overwrite: Replace an existing ``path``.
        label_codes: Optional label value -> ``{"category", "type", "modifier", "color"}`` from the model's
            label metadata (see :func:`medseg.io.codes.segment_concept`); labels without it are coded from
            their names by :func:`medseg.io.codes.concept_for`.
        series_number: SeriesNumber of the new SEG series.
        series_description: SeriesDescription of the new SEG series (at most 64 characters).

    Every foreground label becomes a segment (numbered 1..N in label order), present or not, so the
    segment list is the model's, whatever this case contains. Each segment carries SNOMED CT category and
    type codes (laterality as a type modifier) and a RecommendedDisplayCIELabValue.
    """

    if not np.issubdtype(np.asarray(label.array).dtype, np.integer):
        raise MedsegError(f"label map must hold integers, not {label.array.dtype}", path)
    if len(source_files) != label.spatial_shape[2]:
        raise MedsegError(f"label has {label.spatial_shape[2]} slices but the series has {len(source_files)} files",
                          path)
    sources = read_source_headers(source_files, path)
    names = {int(v): str(n) for v, n in label_names.items()}
    concepts = label_concepts(names, label_codes)
    values = list(concepts)
    lookup = np.zeros(max(values, default=0) + 2, dtype=np.uint8)  # last entry: values outside label_names
    for number, value in enumerate(values, start=1):
        lookup[value] = number
    frames = lookup[np.clip(label.array, 0, len(lookup) - 1)].transpose(2, 1, 0)  # (slices, rows, cols)
    algorithm = hd.AlgorithmIdentificationSequence(name="medseg", version=str(algorithm_version)[:64],
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        _segment_description(number, names[value], concepts[value], algorithm)
        for number, value in enumerate(values, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=int(series_number),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medseg", manufacturer_model_name="medseg",
        software_versions=str(algorithm_version)[:64], device_serial_number="0",
        series_description=str(series_description)[:64], omit_empty_frames=False,
    )
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        seg.save_as(tmp)
    return path


def _segment_description(number: int, name: str, concept: SegmentConcept, algorithm):
    """One SegmentSequence item: label, coded category/type (+ laterality modifier, region) and colour."""

    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=name[:64], segmented_property_category=concept.category,
        segmented_property_type=concept.type, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=None if concept.region is None else [concept.region],
    )
    if concept.laterality is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept(concept.laterality.value, concept.laterality.scheme_designator,
                               concept.laterality.meaning)]
    # Set directly: SegmentDescription's display_color argument is missing from older highdicom releases.
    description.RecommendedDisplayCIELabValue = list(srgb_to_dicom_cielab(concept.color))
    return description


# Type 2 attributes (must be present, may be empty) that anonymised exports often drop; the SEG and
# RTSTRUCT writers copy them from the source images. Missing ones are added empty in memory, never invented.
TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _with_type2_defaults(ds):
    """``ds`` (a pydicom Dataset) with each missing :data:`TYPE2_PATIENT_STUDY` attribute added empty."""
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def read_source_headers(source_files: Sequence[str | Path], path: str | Path) -> list:
    """Headers (no pixels) of one series' images, ready to be referenced by a SEG or RTSTRUCT.

    Anonymisers sometimes blank identifying UIDs. An empty SOPClassUID/SOPInstanceUID is taken from the
    file meta (the same object's identity, recorded twice); an empty StudyInstanceUID/SeriesInstanceUID is
    taken from the other slices, or when every slice lacks it, derived from the slices' SOPInstanceUIDs
    (so every output of this series gets the same one). Each repair is logged as a warning. Missing Type 2
    patient/study attributes are added empty.

    Args:
        source_files: The series' slice files.
        path: The output being written or read (named in errors).

    Raises:
        MedsegError: when a slice has no SOPInstanceUID or SOPClassUID even in its file meta, or the slices do
            not share one study, series and frame of reference.
    """

    sources = [_with_type2_defaults(pydicom.dcmread(file, stop_before_pixels=True)) for file in source_files]
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        blank = [(file, ds) for file, ds in zip(source_files, sources, strict=True) if not ds.get(keyword)]
        for file, ds in blank:
            recovered = getattr(ds, "file_meta", pydicom.Dataset()).get(f"MediaStorage{keyword}")
            if not recovered:
                raise MedsegError(f"source image {Path(file).name} has no {keyword}, so it cannot be referenced",
                                  path)
            ds[keyword] = pydicom.DataElement(keyword, "UI", str(recovered))
        if blank:
            log.warning("%d source images have an empty %s; using their file meta's", len(blank), keyword)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        _fill_series_uid(sources, keyword)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        found = {str(ds.get(keyword) or "") for ds in sources}
        if len(found) != 1 or "" in found:
            raise MedsegError(f"source images must share one {keyword}; found "
                              f"{len(found - {''})} and {'some' if '' in found else 'none'} missing", path)
    return sources


def _fill_series_uid(sources: list, keyword: str) -> None:
    """Give slices with an empty ``keyword`` the other slices' value, or a UID derived from the series."""

    present = {str(ds.get(keyword)) for ds in sources if ds.get(keyword)}
    if len(present) > 1 or all(ds.get(keyword) for ds in sources):
        return  # complete, or contradictory (refused by the caller)
    if present:
        uid, origin = present.pop(), "the other slices'"
    else:
        uid = generate_uid(entropy_srcs=[keyword, *sorted(str(ds.SOPInstanceUID) for ds in sources)])
        origin = "one derived from their SOPInstanceUIDs"
    log.warning("source images lack %s; using %s (%s)", keyword, origin, uid)
    for ds in sources:
        ds[keyword] = pydicom.DataElement(keyword, "UI", uid)


def read_dicom_seg_labels(path: str | Path, source_files: list[str | Path]) -> np.ndarray:
    """Label map ``(X, Y, Z)`` (segment numbers) from a SEG, in ``source_files``' slice order."""

    seg = hd.seg.segread(path)
    uids = [str(ds.SOPInstanceUID) for ds in read_source_headers(source_files, path)]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                               skip_overlap_checks=True)
    return np.asarray(pixels).transpose(2, 1, 0)
