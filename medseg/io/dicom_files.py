"""Open DICOM files with one set of rules, and say what each file is (header only).

The header scan and the pixel decoder both open files through :func:`open_dicom`, so a file that one
accepts (say an old export without the 128-byte preamble) the other accepts too. Only regular files are
ever opened: FIFOs, sockets and device files found in a scan folder are skipped, never read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import one_line

# Imported inside functions, measured on import after numpy: pydicom 0.36 s. `import medseg` (so `medseg --help`)
# loads this module; only the calls that need them pay.

# Files with these endings are never opened as DICOM (a forced parse of a large .nii.gz is slow).
NOT_DICOM_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".json", ".yaml", ".yml", ".txt",
                      ".csv", ".md", ".png", ".jpg", ".jpeg", ".pdf", ".xml", ".zip", ".gz", ".npz", ".npy", ".pt",
                      ".html")
HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "Modality", "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber",
    "SeriesDescription",
    "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns",
    "BitsAllocated", "SamplesPerPixel", "NumberOfFrames", "EchoNumbers", "RescaleSlope", "RescaleIntercept",
    "PixelRepresentation", "PhotometricInterpretation", "PixelData",
]
# Multi-frame classes read as volumes (through highdicom); other multi-frame objects are skipped.
ENHANCED_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT", "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET", "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET",
}
# Image-like objects that are not scans to segment.
_NOT_SCANS = {"SEG": "DICOM SEG object", "RTDOSE": "RT dose grid", "RTSTRUCT": "RT structure set",
              "PR": "presentation state", "SR": "structured report", "KO": "key object selection"}


def open_dicom(path: str | Path, read: str = "all"):
    """Parse a DICOM file, or return None when it is not DICOM.

    Files with the standard preamble are parsed normally. Files without it (old exports, raw data sets)
    are accepted only when they carry ImagePositionPatient and Rows, i.e. look like image slices; the
    same rule serves the header scan and the decoder.

    Args:
        read: ``"all"``; ``"deferred"`` (every element, large values such as pixel data read on access);
            ``"header"`` (only :data:`HEADER_TAGS`, deferred); ``"before_pixels"`` (those tags, stopping at
            the pixel data: for files cut short inside it, which the other modes return empty).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    kwargs = {"all": {}, "deferred": {"defer_size": 1024},
              "header": {"defer_size": 1024, "specific_tags": HEADER_TAGS},
              "before_pixels": {"stop_before_pixels": True, "specific_tags": HEADER_TAGS}}[read]
    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        pass
    except Exception:  # damaged beyond reading: treated as not DICOM
        return None
    try:
        ds = pydicom.dcmread(path, force=True, **kwargs)
    except Exception:
        return None
    if "ImagePositionPatient" not in ds or "Rows" not in ds:
        return None
    _set_transfer_syntax(ds)
    return ds


