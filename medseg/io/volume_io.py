"""One entry point for reading and writing volumes, whatever the format."""

from __future__ import annotations

from pathlib import Path

from medseg.errors import MedsegError
from medseg.io.dicom import read_dicom_folder
from medseg.io.itk import ITK_SUFFIXES, read_itk, write_itk
from medseg.io.nifti import NIFTI_SUFFIXES, read_nifti, write_nifti
from medseg.types import Volume

WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


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

