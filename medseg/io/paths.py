"""File names and kinds in one place: image suffixes, case stems, and which paths may be opened at all."""

from __future__ import annotations

import os
import stat
from pathlib import Path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
# Longest first, so ".nii.gz" wins over ".gz"-less ".nii" matching.
IMAGE_SUFFIXES = (".nii.gz", ".nii") + ITK_SUFFIXES
WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


def image_suffix(path: str | Path) -> str:
    """Lower-case image suffix, e.g. ``.nii.gz``; empty for a folder or unknown file."""
    name = Path(path).name.lower()
    return next((suffix for suffix in IMAGE_SUFFIXES if name.endswith(suffix)), "")


def image_stem(path: str | Path) -> str:
    """File name without its image suffix: ``case_001.nii.gz`` -> ``case_001``."""
    name, suffix = Path(path).name, image_suffix(path)
    return name[: -len(suffix)] if suffix else name


def regular_file_problem(path: str | Path) -> str:
    """Why ``path`` must not be opened (FIFO, socket, device, folder, missing), or ``""`` for a regular file.

    Follows links, as opening would, and never opens the file, so a FIFO cannot make a read hang.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if stat.S_ISREG(mode):
        return ""
    kinds = {stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device", stat.S_ISDIR: "a folder"}
    kind = next((name for test, name in kinds.items() if test(mode)), "not a regular file")
    return f"is {kind}, not a regular file; not opened"
