"""MONAI's sliding-window grid, made explicit: the zero padding, the window positions and the Gaussian weight
that ``monai.inferers.sliding_window_inference`` uses, for the passes that place windows themselves (the rolling
pass of :mod:`medseg.model.sliding`, the focused pass of :mod:`medseg.model.focused`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices


@dataclass(frozen=True)
class WindowGrid:
    """Where windows of ``patch`` voxels lie on a ``(C, x, y, z)`` image at an overlap.

    Attributes:
        padded: The image zero-padded to at least the patch on every axis (MONAI pads evenly, extra voxel after).
        pads: ``(before, after)`` voxels of padding per spatial axis.
        windows: Each window's spatial slices into ``padded``, in MONAI's order.
        keep: Slices of ``padded`` that hold the image.
    """

    padded: np.ndarray
    pads: tuple[tuple[int, int], ...]
    windows: tuple[tuple[slice, ...], ...]
    keep: tuple[slice, ...]

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(self.padded.shape[1:])


def window_grid(image: np.ndarray, patch_size, overlap: float) -> WindowGrid:
    """MONAI's grid for ``image`` ``(C, x, y, z)``: step ``int(patch * (1 - overlap))`` (at least 1) per axis, the
    last window of each axis clamped to the end."""
    patch = tuple(int(v) for v in patch_size)
    shape = image.shape[1:]
    pads = tuple((max(p - n, 0) // 2, max(p - n, 0) - max(p - n, 0) // 2) for n, p in zip(shape, patch, strict=True))
    padded = np.pad(image, [(0, 0), *pads]) if any(any(pad) for pad in pads) else image
    size = padded.shape[1:]
    interval = [p if n == p else max(int(p * (1 - overlap)), 1) for n, p in zip(size, patch, strict=True)]
    windows = tuple(tuple(w) for w in dense_patch_slices(size, patch, interval))
    keep = tuple(slice(before, before + n) for (before, _), n in zip(pads, shape, strict=True))
    return WindowGrid(padded, pads, windows, keep)


def gaussian_weight(patch_size, device: torch.device) -> torch.Tensor:
    """MONAI's Gaussian importance map for a window (sigma 0.125 of the patch), ``(x, y, z)`` float32."""
    return compute_importance_map(tuple(int(v) for v in patch_size), mode="gaussian", sigma_scale=0.125,
                                  device=device)


def window_batch(padded: np.ndarray, windows, device: torch.device) -> torch.Tensor:
    """The ``windows`` of ``padded`` as one ``(B, C, x, y, z)`` float32 batch on ``device``."""
    return torch.from_numpy(np.stack([np.ascontiguousarray(padded[(slice(None), *w)], np.float32)
                                      for w in windows])).to(device)
