"""Canonical orientation: reorder and flip array axes so that they run closest to R, A and S.

How a scan is stored is arbitrary (an LPS NIfTI, a sagittal DICOM series, axes in any order), while
preprocessing works per array axis (crop box, spacing, separate-z axis, patch size) and a network only
sees arrays. So every image and label map is first put into one canonical orientation: array axis 0
runs closest to Right, 1 to Anterior, 2 to Superior (nibabel's ``as_closest_canonical``). This is an
axis permutation plus flips, never an interpolation, so it is exact and undone exactly; an oblique
grid stays oblique (each axis goes to its nearest world axis).

An orientation ``ornt`` is nibabel's ``(3, 2)`` array: row ``i`` is ``(new axis, +1 or -1 for a
flip)`` for array axis ``i``.
"""

from __future__ import annotations

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from medseg.types import Volume

IDENTITY = np.array([[0, 1], [1, 1], [2, 1]])


def canonical_ornt(affine: np.ndarray) -> np.ndarray:
    """Orientation ``(3, 2)`` that takes the array axes of a grid with this 4x4 RAS affine to closest RAS."""
    return io_orientation(np.asarray(affine, float)).astype(int)


def inverse_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation ``(3, 2)`` that undoes ``ornt``."""
    return ornt_transform(IDENTITY, np.asarray(ornt)).astype(int)


def reorient_array(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Permute and flip the spatial axes of an ``(X, Y, Z)`` or channel-first ``(C, X, Y, Z)`` array.

    Returns:
        A view of ``array`` (no copy; negative strides where an axis is flipped), spatial axes in the
        new order, channels still first.
    """
    ornt = np.asarray(ornt)
    if array.ndim == 3:
        return apply_orientation(array, ornt)
    moved = apply_orientation(np.moveaxis(array, 0, -1), ornt)  # nibabel reorients the leading axes
    return np.moveaxis(moved, -1, 0)


def reoriented_affine(affine: np.ndarray, ornt: np.ndarray, shape) -> np.ndarray:
    """4x4 RAS affine of the grid after ``reorient_array``, for a grid of spatial ``shape`` (X, Y, Z)
    before it: every voxel keeps its position in world space (mm)."""
    return np.asarray(affine, float) @ inv_ornt_aff(np.asarray(ornt), tuple(shape))


def reoriented_shape(shape, ornt: np.ndarray) -> tuple[int, int, int]:
    """Spatial shape (X, Y, Z) after ``reorient_array`` of a grid of spatial ``shape``."""
    out = [0, 0, 0]
    for axis, (new_axis, _) in enumerate(np.asarray(ornt, int)):
        out[new_axis] = int(shape[axis])
    return tuple(out)  # type: ignore[return-value]


def to_canonical(volume: Volume, ornt: np.ndarray | None = None) -> Volume:
    """``volume`` (``(X, Y, Z)`` or ``(C, X, Y, Z)``) in closest-RAS orientation, same voxels and world
    positions. The array is C-contiguous (copied when reordered), so that sums and other reductions
    run in the same order, and give bit-identical results, whatever the storage order.

    Args:
        ornt: Orientation to apply; default: the volume's own :func:`canonical_ornt`. Pass the image's
            to reorient a label map on the same grid identically.
    """
    ornt = canonical_ornt(volume.affine) if ornt is None else np.asarray(ornt)
    affine = reoriented_affine(volume.affine, ornt, volume.spatial_shape)
    return Volume(np.ascontiguousarray(reorient_array(volume.array, ornt)), affine, dict(volume.meta))


def from_canonical(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Undo ``reorient_array(., ornt)`` on an ``(X, Y, Z)`` or ``(C, X, Y, Z)`` array in canonical order."""
    return reorient_array(array, inverse_ornt(ornt))
