"""One entry point for reading and writing volumes, whatever the format."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError
from medseg.io.dicom import read_dicom_folder
from medseg.io.itk import read_itk, write_itk
from medseg.io.nifti import read_nifti, write_nifti
from medseg.io.paths import ITK_SUFFIXES, NIFTI_SUFFIXES, WRITE_SUFFIXES, image_suffix, regular_file_problem
from medseg.types import Volume

log = logging.getLogger(__name__)


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
        return _warn_non_finite(read_dicom_folder(path))
    if not path.exists():
        raise MedsegError("file not found", path)
    if problem := regular_file_problem(path):
        raise MedsegError(problem, path)
    suffix = image_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return _warn_non_finite(read_nifti(path, label=label))
    if suffix in ITK_SUFFIXES:
        return _warn_non_finite(read_itk(path, label=label))
    raise MedsegError("unknown image format (expected .nii, .nii.gz, .nrrd, .mha, .mhd or a DICOM folder)",
                      path)


def non_finite_warning(count: int) -> str:
    """The reader's warning for ``count`` NaN or infinite voxels (``medseg check`` reports them as an error)."""
    return f"{count} NaN or infinite voxel(s); segmentation treats them as the image's lowest finite value"


def _warn_non_finite(volume: Volume) -> Volume:
    """Record (and log) NaN or infinite voxels: preprocessing replaces them by the lowest finite value."""
    if volume.array.dtype.kind == "f":
        bad = int(volume.array.size - np.count_nonzero(np.isfinite(volume.array)))
        if bad:
            text = non_finite_warning(bad)
            volume.meta.setdefault("warnings", []).append(text)
            log.warning("%s: %s", volume.meta.get("source", "image"), text)
    return volume


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

