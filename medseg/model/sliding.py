"""Sliding-window prediction of class probabilities with Gaussian blending (MONAI's inferer).

On CPU the network runs as an ahead-of-time compiled package when one is cached or the job is large enough to
pay for compiling it (:mod:`medseg.model.compiled`); otherwise eagerly. On CPU the batch per network call is
measured on the machine (:mod:`medseg.model.batching`: one window per call on a Zen 5 EPYC, two on a Zen 3
EPYC where one window per call ran 5x slower per window), whatever ``sw_batch_size`` says (that applies on
CUDA); when mirroring, the batch holds flips of one window. Torch threads stay at all cores (Zen 5, bf16 eager,
1 window: 1 thread 97-102 ms, 2 threads 54).

A window whose every voxel holds the same value (per channel) goes through the network once per value: CT air
below the plan's lower clip is one value after normalisation, so is an MR's zero background and MONAI's padding.
A convolutional network's output for such a window does not depend on where the window lies, so its logits are
reused for every other window of that value, and the result is the plain pass's (see :class:`_ConstantWindows`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from itertools import combinations

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from medseg.model.batching import windows_per_call
from medseg.model.compiled import compiled_forward
from medseg.model.device import autocast
from medseg.model.focused import focused_probabilities
from medseg.model.windows import gaussian_weight, window_batch, window_grid
from medseg.preprocess.half import to_float16

log = logging.getLogger(__name__)

# Above this many voxels, a volume is predicted in a rolling pass along its longest axis (see
# :func:`predict_probabilities`), so float32 buffers stay about K x (patch + step) slices whatever the scan size.
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
    mirror_axes: Sequence[int] = (0, 1, 2),
    reuse_constant: bool = True,
    focus: bool = False,
    compile: bool = True,
) -> np.ndarray:
    """Softmax probabilities ``(K, x, y, z)`` float16 for a preprocessed ``(C, x, y, z)`` image.

    MONAI's ``sliding_window_inference`` with Gaussian blending does the work. A volume over
    ``max_slab_voxels`` goes through a rolling pass instead: MONAI's own window grid and Gaussian weights, the
    windows in order along the longest axis, each predicted once, and float32 sums kept only for the slices
    windows still cover, so the result equals one whole-volume pass while memory stays bounded (for a
    512x512x600 CT with 96x96x64 windows at overlap 0.25: 637 window forwards, where the earlier slabs of MONAI
    calls recomputed the windows across slab bounds, 2.85x as many). Results are stored as float16
    (``K x voxels x 2`` bytes in all).

    Args:
        sw_batch_size: Windows per network call on CUDA (on CPU measured: see :func:`call_batches`).
        mirror: Test-time augmentation: each window's logits are averaged over its flips along ``mirror_axes``
            (see :func:`mirror_flips`).
        max_slab_voxels: Volumes over this many voxels take the rolling pass.
        mirror_axes: Spatial axes (0-2 of ``x, y, z``) that mirroring flips: the plan's ``mirror_axes``.
        reuse_constant: Windows that hold one value per channel go through the network once per value
            (:class:`_ConstantWindows`); False sends every window through it.
        focus: Only the windows that can reach the foreground (class 0 is background) go through the network
            (:mod:`medseg.model.focused`: the plain pass's labels, fewer windows); volumes that take the rolling
            pass run every window.
        compile: On CPU, a compiled package of the network may run the windows
            (:func:`medseg.model.compiled.compiled_forward`); False keeps the eager network.
    """
    shape = image.shape[1:]
    axis = int(np.argmax(shape))
    net.eval()
    flips = mirror_flips(mirror_axes) if mirror else [()]
    forwards = window_count(shape, patch_size, overlap) * len(flips)
    batch, per_call = call_batches(net, device, dtype, (image.shape[0], *patch_size), sw_batch_size, len(flips))
    compiled = compiled_forward(net, device, dtype, (batch * per_call, image.shape[0], *patch_size),
                                forwards) if compile else None
    forward = net if compiled is None else _exact_batch(compiled, batch * per_call)
    model = _mirrored(forward, flips, per_call) if mirror else forward
    if reuse_constant:
        model = _ConstantWindows(model)
    if int(np.prod(shape)) > max_slab_voxels and shape[axis] > patch_size[axis]:
        probs = _rolling_pass(model, image, patch_size, axis, device, dtype, overlap, batch)
    elif focus:
        probs = focused_probabilities(model, image, patch_size, device, dtype, overlap, batch)
    else:
        probs = to_float16(_predict_block(model, image, patch_size, device, dtype, overlap, batch))
    if reuse_constant:
        log.debug("%d of %d windows held one value per channel: %d network calls for them",
                  model.reused + model.computed, model.windows, model.computed)
    return probs


class _ConstantWindows:
    """A window forward that sends a batch whose every window is constant (one value per channel) through
    ``model`` only for values not seen before, and reuses the logits it got for them.

    Exact, not an approximation: a window of one value looks the same wherever it lies, and so do its logits.
    Batches with any non-constant window go through ``model`` whole.

    Attributes:
        windows: Windows seen; computed: constant windows sent through ``model``; reused: constant windows
            answered from the cache.
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor]):
        self.model = model
        self.cache: dict[tuple[float, ...], torch.Tensor] = {}
        self.windows = self.computed = self.reused = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        flat = x.flatten(2)
        low = flat.amin(dim=2)
        if not bool((low == flat.amax(dim=2)).all()):
            return self.model(x)
        keys = [tuple(row) for row in low.tolist()]
        for i, key in enumerate(keys):
            if key in self.cache:
                self.reused += 1
            else:
                self.cache[key] = self.model(x[i:i + 1])[0]
                self.computed += 1
        return torch.stack([self.cache[key] for key in keys])


