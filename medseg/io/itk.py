"""NRRD and MetaImage (.mha/.mhd) read and write through SimpleITK; geometry converted via geometry.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import MedsegError, one_line
from medseg.io.atomic import atomic_path
from medseg.io.geometry import set_sitk_geometry, sitk_to_ras_affine
from medseg.io.memory import check_fits
from medseg.io.nifti import to_label_array
from medseg.io.paths import regular_file_problem
from medseg.types import Volume

# Imported inside functions, measured on import after numpy: SimpleITK 0.16 s. `import medseg` (so `medseg --help`)
# loads this module; only the calls that need them pay.

# Headers are text at the start of the file; their data-file field lies within this many bytes.
_HEADER_BYTES = 65536


def read_itk(path: str | Path, label: bool = False) -> Volume:
    """Read an NRRD or MetaImage file into a :class:`Volume` (array ``(X, Y, Z)`` or ``(C, X, Y, Z)``)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise MedsegError("file not found", path)
    check_data_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise MedsegError(f"not a readable image header ({one_line(exc)})", path) from None
    size = list(reader.GetSize()) + [reader.GetNumberOfComponents()]
    check_fits(size, 8, path)
    if reader.GetDimension() not in (2, 3):
        raise MedsegError(f"unsupported dimension {reader.GetDimension()} (need a 3D image)", path)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise MedsegError(f"pixel data cannot be read ({one_line(exc)})", path) from None
    if image.GetDimension() == 2:
        image = sitk.JoinSeries([image])
    array = sitk.GetArrayFromImage(image)  # (z, y, x) or (z, y, x, c)
    array = array.transpose(2, 1, 0) if array.ndim == 3 else array.transpose(3, 2, 1, 0)
    array = to_label_array(array, path) if label else np.ascontiguousarray(array, dtype=np.float32)
    meta = {"source": str(path), "format": "itk", "warnings": []}
    return Volume(array=array, affine=sitk_to_ras_affine(image), meta=meta)


def check_data_file(path: Path) -> None:
    """Refuse a header whose pixel data lies anywhere but inside the file or beside it.

    ``.mha`` must say ``ElementDataFile = LOCAL``; a ``.mhd`` or a detached NRRD (``data file:``) may name
    one regular file in the header's own folder: no absolute path, no ``..``, no link leaving the folder,
    no file lists or patterns. The named file is never opened before this check passes.

    Raises:
        MedsegError: one line saying why; the named file's content never reaches the message.
    """
    name = _data_file_field(path)
    if name is None or name.upper() == "LOCAL" and not path.name.lower().endswith((".nhdr", ".nrrd")):
        return
    if path.name.lower().endswith(".mha"):
        raise MedsegError("an .mha file must hold its own pixel data (ElementDataFile = LOCAL), but its header "
                          "names another file; refused", path)
    if name.upper().startswith("LIST") or "%" in name:
        raise MedsegError("header names a list or pattern of data files; only one data file beside the header "
                          "is read", path)
    if Path(name).is_absolute() or "/" in name or "\\" in name or name in (".", ".."):
        raise MedsegError("header names a data file outside its own folder; only a file beside the header is read",
                          path)
    target = path.parent / name
    if target.resolve().parent != path.parent.resolve():
        raise MedsegError("header's data file is a link leading outside the header's folder; refused", path)
    if problem := regular_file_problem(target):
        raise MedsegError(f"header's data file {problem}", path)


def _data_file_field(path: Path) -> str | None:
    """The data-file name a MetaImage or NRRD header gives (None when it gives none)."""
    if problem := regular_file_problem(path):
        raise MedsegError(problem, path)
    with open(path, "rb") as fh:
        head = fh.read(_HEADER_BYTES)
    nrrd = head.startswith(b"NRRD")
    if nrrd:
        head = head.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    for raw in head.split(b"\n"):
        line = raw.decode("latin-1").strip()
        key, sep, value = line.partition(":" if nrrd else "=")
        if not sep:
            continue
        key = key.strip().lower()
        if (nrrd and key in ("data file", "datafile")) or (not nrrd and key == "elementdatafile"):
            return value.strip()
    return None


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
