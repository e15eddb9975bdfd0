"""Sliding-window prediction of class probabilities with Gaussian blending (MONAI's inferer).

On CPU the network runs as an ahead-of-time compiled package when one is cached or the job is large enough to
pay for compiling it (:mod:`medseg.model.compiled`); otherwise eagerly. On CPU windows also go through the
network one at a time, whatever ``sw_batch_size`` says (that applies on CUDA): on a 2-core AMD EPYC (Zen 5,
AVX512-BF16), torch 2.13, DynUNet 32-256, 40x56x40 windows, 2026-11-26, load ~1.3, interleaved, ms per window
for 1 / 2 windows per call: bf16 eager 52 / 64, bf16 compiled 41 / 47-49 (4: 54, 8: 55), fp32 eager 122 / 130,
fp32 compiled 84 / 88. Torch threads stay at all cores (bf16 eager, 1 window: 1 thread 97-102 ms, 2 threads 54).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from medseg.model.compiled import compiled_forward
from medseg.model.device import autocast

# Above this many voxels (with context), the volume is predicted in slabs along its longest axis, so MONAI's
# float32 aggregation buffers stay bounded (~K x 32 M x 4 bytes) whatever the scan size.
MAX_SLAB_VOXELS = 2**25


@torch.no_grad()
def predict_probabilities(
    net: torch.nn.Module,
    image: np.ndarray,
    patch_size,
    device: torch.device,
    dtype: torch.dtype | None = None,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    mirror: bool = False,
    max_slab_voxels: int = MAX_SLAB_VOXELS,
) -> np.ndarray:
    """Softmax probabilities ``(K, x, y, z)`` float16 for a preprocessed ``(C, x, y, z)`` image.

    MONAI's ``sliding_window_inference`` with Gaussian blending does the work. Large volumes are cut into
    slabs along their longest axis whose bounds sit on MONAI's own window grid and include every window
    that touches the kept voxels, so the result equals one whole-volume pass while MONAI's float32
    buffers stay slab-sized. Results are stored as float16 (``K x voxels x 2`` bytes in all).

    Args:
        sw_batch_size: Windows per network call on CUDA (on CPU one, measured faster: see the module docstring).
        mirror: Test-time augmentation: each window's logits are averaged over the 8 axis flips.
        max_slab_voxels: Slab size limit (voxels, context included).
    """
    shape = image.shape[1:]
    axis = int(np.argmax(shape))
    n, p = int(shape[axis]), int(patch_size[axis])
    plane = int(np.prod(shape)) // n
    step = max(int(p * (1 - overlap)), 1)  # MONAI's scan interval along the axis
    length = max(step, (max_slab_voxels // max(plane, 1) - 2 * p) // step * step)
    net.eval()
    forwards = window_count(shape, patch_size, overlap) * (8 if mirror else 1)
    batch = window_batch(device, sw_batch_size)
    forward = compiled_forward(net, device, dtype, (batch, image.shape[0], *patch_size), forwards) or net
    model = _mirrored(forward) if mirror else forward
    out = None
    for s0 in range(0, n, length):
        s1 = min(s0 + length, n)
        h0, h1 = _slab_bounds(s0, s1, n, p, step)
        block = image[(slice(None),) * (axis + 1) + (slice(h0, h1),)]
        probs = _predict_block(model, block, patch_size, device, dtype, overlap, batch)
        if out is None:
            out = np.empty((probs.shape[0], *shape), dtype=np.float16)
        out[(slice(None),) * (axis + 1) + (slice(s0, s1),)] = probs[(slice(None),) * (axis + 1)
                                                                    + (slice(s0 - h0, s1 - h0),)]
    return out


def _slab_bounds(s0: int, s1: int, n: int, p: int, step: int) -> tuple[int, int]:
    """Slab ``[h0, h1)`` whose windows (MONAI's grid: multiples of ``step``, last clamped to ``n - p``)
    are exactly the whole-volume windows touching ``[s0, s1)``."""
    if n <= p:
        return 0, n
    h0 = step * (max(s0 - p + 1, 0) // step)
    last = step * ((s1 - 1) // step)
    h1 = last + p
    if h1 >= n or s1 > n - p:
        h1 = n
    return h0, h1


def window_batch(device: torch.device, sw_batch_size: int) -> int:
    """Windows per network call: one on CPU (measured faster, see the module docstring), else ``sw_batch_size``."""
    return 1 if device.type == "cpu" else sw_batch_size


def window_count(shape, patch_size, overlap: float) -> int:
    """Windows of one whole-volume pass (MONAI's grid: step ``int(patch * (1 - overlap))``, last window clamped)."""
    count = 1
    for n, p in zip(shape, patch_size, strict=True):
        step = max(int(p * (1 - overlap)), 1)
        count *= 1 if n <= p else -(-(n - p) // step) + 1
    return count


def _mirrored(forward: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Average of ``forward``'s logits over the 8 flips of each window (nnU-Net's mirroring)."""
    flips = [(2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]

    def mirrored(x: torch.Tensor) -> torch.Tensor:
        total = forward(x).float()
        for axes in flips:
            total += torch.flip(forward(torch.flip(x, axes)).float(), axes)
        return total / (len(flips) + 1)

    return mirrored


def _predict_block(model, image, patch_size, device, dtype, overlap, sw_batch_size) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
    with autocast(device, dtype):
        logits = sliding_window_inference(x, list(patch_size), sw_batch_size, model, overlap=overlap,
                                          mode="gaussian")
    return torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
