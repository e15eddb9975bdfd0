"""NIfTI read and write (nibabel), with one documented rule for sform/qform.

Reading rule (the NIfTI standard's own priority, also nibabel's): the **sform** is used when its
code is > 0, else the **qform** when its code is > 0, else the pixdim-only fallback (a warning says
the file has no orientation). When both codes are > 0 and the two disagree by more than 0.05 mm at
any corner of the grid, a warning names the file and the distance, and the sform is used. (The qform
is a float32 quaternion: on a 500 mm oblique grid it drifts up to ~0.01 mm from the exact affine, so
a tighter threshold would warn on every oblique file ever written.)

Writing sets both sform and qform from the same affine with the same code (1, scanner), so every
reader (ITK reads the qform, nibabel the sform) sees the same geometry. An affine with shear cannot
be a qform; it is written as sform only (qform code 0) and a warning says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError, one_line
from medseg.io.atomic import atomic_path
from medseg.io.memory import check_fits
from medseg.types import Volume

# Imported inside functions, measured on import after numpy: nibabel 0.48 s. `import medseg` (so `medseg --help`)
# loads this module; only the calls that need them pay.

log = logging.getLogger(__name__)

QFORM_TOLERANCE_MM = 0.05
_MM_PER_UNIT = {"meter": 1000.0, "micron": 0.001}


def read_nifti(path: str | Path, label: bool = False) -> Volume:
    """Read a NIfTI file into a :class:`Volume`.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        label: Read as a label map: values must be integers; dtype becomes the smallest of uint8,
            int16, int32 that holds them. Otherwise intensities are float32 with scl_slope applied.

    Returns:
        Volume with array ``(X, Y, Z)`` or ``(C, X, Y, Z)`` for a 4D file, RAS affine.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
    except FileNotFoundError:
        raise MedsegError("file not found", path) from None
    except Exception as exc:  # nibabel raises many types for damaged headers
        raise MedsegError(f"not a readable NIfTI file ({one_line(exc)})", path) from None
    if img.get_data_dtype().kind not in "biuf":
        raise MedsegError(f"unsupported voxel type {img.get_data_dtype()} (complex or RGB data); a scan must hold "
                          "real numbers", path)
    shape = _spatial_first_shape(img.shape, path)
    check_fits(img.shape, img.get_data_dtype().itemsize + 4, path)
    affine, warnings = _choose_affine(img, path)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise MedsegError("invalid geometry: the affine is singular or not finite (zero voxel size?)", path)
    try:
        raw = np.asanyarray(img.dataobj)  # stored type, or float64 where scl_slope/scl_inter scale it
    except Exception as exc:  # truncated gzip, short file...
        raise MedsegError(f"pixel data cannot be read ({one_line(exc)})", path) from None
    data = np.asarray(raw).reshape(shape)
    if data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    data = to_label_array(data, path) if label else _float32_c_order(data)
    meta = {"source": str(path), "format": "nifti", "warnings": warnings}
    return Volume(array=data, affine=affine, meta=meta)


def _float32_c_order(data: np.ndarray) -> np.ndarray:
    """``data`` (often Fortran-ordered, as NIfTI stores it) as a C-ordered float32 array.

    Torch copies, not numpy: on a 2-core AMD EPYC (Zen 5), 2026-12-03, a 512x512x307 int16 CT read by nibabel in
    0.33 s took 0.96 s more to become float32 (``get_fdata``) and 2.16 s more to become C-ordered
    (``np.ascontiguousarray``); torch does both in one pass in 0.77 s.
    """
    import torch

    if not data.dtype.isnative or data.dtype not in (np.uint8, np.int8, np.int16, np.int32, np.int64, np.float32,
                                                     np.float64):
        data = data.astype(np.float32)  # byte-swapped or a type torch lacks: numpy converts (a C-ordered copy)
    return torch.from_numpy(data).to(torch.float32).contiguous().numpy()


def write_nifti(volume: Volume, path: str | Path, overwrite: bool = True, label: bool | None = None) -> Path:
    """Write a :class:`Volume` as NIfTI, atomically, with sform and qform both set.

    Args:
        volume: Data and RAS affine; a channel-first 4D array is written as X, Y, Z, C.
        path: Destination ending in ``.nii`` or ``.nii.gz``.
        overwrite: Refuse to replace an existing file when False.
        label: Store as the smallest integer type (default: True for integer arrays).
    """
    import nibabel as nib

    path = Path(path)
    data = volume.array
    if label is None:
        label = np.issubdtype(data.dtype, np.integer) or data.dtype == bool
    if label:
        data = to_label_array(data, path)
    if data.ndim == 4:
        data = np.moveaxis(data, 0, -1)
    img = nib.Nifti1Image(np.ascontiguousarray(data), volume.affine)
    img.set_sform(volume.affine, code=1)
    if _is_orthogonal(volume.affine):
        img.set_qform(volume.affine, code=1)
    else:
        img.set_qform(None, code=0)
        log.warning("%s: affine has shear; written as sform only (qform code 0)", path)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(img, str(tmp))
    return path


