"""One entry point for reading and writing volumes, whatever the format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError
from medseg.io.dicom import read_dicom_folder, scan_dicom
from medseg.io.itk import ITK_SUFFIXES, read_itk, write_itk
from medseg.io.nifti import (
    NIFTI_SUFFIXES,
    _choose_affine,
    _spatial_first_shape,
    _why,
    read_nifti,
    write_nifti,
)
from medseg.types import Volume

WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


@dataclass(frozen=True)
class Header:
    """Grid of a volume read from its header only: spatial shape, channels and RAS affine."""

    shape: tuple[int, int, int]
    channels: int
    affine: np.ndarray


def image_suffix(path: str | Path) -> str:
    """Lower-case image suffix, e.g. ``.nii.gz``; empty for a folder or unknown file."""
    name = Path(path).name.lower()
    for suffix in NIFTI_SUFFIXES[::-1] + ITK_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def image_stem(path: str | Path) -> str:
    """File name without its image suffix: ``case_001.nii.gz`` -> ``case_001``."""
    name, suffix = Path(path).name, image_suffix(path)
    return name[: -len(suffix)] if suffix else name


def read_volume(path: str | Path, label: bool = False) -> Volume:
    """Read a NIfTI/NRRD/MHA file, or the single DICOM series in a folder.

    Args:
        path: Image file, or a folder holding one DICOM series.
        label: Read as an integer label map (files only).

    Raises:
        MedsegError: one line naming the file and the problem.
    """
    path = Path(path)
    if path.is_dir():
        return read_dicom_folder(path)
    suffix = image_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return read_nifti(path, label=label)
    if suffix in ITK_SUFFIXES:
        return read_itk(path, label=label)
    if not path.exists():
        raise MedsegError("file not found", path)
    raise MedsegError("unknown image format (expected .nii, .nii.gz, .nrrd, .mha, .mhd or a DICOM folder)",
                      path)


def write_volume(volume: Volume, path: str | Path, overwrite: bool = False, label: bool | None = None) -> Path:
    """Write ``volume`` atomically as NIfTI (``.nii``/``.nii.gz``), NRRD or MHA, chosen by suffix.

    Args:
        overwrite: Replace an existing file (default False: refuse).
        label: Force integer label storage (NIfTI); default follows the array's dtype.
    """
    suffix = image_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return write_nifti(volume, path, overwrite=overwrite, label=label)
    if suffix in (".nrrd", ".mha"):
        return write_itk(volume, path, overwrite=overwrite)
    raise MedsegError(f"cannot write this format (use one of {', '.join(WRITE_SUFFIXES)})", path)


def read_header(path: str | Path) -> Header:
    """Grid of an image file or DICOM folder without loading its voxels."""
    path = Path(path)
    if path.is_dir():
        scan = scan_dicom(path)
        readable = [s for s in scan.series if s.readable]
        if len(readable) != 1:
            return Header(*_header_from_volume(read_dicom_folder(path)))  # raises the precise error
        return Header(readable[0].shape, 1, readable[0].affine)
    suffix = image_suffix(path)
    if not path.exists():
        raise MedsegError("file not found", path)
    if suffix in NIFTI_SUFFIXES:
        import nibabel as nib

        try:
            img = nib.load(str(path))
        except Exception as exc:
            raise MedsegError(f"not a readable NIfTI file ({_why(exc)})", path) from None
        shape = _spatial_first_shape(img.shape, path)
        affine, _ = _choose_affine(img, path)
        return Header(tuple(shape[:3]), shape[3] if len(shape) > 3 else 1, affine)
    if suffix in ITK_SUFFIXES:
        return Header(*_header_from_itk(path))
    raise MedsegError("unknown image format", path)


def _header_from_volume(volume: Volume):
    return volume.spatial_shape, volume.num_channels, volume.affine


def _header_from_itk(path: Path):
    import SimpleITK as sitk

    from medseg.io.geometry import compose_affine, lps_to_ras

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise MedsegError(f"not a readable image header ({_why(exc)})", path) from None
    dim = reader.GetDimension()
    size = (list(reader.GetSize()) + [1, 1])[:3]
    spacing = (list(reader.GetSpacing()) + [1.0, 1.0])[:3]
    origin = (list(reader.GetOrigin()) + [0.0, 0.0])[:3]
    direction = np.eye(3)
    direction[:dim, :dim] = np.array(reader.GetDirection()).reshape(dim, dim)[:3, :3]
    affine = lps_to_ras(compose_affine(spacing, origin, direction))
    return tuple(int(s) for s in size), reader.GetNumberOfComponents(), affine
