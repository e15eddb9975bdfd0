"""Training augmentation from MONAI transforms, applied to image and label patches together."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai import transforms as T

from medseg.config import AugmentConfig


def build_augmentation(cfg: AugmentConfig, seed: int = 0, mirror_axes: Sequence[int] = (0, 1, 2)):
    """A MONAI ``Compose`` over ``{"image": (C, X, Y, Z), "label": (1, X, Y, Z)}``; labels use nearest only.

    With ``cfg.flip``, each axis of ``mirror_axes`` (spatial, 0-2: the plan's ``mirror_axes``) is flipped with
    probability 0.5; the others never are, so left/right labels keep their side.
    """
    keys = ["image", "label"]
    steps = []
    if cfg.affine_prob > 0:
        angle = np.radians(cfg.rotate_deg)
        low, high = cfg.scale
        steps.append(T.RandAffined(keys, prob=cfg.affine_prob, rotate_range=(angle, angle, angle),
                                   scale_range=(low - 1, high - 1), mode=("bilinear", "nearest"),
                                   padding_mode="zeros"))
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
