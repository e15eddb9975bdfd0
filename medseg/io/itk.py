"""NRRD and MetaImage (.mha/.mhd) read and write through SimpleITK; geometry converted via geometry.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import MedsegError
from medseg.io.atomic import atomic_path
from medseg.io.geometry import set_sitk_geometry, sitk_to_ras_affine
from medseg.io.memory import check_fits
from medseg.io.nifti import _why, to_label_array
from medseg.types import Volume

ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def read_itk(path: str | Path, label: bool = False) -> Volume:
    """Read an NRRD or MetaImage file into a :class:`Volume` (array ``(X, Y, Z)`` or ``(C, X, Y, Z)``)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise MedsegError("file not found", path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise MedsegError(f"not a readable image header ({_why(exc)})", path) from None
    size = list(reader.GetSize()) + [reader.GetNumberOfComponents()]
    check_fits(size, 8, path)
    if reader.GetDimension() not in (2, 3):
        raise MedsegError(f"unsupported dimension {reader.GetDimension()} (need a 3D image)", path)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise MedsegError(f"pixel data cannot be read ({_why(exc)})", path) from None
    if image.GetDimension() == 2:
        image = sitk.JoinSeries([image])
    array = sitk.GetArrayFromImage(image)  # (z, y, x) or (z, y, x, c)
    array = array.transpose(2, 1, 0) if array.ndim == 3 else array.transpose(3, 2, 1, 0)
    array = to_label_array(array, path) if label else np.ascontiguousarray(array, dtype=np.float32)
    meta = {"source": str(path), "format": "itk", "warnings": []}
    return Volume(array=array, affine=sitk_to_ras_affine(image), meta=meta)


def volume_to_sitk(volume: Volume):
    """SimpleITK image of a 3D :class:`Volume`, geometry converted to LPS."""
    import SimpleITK as sitk

    if volume.array.ndim == 4:
        image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.transpose(3, 2, 1, 0)), isVector=True)
    else:
        image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.transpose(2, 1, 0)))
    set_sitk_geometry(image, volume.affine)
    return image


def write_itk(volume: Volume, path: str | Path, overwrite: bool = True) -> Path:
    """Write a :class:`Volume` as NRRD or MetaImage (single file), atomically."""
    import SimpleITK as sitk

    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        sitk.WriteImage(volume_to_sitk(volume), str(tmp), useCompression=True)
    return path
