"""Load a case's channels as one channel-first volume."""

from __future__ import annotations

import numpy as np

from medseg.data.dataset import Case
from medseg.errors import MedsegError
from medseg.io.geometry import grid_mismatch
from medseg.io.volume_io import read_volume
from medseg.types import Volume


def load_image(paths) -> Volume:
    """Read one or more channel files into a ``(C, X, Y, Z)`` volume on the first file's grid."""
    volumes = [read_volume(p) for p in paths]
    first = volumes[0]
    arrays = []
    for path, vol in zip(paths, volumes, strict=True):
        if mismatch := grid_mismatch(first.spatial_shape, first.affine, vol.spatial_shape, vol.affine):
            raise MedsegError(f"channel grid differs from the first channel: {'; '.join(mismatch)}", path)
        arrays.append(vol.array if vol.array.ndim == 4 else vol.array[None])
    warnings = [f"channel {c}: {w}" if len(volumes) > 1 else w
                for c, vol in enumerate(volumes) for w in vol.meta.get("warnings", [])]
    return Volume(np.concatenate(arrays, axis=0), first.affine, {**first.meta, "warnings": warnings})


def load_case(case: Case) -> tuple[Volume, Volume | None]:
    """Image ``(C, X, Y, Z)`` and label ``(X, Y, Z)`` (None when the case has none)."""
    image = load_image(case.images)
    if case.label is None:
        return image, None
    label = read_volume(case.label, label=True)
    if mismatch := grid_mismatch(image.spatial_shape, image.affine, label.spatial_shape, label.affine):
        raise MedsegError(f"label grid does not match the image: {'; '.join(mismatch)}", case.label)
    return image, label