def to_label_array(data: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Return ``data`` as an integer label array in the smallest type that holds its values.

    Raises:
        MedsegError: when values are not whole numbers (e.g. an interpolated label map) or NaN.
    """
    data = np.asarray(data)
    if not np.issubdtype(data.dtype, np.integer) and data.dtype != bool:
        if not np.isfinite(data).all():
            raise MedsegError("label map contains NaN or infinite values", path)
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise MedsegError("label map has non-integer values (was it interpolated?)", path)
        data = rounded
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.ascontiguousarray(data, dtype=dtype)
    raise MedsegError(f"label values {lo}..{hi} do not fit in int32", path)


def _choose_affine(img, path: Path) -> tuple[np.ndarray, list[str]]:
    header = img.header
    sform, scode = header.get_sform(coded=True)
    qform, qcode = header.get_qform(coded=True)
    warnings: list[str] = []
    if scode and scode > 0:
        affine = sform
        if qcode and qcode > 0:
            dist = _corner_distance(sform, qform, img.shape[:3])
            if dist > QFORM_TOLERANCE_MM:
                warnings.append(f"sform and qform disagree by up to {dist:.3g} mm; using the sform")
    elif qcode and qcode > 0:
        affine = qform
    else:
        zooms = _stored_pixdim(img)
        if not (np.isfinite(zooms).all() and (zooms > 0).all()):
            raise MedsegError(f"no sform or qform, and pixdim {tuple(float(z) for z in zooms)} has a zero, negative "
                              "or invalid voxel size; refusing to guess the geometry", path)
        affine = header.get_base_affine()
        warnings.append("no sform or qform code set; orientation unknown, using voxel sizes only")
    affine = _to_mm(np.asarray(affine, dtype=np.float64), header, path, warnings)
    for text in warnings:
        log.warning("%s: %s", path, text)
    return np.asarray(affine, dtype=np.float64), warnings


def _stored_pixdim(img) -> np.ndarray:
    """Voxel sizes as the file stores them: nibabel's loader silently turns zero pixdims into 1 mm."""
    import nibabel as nib

    try:
        holder = img.file_map.get("header") or img.file_map["image"]
        with holder.get_prepare_fileobj("rb") as fh:
            raw = nib.Nifti1Header.from_fileobj(fh, check=False)
        return np.asarray(raw["pixdim"][1:4], float)
    except Exception:  # unusual file maps: fall back to the (possibly repaired) loaded header
        return np.asarray(img.header["pixdim"][1:4], float)


def _to_mm(affine: np.ndarray, header, path: Path, warnings: list[str]) -> np.ndarray:
    """Scale an affine given in metres or microns (``xyzt_units``) to mm; unknown units are taken as mm."""
    unit = header.get_xyzt_units()[0]
    if unit in ("mm", "unknown"):
        return affine
    factor = _MM_PER_UNIT.get(unit)
    if factor is None:
        raise MedsegError(f"spatial unit '{unit}' cannot be converted to mm", path)
    warnings.append(f"spatial unit is {unit}; converted to mm (x {factor:g})")
    scaled = affine.copy()
    scaled[:3, :] *= factor
    return scaled


def _corner_distance(a: np.ndarray, b: np.ndarray, shape) -> float:
    dims = (list(shape) + [1, 1, 1])[:3]
    corners = np.array([[i, j, k, 1] for i in (0, dims[0] - 1) for j in (0, dims[1] - 1) for k in (0, dims[2] - 1)])
    return float(np.abs(corners @ a.T - corners @ b.T)[:, :3].max())


def _spatial_first_shape(shape, path: Path) -> tuple[int, ...]:
    """Squeeze singleton dims beyond the third; allow at most one channel axis."""
    dims = list(shape) + [1] * max(0, 3 - len(shape))
    spatial, rest = dims[:3], [d for d in dims[3:] if d != 1]
    if len(rest) > 1:
        raise MedsegError(f"unsupported NIfTI shape {tuple(shape)} (more than one non-spatial axis)", path)
    return tuple(spatial + rest)


def _is_orthogonal(affine: np.ndarray) -> bool:
    m = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.allclose(m.T @ m, np.eye(3), atol=1e-6))