def _set_transfer_syntax(ds) -> None:
    """Give a data set read without file meta the transfer syntax it was parsed with, so it can decode."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    syntax = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    ds.file_meta = meta if meta is not None else FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax


@dataclass
class FileInfo:
    """What one DICOM file's header says, once checked.

    Attributes:
        kind: ``"slice"`` (one frame of a series), ``"multiframe"`` (an enhanced image: a volume in one
            file), ``"other"`` (not a scan: SR, SEG, RTSTRUCT...) or ``"bad"`` (an image that cannot be
            used; ``reason`` says why and its series is refused).
        reason: One line; empty for a usable slice or multi-frame image.
    """

    path: Path
    ds: object
    kind: str
    reason: str = ""
    uid: str = ""
    position: np.ndarray | None = None
    orientation: np.ndarray | None = None  # 6 unit direction cosines (row, column), LPS
    pixel_spacing: tuple[float, float] | None = None
    truncated: bool = False


def read_file_info(path: Path) -> FileInfo | None:
    """Header of ``path`` classified by :func:`classify`; None when the file is not DICOM.

    A file cut short inside compressed pixel data parses as an empty data set; its header is read again
    up to the pixel data, so the file still counts against its series (as ``bad``), never as "not DICOM".
    """
    ds = open_dicom(path, "header")
    if ds is None or len(ds) > 0:
        return None if ds is None else classify(path, ds)
    ds = open_dicom(path, "before_pixels")
    if ds is None:
        return None
    info = classify(path, ds)
    if info.kind != "other" or "Rows" in ds:
        info.kind, info.reason = "bad", "file cut short inside its pixel data"
    return info


def classify(path: Path, ds) -> FileInfo:
    """Decide what a parsed header is, and check every value a slice needs."""
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    info = FileInfo(path=path, ds=ds, kind="bad", uid=uid)
    modality = str(ds.get("Modality", "") or "").upper()
    has_pixels = "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
    if modality in _NOT_SCANS or (not has_pixels and "Rows" not in ds):
        sop = getattr(ds.get("SOPClassUID"), "name", "") or modality or "object"
        info.kind, info.reason = "other", f"not an image series ({_NOT_SCANS.get(modality, sop)})"
        return info
    try:
        info.reason = _image_problem(ds)
        if not info.reason and _frames(ds) > 1:
            info.kind = "multiframe"
            return info
        if not info.reason:
            info.reason = _slice_geometry(info, ds)
    except Exception as exc:  # malformed values pydicom cannot even convert
        info.reason = f"malformed header ({type(exc).__name__}: {one_line(exc, 120)})"
    if not info.reason:
        info.kind = "slice"
    return info


def _frames(ds) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _image_problem(ds) -> str:
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        kind = str(ds.get("PhotometricInterpretation", "") or "colour")
        return f"colour image ({kind}, {samples} samples per pixel); only greyscale scans are read"
    if "PixelData" not in ds:
        return "no pixel data (file cut short?)"
    if _frames(ds) > 1:
        sop = str(ds.get("SOPClassUID", ""))
        if sop not in ENHANCED_IMAGE_CLASSES:
            name = getattr(ds.get("SOPClassUID"), "name", "") or sop or "unknown class"
            return f"multi-frame object of class '{name}' is not read as a volume"
        return ""
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword in ds and not _is_number(ds[keyword].value):
            return f"{keyword} '{_text(ds[keyword].value)}' is not a finite number"
    return ""


def _slice_geometry(info: FileInfo, ds) -> str:
    missing = [t for t in ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns") if t not in ds]
    if missing:
        return f"image without {', '.join(missing)}: its place in the volume is unknown"
    position = _numbers(ds["ImagePositionPatient"].value, 3)
    if position is None:
        return f"ImagePositionPatient '{_text(ds['ImagePositionPatient'].value)}' is not 3 finite numbers"
    iop = _numbers(ds["ImageOrientationPatient"].value, 6)
    if iop is None or min(np.linalg.norm(iop[:3]), np.linalg.norm(iop[3:])) < 0.5:
        return f"ImageOrientationPatient '{_text(ds['ImageOrientationPatient'].value)}' is not 2 unit vectors"
    if "PixelSpacing" in ds:
        spacing = _numbers(ds["PixelSpacing"].value, 2)
        if spacing is None or spacing.min() <= 0:
            return f"PixelSpacing '{_text(ds['PixelSpacing'].value)}' is not 2 positive numbers"
        info.pixel_spacing = (float(spacing[0]), float(spacing[1]))
    info.position, info.orientation = position, orthonormal(iop)
    info.truncated = _truncated(info.path, ds)
    return ""


def orthonormal(iop: np.ndarray) -> np.ndarray:
    """Row and column cosines made exactly unit and orthogonal (Gram-Schmidt on the column)."""
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:]
    col = col - row * float(row @ col)
    return np.concatenate([row, col / np.linalg.norm(col)])


def _truncated(path: Path, ds) -> bool:
    # PixelData is deferred (not read): its declared length and file offset tell whether the file was cut
    # short, without decoding. A cut encapsulated (compressed) element is dropped by the parser (no
    # PixelData, caught above) or fails when decoded.
    raw = ds.get_item(0x7FE00010)
    if hasattr(raw, "value_tell"):
        return raw.length != 0xFFFFFFFF and raw.value_tell + raw.length > path.stat().st_size
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if getattr(syntax, "is_encapsulated", False):
        return not _items_complete(raw.value or b"")
    need = int(ds.Rows) * int(ds.Columns) * int(ds.get("BitsAllocated", 16)) // 8
    return len(raw.value or b"") < need


def _items_complete(value: bytes) -> bool:
    """True when encapsulated pixel data is a whole sequence of items (offset table and fragments)."""
    at, items = 0, 0
    while at + 8 <= len(value):
        tag, length = value[at:at + 4], int.from_bytes(value[at + 4:at + 8], "little")
        if tag == b"\xfe\xff\xdd\xe0":
            return items >= 2
        if tag != b"\xfe\xff\x00\xe0" or at + 8 + length > len(value):
            return False
        at, items = at + 8 + length, items + 1
    return at == len(value) and items >= 2


def _is_number(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _numbers(value, count: int) -> np.ndarray | None:
    try:
        values = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return values if values.size == count and np.isfinite(values).all() else None


def _text(value) -> str:
    """A header value for a message: printable ASCII only, at most 40 characters."""
    if isinstance(value, bytes):
        text = value.decode("latin-1")
    elif isinstance(value, str):
        text = value
    else:
        try:
            text = "\\".join(str(v) for v in value)
        except TypeError:
            text = str(value)
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:40]
