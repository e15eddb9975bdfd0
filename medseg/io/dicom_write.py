"""Write a :class:`Volume` as a DICOM image series (one file per slice) with pydicom.

Used for the built-in example and for tests; the files carry no patient identity (an anonymous
placeholder name and generated UIDs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medseg.io.atomic import atomic_path
from medseg.io.geometry import decompose_affine, ras_to_lps
from medseg.types import Volume

_SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}


def write_dicom_series(
    volume: Volume,
    folder: str | Path,
    modality: str = "MR",
    description: str = "medseg phantom",
    series_number: int = 1,
) -> list[Path]:
    """Write each Z slice of a 3D ``volume`` as ``IMG0001.dcm``... in ``folder``.

    Intensities are stored as int16 with RescaleSlope/Intercept chosen to keep 0.1 precision or
    better over the volume's range. Returns the file paths in slice order.
    """

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = ras_to_lps(volume.affine)
    spacing, _, direction = decompose_affine(lps)
    data = volume.array.astype(np.float64)
    lo, hi = float(data.min()), float(data.max())
    integral = bool(np.array_equal(data, np.rint(data))) and -32768 <= lo and hi <= 32767
    slope = 1.0 if integral or hi == lo else (hi - lo) / 60000.0  # else ~60,000 steps over the range
    intercept = 0.0 if slope == 1.0 else lo + 30000.0 * slope
    stored = np.rint((data - intercept) / slope).clip(-32768, 32767).astype(np.int16)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    sop_class = _SOP_CLASS.get(modality.upper(), "1.2.840.10008.5.1.4.1.1.7")
    paths = []
    for k in range(volume.spatial_shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientName, ds.PatientID = modality.upper(), "Phantom^Anonymous", "PHANTOM"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = series_number, k + 1, description
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in np.concatenate([direction[:, 0], direction[:, 1]])]
        ds.ImagePositionPatient = [f"{v:.10g}" for v in (lps @ np.array([0, 0, k, 1.0]))[:3]]
        ds.PixelSpacing = [f"{spacing[1]:.10g}", f"{spacing[0]:.10g}"]
        ds.SliceThickness = f"{spacing[2]:.6g}"
        ds.Rows, ds.Columns = volume.spatial_shape[1], volume.spatial_shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = folder / f"IMG{k + 1:04d}.dcm"
        with atomic_path(path) as tmp:
            pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
        paths.append(path)
    return paths
