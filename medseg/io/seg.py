"""DICOM SEG out (highdicom): one segment per label, referencing the source series slice by slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import MedsegError
from medseg.io.atomic import atomic_path
from medseg.types import Volume


def write_dicom_seg(label: Volume, source_files: list[str | Path], label_names: dict[int, str], path: str | Path,
                    algorithm_version: str = "0", overwrite: bool = False) -> Path:
    """Write ``label`` (on the grid of the DICOM series ``source_files``) as a binary DICOM SEG.

    Args:
        label: Integer label map ``(X=columns, Y=rows, Z=slices)`` whose Z order is ``source_files``' order
            (as :func:`medseg.io.read_series` returns it).
        source_files: The series' slice files, sorted along the slice normal.
        label_names: Label value -> name for the foreground labels (0 is never a segment).
        path: Output ``.dcm`` file, written atomically.

    Every foreground label becomes a segment (numbered 1..N in label order), present or not, so the
    segment list is the model's, whatever this case contains.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    if len(source_files) != label.spatial_shape[2]:
        raise MedsegError(f"label has {label.spatial_shape[2]} slices but the series has {len(source_files)} files",
                          path)
    sources = [_with_type2_defaults(pydicom.dcmread(f, stop_before_pixels=True)) for f in source_files]
    values = sorted(v for v in label_names if int(v) != 0)
    lookup = np.zeros(int(max(values, default=0)) + 1, dtype=np.uint8)
    for number, value in enumerate(values, start=1):
        lookup[int(value)] = number
    frames = lookup[np.clip(label.array, 0, len(lookup) - 1)].transpose(2, 1, 0)  # (slices, rows, cols)
    algorithm = hd.AlgorithmIdentificationSequence(name="medseg", version=str(algorithm_version)[:64],
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=str(label_names[value])[:64],
            segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        )
        for number, value in enumerate(values, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9000,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medseg", manufacturer_model_name="medseg",
        software_versions=str(algorithm_version)[:64], device_serial_number="0", series_description="medseg",
        omit_empty_frames=False,
    )
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        seg.save_as(tmp)
    return path


# Type 2 attributes (must be present, may be empty) that anonymised exports often drop; highdicom copies them
# from the source images into the SEG. Missing ones are added empty in memory, never invented.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _with_type2_defaults(ds):
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def read_dicom_seg_labels(path: str | Path, source_files: list[str | Path]) -> np.ndarray:
    """Label map ``(X, Y, Z)`` (segment numbers) from a SEG, in ``source_files``' slice order."""
    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(path)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in source_files]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                               skip_overlap_checks=True)
    return np.asarray(pixels).transpose(2, 1, 0)
