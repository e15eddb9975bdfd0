"""Refuse to load what would not fit: check a header's size against available memory first."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError

# Leave this share of available memory for everything else (the model, resampled copies...).
_USABLE_FRACTION = 0.8


def available_memory_bytes() -> int:
    """Memory the process can still use: ``MemAvailable`` from /proc/meminfo, else free pages.

    The environment variable ``MEDSEG_MAX_MEMORY_GB`` caps it (useful on shared workstations).
    """
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 1 << 62
    cap = os.environ.get("MEDSEG_MAX_MEMORY_GB")
    if cap:
        avail = min(avail, int(float(cap) * (1 << 30)))
    return int(avail)


def check_fits(shape, bytes_per_voxel: int, path: str | Path, what: str = "image") -> None:
    """Raise :class:`MedsegError` when an array of ``shape`` would not fit in memory.

    Args:
        shape: Array shape as declared by the file header.
        bytes_per_voxel: Size of one element once loaded (e.g. 4 for float32).
        path: File named in the error.
        what: Word for the thing being loaded, used in the message.
    """
    dims = [int(s) for s in shape]
    if any(d <= 0 for d in dims):
        raise MedsegError(f"header declares an empty or negative {what} size {tuple(dims)}", Path(path))
    need = int(np.prod(np.array(dims, dtype=np.float64)) * bytes_per_voxel)
    avail = available_memory_bytes()
    if need > _USABLE_FRACTION * avail:
        raise MedsegError(
            f"header declares a {what} of {' x '.join(map(str, dims))} voxels ({need / 2**30:.1f} GiB once "
            f"loaded) but only {avail / 2**30:.1f} GiB of memory is available; refusing to load it",
            Path(path),
        )
