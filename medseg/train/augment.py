"""Training augmentation from MONAI transforms, applied to image and label patches together.

Spatial augmentation does not pull empty corners into the patch: the sampler extracts a larger source block
(:func:`source_size`, the extent any drawn rotation and scaling of the patch can reach) and ``RandAffined``
samples the final patch from it, so the corners hold image, not zero padding (as nnU-Net does). A patch not
drawn for the affine transform is the source's centre, the patch the sampler would have cut without it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from monai import transforms as T
from monai.transforms.utils import create_rotate

from medseg.config import AugmentConfig


def source_size(patch_size: Sequence[int], cfg: AugmentConfig) -> tuple[int, ...]:
    """The block ``(sx, sy, sz)`` voxels to extract around a ``patch_size`` patch so that every rotation (up to
    ``cfg.rotate_deg`` about each axis) and scaling (up to ``max(cfg.scale)``) of the patch's sampling grid
    stays inside it; the patch itself when no affine transform is drawn. Each axis grows by an even number of
    voxels, so the patch is the block's exact centre."""
    patch = np.asarray(patch_size, float)
    if cfg.affine_prob <= 0:
        return tuple(int(p) for p in patch_size)
    angles = np.radians(np.linspace(-cfg.rotate_deg, cfg.rotate_deg, 9))
    half = (patch - 1) / 2 * max(cfg.scale)
    reach = np.zeros(3)
    for radians in itertools.product(angles, repeat=3):  # the grid's corners under every drawable rotation
        reach = np.maximum(reach, np.abs(create_rotate(3, radians)[:3, :3]) @ half)
    margin = np.maximum(np.ceil(reach - (patch - 1) / 2), 0).astype(int) + 1  # +1: the bilinear neighbour
    return tuple(int(p) + 2 * int(m) for p, m in zip(patch_size, margin, strict=True))


def build_augmentation(cfg: AugmentConfig, seed: int = 0, mirror_axes: Sequence[int] = (0, 1, 2),
                       patch_size: Sequence[int] | None = None):
    """A MONAI ``Compose`` over ``{"image": (C, *source), "label": (1, *source)}`` giving ``patch_size``
    samples (``source``: :func:`source_size`; without ``patch_size``, samples keep the input's size);
    labels use nearest only.

    With ``cfg.flip``, each axis of ``mirror_axes`` (spatial, 0-2: the plan's ``mirror_axes``) is flipped with
    probability 0.5; the others never are, so left/right labels keep their side.
    """
    keys = ["image", "label"]
    steps = []
    if cfg.affine_prob > 0:
        angle = np.radians(cfg.rotate_deg)
        low, high = cfg.scale
        affine = T.RandAffined(keys, prob=1.0 if patch_size else cfg.affine_prob, rotate_range=(angle,) * 3,
                               scale_range=(low - 1, high - 1), mode=("bilinear", "nearest"),
                               padding_mode="zeros", spatial_size=patch_size)
        # with patch_size: drawn, the patch is sampled from the source; not drawn, it is the source's exact centre
        steps.append(T.OneOf([affine, T.CenterSpatialCropd(keys, patch_size)],
                             weights=[cfg.affine_prob, 1 - cfg.affine_prob]) if patch_size else affine)
    if cfg.elastic:
        steps.append(T.Rand3DElasticd(keys, sigma_range=(5, 8), magnitude_range=(50, 150), prob=0.1,
                                      mode=("bilinear", "nearest"), padding_mode="zeros"))
    if cfg.noise_prob > 0:
        steps.append(T.RandGaussianNoised("image", prob=cfg.noise_prob, std=0.1))
    if cfg.blur_prob > 0:
        steps.append(T.RandGaussianSmoothd("image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0),
                                           prob=cfg.blur_prob))
    if cfg.contrast_prob > 0:
        steps.append(T.RandScaleIntensityd("image", factors=0.25, prob=cfg.contrast_prob))
        steps.append(T.RandStdShiftIntensityd("image", factors=0.1, prob=cfg.contrast_prob))
    if cfg.lowres_prob > 0:
        steps.append(T.RandSimulateLowResolutiond("image", prob=cfg.lowres_prob, zoom_range=(0.5, 1.0)))
    if cfg.gamma_prob > 0:
        steps.append(T.RandAdjustContrastd("image", prob=cfg.gamma_prob, gamma=(0.7, 1.5)))
    if cfg.flip:
        steps += [T.RandFlipd(keys, prob=0.5, spatial_axis=int(a)) for a in mirror_axes]
    compose = T.Compose(steps)
    compose.set_random_state(seed=seed)
    return compose


def augment_batch(compose, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``compose`` to each sample of a ``(B, C, ...)`` / ``(B, 1, ...)`` batch."""
    out_i, out_l = [], []
    for img, lab in zip(images, labels, strict=True):
        sample = compose({"image": img, "label": lab.astype(np.float32)})
        out_i.append(np.asarray(sample["image"], dtype=np.float32))
        out_l.append(np.rint(np.asarray(sample["label"])).astype(np.int64))
    return np.stack(out_i), np.stack(out_l)
