"""The focused pass: only the windows that can hold a foreground label go through the network.

A sliding window over a CT spends most of its windows on air, couch and tissue far from any organ. The focused
pass places windows on MONAI's own grid (:mod:`medseg.model.windows`) and runs them in rounds:

1. a covering subset: per axis, each next window starts no later than where the last one ends (at overlap 0.5,
   every other window: about an eighth of a large grid), so every voxel is seen once;
2. every window of the grid that holds a voxel labelled foreground so far, or next to one, that has not run yet;
   again, until none is missing.

At the end every foreground voxel, and each of its neighbours, has been covered by every window of the grid that
covers it, with MONAI's Gaussian weights: its probabilities, and so its label and the labels interpolated from
it, are exactly the plain pass's. A voxel left background was background in every window that ran over it; the
windows skipped are those that found no foreground in a round. Background probabilities away from the
foreground average fewer windows than the plain pass's.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from medseg.model.device import autocast
from medseg.model.windows import gaussian_weight, window_batch, window_grid
from medseg.preprocess.half import to_float16

log = logging.getLogger(__name__)


def covering_starts(starts: list[int], patch: int) -> list[int]:
    """The fewest of an axis' window ``starts`` (sorted, the last one ending the axis) that still cover it: from
    the first, each next is the furthest start within one patch of the one before."""
    chosen = [0]
    while chosen[-1] < len(starts) - 1:
        reach = starts[chosen[-1]] + patch
        furthest = max(i for i, s in enumerate(starts) if s <= reach)
        chosen.append(max(furthest, chosen[-1] + 1))
    return [starts[i] for i in chosen]


@torch.no_grad()
def focused_probabilities(model, image: np.ndarray, patch_size, device: torch.device, dtype: torch.dtype | None,
                          overlap: float, batch: int) -> np.ndarray:
    """Softmax probabilities ``(K, x, y, z)`` float16 of ``image`` ``(C, x, y, z)``, class 0 background, from the
    windows that can reach the foreground (see the module's docstring).

    Args:
        model: A window forward, ``(B, C, *patch)`` -> ``(B, K, *patch)`` logits.
        batch: Windows per call of ``model``.
    """
    grid = window_grid(image, patch_size, overlap)
    patch = [int(p) for p in patch_size]
    starts = [sorted({w[a].start for w in grid.windows}) for a in range(3)]
    cover = [set(covering_starts(s, p)) for s, p in zip(starts, patch, strict=True)]
    windows = grid.windows
    todo = [i for i, w in enumerate(windows) if all(w[a].start in cover[a] for a in range(3))]
    weight = gaussian_weight(patch, device)
    sums, counts, ran, rounds = None, None, set(), 0
    while todo:
        rounds += 1
        for i in range(0, len(todo), batch):
            group = [windows[k] for k in todo[i:i + batch]]
            with autocast(device, dtype):
                logits = model(window_batch(grid.padded, group, device)).float()
            if sums is None:
                sums = logits.new_zeros((logits.shape[1], *grid.size))
                counts = logits.new_zeros((1, *grid.size))
            for w, values in zip(group, logits, strict=True):
                sums[(slice(None), *w)] += weight * values
                counts[(slice(None), *w)] += weight
        ran.update(todo)
        foreground = _foreground(sums)
        todo = [k for k, w in enumerate(windows) if k not in ran and bool(foreground[_grown(w)].any())]
    log.debug("focused pass: %d of %d windows in %d rounds", len(ran), len(windows), rounds)
    probs = torch.softmax(sums / counts.clamp_min(torch.finfo(torch.float32).tiny), dim=0)
    return to_float16(probs[(slice(None), *grid.keep)])


def _foreground(sums: torch.Tensor) -> torch.Tensor:
    """Voxels whose blended logits ``sums`` ``(K, x, y, z)`` argmax to a foreground class, as a ``(x, y, z)`` bool
    tensor. argmax picks the first of tied maxima, so "argmax is not 0" is "some class beats background": torch's
    argmax over the leading dim took 0.87 s on a 3x168x200x168 volume, this 0.013 s (Intel Xeon with AMX, 2 cores,
    2026-12-07), a quarter of the focused pass's time on a 294-window volume."""
    return sums[1:].amax(dim=0) > sums[0]


def _grown(window: tuple[slice, ...]) -> tuple[slice, ...]:
    """``window`` grown by one voxel on every side (clipped at 0; slicing clips the far end): a window whose grown
    box holds a foreground voxel is one that holds a foreground voxel or its 26-neighbour."""
    return tuple(slice(max(w.start - 1, 0), w.stop + 1) for w in window)