def _rolling_pass(model, image: np.ndarray, patch_size, axis: int, device, dtype, overlap: float,
                  batch: int) -> np.ndarray:
    """MONAI's Gaussian-blended sliding window computed window row by window row along ``axis``.

    The image is zero-padded to the patch size as MONAI pads it; each slice along ``axis`` is normalised,
    soft-maxed and stored as soon as no later window covers it.
    """
    grid = window_grid(image, patch_size, overlap)
    padded, pads, size, keep = grid.padded, grid.pads, grid.size, grid.keep
    shape = image.shape[1:]
    windows = sorted(grid.windows, key=lambda w: w[axis].start)
    weight = gaussian_weight(patch_size, device)
    out, sums, counts, low = None, None, None, 0  # sums/counts cover padded slices [low, low + their length)
    for i in range(0, len(windows), batch):
        group = windows[i:i + batch]
        x = window_batch(padded, group, device)
        with autocast(device, dtype):
            logits = model(x).float()
        if out is None:
            out = np.empty((logits.shape[1], *shape), dtype=np.float16)
            sums = logits.new_zeros((logits.shape[1], *_with(size, axis, 0)))
            counts = logits.new_zeros((1, *_with(size, axis, 0)))
        end = max(w[axis].stop for w in group) - low
        if end > sums.shape[axis + 1]:  # grow the buffers to the newest windows' far end
            grow = end - sums.shape[axis + 1]
            sums = torch.cat([sums, sums.new_zeros((sums.shape[0], *_with(size, axis, grow)))], axis + 1)
            counts = torch.cat([counts, counts.new_zeros((1, *_with(size, axis, grow)))], axis + 1)
        for w, values in zip(group, logits, strict=True):
            local = _with(w, axis, slice(w[axis].start - low, w[axis].stop - low))
            sums[(slice(None), *local)] += weight * values
            counts[(slice(None), *local)] += weight
        nxt = windows[i + batch][axis].start if i + batch < len(windows) else size[axis]
        if nxt > low:  # slices before the next window are complete
            done = nxt - low
            probs = torch.softmax(sums.narrow(axis + 1, 0, done) / counts.narrow(axis + 1, 0, done), dim=0)
            rows = _with(keep, axis, slice(None))
            target = _with((slice(None),) * len(shape), axis, slice(low - pads[axis][0], nxt - pads[axis][0]))
            out[(slice(None), *target)] = to_float16(probs[(slice(None), *rows)])
            sums, counts = sums.narrow(axis + 1, done, sums.shape[axis + 1] - done), counts.narrow(
                axis + 1, done, counts.shape[axis + 1] - done)
            low = nxt
    return out


