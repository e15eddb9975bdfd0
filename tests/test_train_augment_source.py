"""Spatial augmentation samples the patch from a larger block, so rotated/scaled patches hold image, not
zero-padded corners (nnU-Net's crop-larger-then-transform), checked on a real OpenKBP CT against SciPy."""

import numpy as np
import pytest
import scipy.ndimage as ndi

from medseg.config import AugmentConfig
from medseg.io.volume_io import read_volume
from medseg.train.augment import build_augmentation, source_size
from medseg.train.sampling import PatchSampler

PATCH = (48, 48, 40)
_AFFINE_ONLY = dict(flip=False, rotate_deg=15.0, scale=[0.85, 1.15], gamma_prob=0, noise_prob=0, blur_prob=0,
                    contrast_prob=0, lowres_prob=0)


@pytest.fixture()
def ct(data_path):
    """A real head-and-neck CT shifted to be positive everywhere (a zero can only be padding), and its labels."""
    image = read_volume(data_path("openkbp/imagesTr/pt_1.nii.gz")).array + 2000.0
    label = read_volume(data_path("openkbp/labelsTr/pt_1.nii.gz")).array.astype(np.int64)
    return image[None].astype(np.float32), label


def _sample(ct, centre, source, cfg, seed):
    sampler = PatchSampler([ct[0]], [ct[1]], PATCH, [1], seed=0, source_size=source)
    block, label = sampler.extract(0, np.asarray(centre))
    compose = build_augmentation(cfg, seed=seed, patch_size=PATCH if source else None)
    out = compose({"image": block, "label": label[None].astype(np.float32)})
    return compose, np.asarray(out["image"])[0], np.asarray(out["label"])[0]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rotated_patch_is_the_image_resampled_not_padding(ct, seed):
    """A drawn rotation/scaling of an interior patch: no zero-padded voxel (the old final-size transform
    padded up to a sixth of such a patch), and the values are SciPy's trilinear resampling of the whole CT
    about the patch."""
    cfg = AugmentConfig(affine_prob=1.0, **_AFFINE_ONLY)
    centre = np.array([64, 64, 64])
    compose, image, label = _sample(ct, centre, source_size(PATCH, cfg), cfg, seed)
    assert image.shape == label.shape == PATCH
    assert (image == 0).sum() == 0
    _, old, _ = _sample(ct, centre, None, cfg, seed)
    assert (old == 0).any()  # the defect this fixes: empty corners pulled into the patch

    matrix = compose.transforms[0].transforms[0].rand_affine.rand_affine_grid.affine.numpy()[:3, :3]
    half = (np.asarray(PATCH) - 1) / 2
    offset = centre - np.asarray(PATCH) // 2 + half - matrix @ half
    reference = ndi.affine_transform(ct[0][0], matrix, offset=offset, output_shape=PATCH, order=1)
    assert np.abs(reference - image).max() < 0.05  # HU + 2000, float32 rounding only
    reference_label = ndi.affine_transform(ct[1], matrix, offset=offset, output_shape=PATCH, order=0)
    assert (reference_label == label).mean() > 0.999  # nearest: ties at half-voxel may round either way


@pytest.mark.parametrize("centre", [(64, 64, 64), (2, 3, 125), (127, 0, 60)])
def test_patch_not_transformed_is_the_patch_the_sampler_cut_before(ct, centre):
    """Not drawn for the affine transform, the patch is exactly the plain patch, at the image's borders too."""
    cfg = AugmentConfig(affine_prob=1e-9, **_AFFINE_ONLY)
    source = source_size(PATCH, cfg)
    assert all(s > p and (s - p) % 2 == 0 for s, p in zip(source, PATCH, strict=True))
    _, image, label = _sample(ct, centre, source, cfg, seed=0)
    plain = PatchSampler([ct[0]], [ct[1]], PATCH, [1], seed=0).extract(0, np.asarray(centre))
    np.testing.assert_array_equal(image, plain[0][0])
    np.testing.assert_array_equal(label, plain[1])


def test_no_affine_no_larger_block():
    assert source_size(PATCH, AugmentConfig(affine_prob=0.0)) == PATCH
    with pytest.raises(ValueError, match="exceed patch"):
        PatchSampler([np.zeros((1, 8, 8, 8), np.float32)], [np.zeros((8, 8, 8), np.int64)], (4, 4, 4), [1],
                     source_size=(5, 6, 6))
