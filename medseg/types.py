"""Small typed values that cross stage boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class Volume:
    """A scan or a label map on a grid in patient space.

    Attributes:
        array: Voxel data, shape ``(X, Y, Z)`` or channel-first ``(C, X, Y, Z)``. Index ``(i, j, k)``
            is the voxel whose centre lies at ``affine @ (i, j, k, 1)``.
        affine: 4x4 float64 matrix from voxel indices to RAS+ world coordinates in mm (the NIfTI
            convention). It is the single source of geometry: spacing, origin and direction derive
            from it. DICOM's LPS is converted in :mod:`medseg.io.geometry` and nowhere else.
        meta: Non-identifying facts about the source: ``modality``, ``source`` (path),
            ``series_uid``, ``description``... Never patient names, IDs or dates.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {affine.shape}")
        if self.array.ndim not in (3, 4):
            raise ValueError(f"array must be 3D or channel-first 4D, got shape {self.array.shape}")
        object.__setattr__(self, "affine", affine)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """Grid size ``(X, Y, Z)`` in voxels."""
        return tuple(int(s) for s in self.array.shape[-3:])  # type: ignore[return-value]

    @property
    def num_channels(self) -> int:
        """1 for a 3D array, ``C`` for a channel-first 4D array."""
        return 1 if self.array.ndim == 3 else int(self.array.shape[0])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along the array axes in mm."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore

    @property
    def origin(self) -> np.ndarray:
        """World position (RAS, mm) of the centre of voxel ``(0, 0, 0)``."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix of unit column vectors: the RAS direction of each array axis."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    def with_array(self, array: np.ndarray, **meta: Any) -> Volume:
        """Same grid, new voxel data (e.g. a label map for this scan)."""
        return replace(self, array=array, meta={**self.meta, **meta})


    def same_grid(self, other: Volume, atol_mm: float = 1e-3) -> bool:
        """True when both volumes have the same spatial shape and affine (to ``atol_mm``); docs/qa_review.ipynb
        uses it to pair a prediction with its ground truth."""
        return self.spatial_shape == other.spatial_shape and bool(
            np.allclose(self.affine, other.affine, atol=atol_mm, rtol=0)
        )
