"""Read DICOM series into :class:`Volume` objects with exact geometry.

Geometry comes from ImageOrientationPatient / ImagePositionPatient (sorted along the slice normal,
spacing from positions, never SliceThickness); intensities get RescaleSlope/Intercept per slice.
Compressed transfer syntaxes (JPEG 2000, JPEG lossless, JPEG-LS, RLE) decode through pydicom's
pylibjpeg / pyjpegls plugins.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import MedsegError, one_line
from medseg.io.dicom_files import open_dicom
from medseg.io.dicom_series import DicomSeries, FolderScan, scan_folder
from medseg.io.memory import check_fits
from medseg.types import Volume

# Imported inside functions, measured on import after numpy: highdicom 0.61 s. `import medseg` (so `medseg --help`)
# loads this module; only the calls that need them pay.


def read_series(series: DicomSeries) -> Volume:
    """Decode one validated series into a float32 :class:`Volume` ``(X=columns, Y=rows, Z=slices)``.

    Raises:
        MedsegError: naming the series (and file) when the series has problems or a slice cannot decode.
    """
    folder = series.slices[0].path.parent
    if series.problems:
        raise MedsegError(f"{series.name}: {series.problems[0]}", folder)
    check_fits(series.shape, 4 + 2, folder, what=f"{series.name} volume")
    if series.frames:
        volume = _decode_multiframe(series)
    else:
        volume = np.empty(series.shape, dtype=np.float32)
        for k, item in enumerate(series.slices):
            volume[:, :, k] = _decode_slice(item.path, series).T
    meta = {
        "source": str(folder), "format": "dicom", "modality": series.modality,
        "description": series.description, "series_number": series.series_number,
        "series_uid": series.uid, "study_uid": series.study_uid, "source_files": [str(p) for p in series.files],
        "warnings": list(series.notes),
    }
    return Volume(array=volume, affine=series.affine, meta=meta)


def read_dicom_folder(folder: str | Path) -> Volume:
    """Read the single volumetric series under ``folder``.

    Raises:
        MedsegError: when the folder has no readable series or several (listing them).
    """
    scan = scan_dicom(folder)
    readable = [s for s in scan.series if s.readable]
    if len(readable) == 1:
        return read_series(readable[0])
    if not readable:
        reasons = "; ".join(f"{s.name}: {s.problems[0]}" for s in scan.series) or "no DICOM image files found"
        raise MedsegError(f"no readable DICOM series ({reasons})", folder)
    names = ", ".join(s.name for s in readable)
    raise MedsegError(f"{len(readable)} series found ({names}); pick one (e.g. medseg convert)", folder)


def scan_dicom(folder: str | Path) -> FolderScan:
    """Find and validate every DICOM series under ``folder`` (headers only)."""
    folder = Path(folder)
    if not folder.exists():
        raise MedsegError("folder not found", folder)
    if not folder.is_dir():
        raise MedsegError("not a folder", folder)
    return scan_folder(folder)


def _decode_slice(path: Path, series: DicomSeries) -> np.ndarray:
    try:
        ds = open_dicom(path)
        if ds is None:
            raise ValueError("no longer a readable DICOM file")
        pixels = ds.pixel_array
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except Exception as exc:  # decoders raise many types for damaged codestreams
        raise MedsegError(f"{series.name}: pixel data cannot be decoded ({one_line(exc)})", path) from None
    if pixels.shape != (series.rows, series.columns):
        raise MedsegError(f"{series.name}: pixel array {pixels.shape} does not match Rows x Columns "
                          f"{(series.rows, series.columns)}", path)
    out = pixels.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def _decode_multiframe(series: DicomSeries) -> np.ndarray:
    """``(X, Y, Z)`` float32 of an enhanced multi-frame image (highdicom sorts the frames and applies the
    modality transform), frames in the order :mod:`medseg.io.dicom_series` planned."""
    import highdicom as hd

    path = series.files[0]
    try:
        frames = hd.Image.from_dataset(open_dicom(path), copy=False).get_volume(dtype=np.float32).array
    except Exception as exc:
        raise MedsegError(f"{series.name}: pixel data cannot be decoded ({one_line(exc)})", path) from None
    if frames.shape != (series.frames, series.rows, series.columns):
        raise MedsegError(f"{series.name}: decoded frames {frames.shape} differ from the header's geometry", path)
    volume = frames.transpose(2, 1, 0)
    return np.ascontiguousarray(volume[:, :, ::-1] if series.flip_frames else volume, dtype=np.float32)
