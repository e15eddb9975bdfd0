"""Crop to the bounding box of non-zero voxels (any channel), as nnU-Net does."""

from __future__ import annotations

import numpy as np


def nonzero_box(image: np.ndarray) -> list[tuple[int, int]]:
    """Bounding box ``[(start, stop)] * 3`` of voxels that are non-zero in any channel.

    Args:
        image: ``(C, X, Y, Z)`` array. An all-zero image gives the full box.
    """
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return [(0, n) for n in mask.shape]
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return box


def crop(array: np.ndarray, box: list[tuple[int, int]]) -> np.ndarray:
    """Crop the last three axes of ``array`` to ``box``."""
    index = (Ellipsis,) + tuple(slice(a, b) for a, b in box)
    return array[index]


def uncrop(array: np.ndarray, box: list[tuple[int, int]], shape, fill=0) -> np.ndarray:
    """Place ``array`` (cropped last three axes) back into a ``shape``-sized array filled with ``fill``
    (``array`` itself when the box is the whole of ``shape``)."""
    if tuple(array.shape[-3:]) == tuple(shape):
        return array
    out = np.full(tuple(array.shape[:-3]) + tuple(shape), fill, dtype=array.dtype)
    out[(Ellipsis,) + tuple(slice(a, b) for a, b in box)] = array
    return out