def _with(items, axis: int, value) -> tuple:
    """``items`` as a tuple with entry ``axis`` replaced by ``value``."""
    return (*items[:axis], value, *items[axis + 1:])


def call_batches(net: torch.nn.Module, device: torch.device, dtype: torch.dtype | None, window: tuple[int, ...],
                 sw_batch_size: int, flips: int = 1) -> tuple[int, int]:
    """``(windows, flips)`` per network call for ``window`` ``(C, x, y, z)``: on CPU the measured best batch
    (:func:`medseg.model.batching.windows_per_call`) holds flips of one window when mirroring (``flips`` > 1;
    both are powers of two), else windows; on CUDA ``sw_batch_size`` windows, one flip at a time."""
    best = windows_per_call(net, device, dtype, window, sw_batch_size)
    if flips > 1 and device.type == "cpu":
        return 1, math.gcd(best, flips)
    return best, 1


def _exact_batch(forward: Callable[[torch.Tensor], torch.Tensor], size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward`` (a compiled package, made for batches of exactly ``size``) on any batch up to ``size``: the
    batch is zero-padded and the padding's logits dropped."""

    def call(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == size:
            return forward(x)
        return forward(torch.cat([x, x.new_zeros((size - x.shape[0], *x.shape[1:]))]))[:x.shape[0]]

    return call


def window_count(shape, patch_size, overlap: float) -> int:
    """Windows of one whole-volume pass (MONAI's grid: step ``int(patch * (1 - overlap))``, last window clamped)."""
    count = 1
    for n, p in zip(shape, patch_size, strict=True):
        step = max(int(p * (1 - overlap)), 1)
        count *= 1 if n <= p else -(-(n - p) // step) + 1
    return count


def mirror_flips(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the spatial ``mirror_axes`` (0-2), the empty one (no flip) first: ``2 ** len(axes)``
    network forwards per window when mirroring (8 for all axes, 4 for two)."""
    axes = sorted({int(a) for a in mirror_axes})
    return [flip for n in range(len(axes) + 1) for flip in combinations(axes, n)]


def _mirrored(forward: Callable[[torch.Tensor], torch.Tensor], flips: list[tuple[int, ...]],
              per_call: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
    """Average of ``forward``'s logits over ``flips`` (spatial axes, see :func:`mirror_flips`) of each
    ``(B, C, x, y, z)`` window, each flip undone on its logits (nnU-Net's mirroring); ``per_call`` flips go
    through ``forward`` together, as one batch of ``per_call * B``."""

    def mirrored(x: torch.Tensor) -> torch.Tensor:
        total, n = None, x.shape[0]
        for i in range(0, len(flips), per_call):
            group = flips[i:i + per_call]
            out = forward(torch.cat([torch.flip(x, [a + 2 for a in f]) if f else x for f in group])).float()
            for j, flip in enumerate(group):
                dims = [a + 2 for a in flip]
                logits = torch.flip(out[j * n:(j + 1) * n], dims) if dims else out[j * n:(j + 1) * n]
                total = logits if total is None else total + logits
        return total / len(flips)

    return mirrored


def _predict_block(model, image, patch_size, device, dtype, overlap, sw_batch_size) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
    with autocast(device, dtype):
        logits = sliding_window_inference(x, list(patch_size), sw_batch_size, model, overlap=overlap,
                                          mode="gaussian")
    return torch.softmax(logits.float(), dim=1)[0]
