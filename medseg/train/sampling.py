"""Patch sampling with foreground oversampling spread over classes (rare small classes are seen often).

Labels here are class indices ``0..K-1`` (as :func:`medseg.train.data.prepare_cases` caches them), not
label values: the classes to oversample are ``1..K-1`` whatever the dataset's label values are.
With partial annotations a case's uncontoured classes are never oversampled in it, and every batch carries
each patch's contoured-class mask for the marginal loss (:mod:`medseg.train.losses`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

_LOCATIONS_PER_CLASS = 5000


def class_locations(label: np.ndarray, classes, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Up to 5,000 random voxel coordinates ``(n, 3)`` of each class index in ``classes`` present in ``label``."""
    out = {}
    for k in classes:
        coords = np.argwhere(label == k)
        if len(coords):
            if len(coords) > _LOCATIONS_PER_CLASS:
                coords = coords[rng.choice(len(coords), _LOCATIONS_PER_CLASS, replace=False)]
            out[int(k)] = coords.astype(np.int32)
    return out


class Batch(NamedTuple):
    """One batch of patches.

    Attributes:
        images: ``(B, C, *source)`` float32 (``source``: the sampler's ``source_size``, the patch by default).
        labels: ``(B, 1, *source)`` class indices.
        contoured: ``(B, K)`` bool, the classes each patch's case contoured (background always).
        centred: The foreground class each patch was centred on, None for a patch centred anywhere.
    """

    images: np.ndarray
    labels: np.ndarray
    contoured: np.ndarray
    centred: list[int | None]


class PatchSampler:
    """Draw training patches from preprocessed cases held in memory.

    In each batch the first ``ceil(foreground_fraction * batch)`` patches are centred on a foreground
    voxel: a class is chosen uniformly among the foreground classes (not by voxel count), then a case
    that contoured it and contains it, then one of its voxels. The rest are centred anywhere.

    Args:
        images: Per case ``(C, x, y, z)`` float32 arrays.
        labels: Per case ``(x, y, z)`` integer arrays of class indices.
        patch_size: ``(px, py, pz)`` voxels; smaller images are zero-padded.
        classes: Foreground class indices to oversample (``1..K-1`` for a ``K``-class plan).
        contoured: Per case a ``(K,)`` bool array of the classes it contoured
            (:func:`medseg.train.data.contoured_classes`); None when every case contoured every class
            (then ``K = max(classes) + 1``).
        source_size: ``(sx, sy, sz)`` voxels, each at least the patch's and larger by an even number: the
            block cut around each patch (its exact centre) for spatial augmentation to sample from
            (:func:`medseg.train.augment.source_size`); None: the patch itself.
    """

    def __init__(self, images, labels, patch_size, classes, foreground_fraction: float = 0.33, seed: int = 0,
                 contoured: list[np.ndarray] | None = None, source_size=None):
        self.images, self.labels = images, labels
        self.patch = np.asarray(patch_size, int)
        self.source = self.patch if source_size is None else np.asarray(source_size, int)
        if np.any(self.source < self.patch) or np.any((self.source - self.patch) % 2):
            raise ValueError(f"source size {tuple(self.source)} must exceed patch {tuple(self.patch)} evenly")
        self.fg_fraction = float(foreground_fraction)
        self.rng = np.random.default_rng(seed)
        if contoured is None:
            contoured = [np.ones(max(classes, default=0) + 1, bool)] * len(labels)
        self.contoured = [np.asarray(m, bool) for m in contoured]
        self.locations = [class_locations(lab, [k for k in classes if mask[k]], self.rng)
                          for lab, mask in zip(labels, self.contoured, strict=True)]
        self.classes = sorted({k for loc in self.locations for k in loc})
        self.cases_with = {k: [i for i, loc in enumerate(self.locations) if k in loc] for k in self.classes}

    def batch(self, batch_size: int) -> Batch:
        """``batch_size`` patches, the first ``ceil(foreground_fraction * batch_size)`` centred on foreground."""
        forced = int(np.ceil(self.fg_fraction * batch_size)) if self.classes else 0
        imgs, labs, masks, chosen = [], [], [], []
        for b in range(batch_size):
            if b < forced:
                k = int(self.rng.choice(self.classes))
                case = int(self.rng.choice(self.cases_with[k]))
                locs = self.locations[case][k]
                centre = locs[self.rng.integers(len(locs))]
            else:
                k, case = None, int(self.rng.integers(len(self.images)))
                centre = np.array([self.rng.integers(n) for n in self.labels[case].shape])
            img, lab = self.extract(case, centre)
            imgs.append(img)
            labs.append(lab[None])
            masks.append(self.contoured[case])
            chosen.append(k)
        return Batch(np.stack(imgs), np.stack(labs), np.stack(masks), chosen)

    def extract(self, case: int, centre) -> tuple[np.ndarray, np.ndarray]:
        """The ``source_size`` block around the patch of ``patch_size`` centred (as far as the image allows) on
        ``centre``; zero-padded where it leaves the image."""
        image, label = self.images[case], self.labels[case]
        shape = np.asarray(label.shape)
        start = np.asarray(centre) - self.patch // 2
        start = np.minimum(np.maximum(start, np.minimum(0, shape - self.patch)), np.maximum(shape - self.patch, 0))
        start -= (self.source - self.patch) // 2
        out_img = np.zeros((image.shape[0], *self.source), np.float32)
        out_lab = np.zeros(tuple(self.source), label.dtype)
        src = tuple(slice(max(s, 0), max(min(s + p, n), max(s, 0)))
                    for s, p, n in zip(start, self.source, shape, strict=True))
        dst = tuple(slice(max(-s, 0), max(-s, 0) + (sl.stop - sl.start)) for s, sl in zip(start, src, strict=True))
        out_img[(slice(None),) + dst] = image[(slice(None),) + src]
        out_lab[dst] = label[src]
        return out_img, out_lab
