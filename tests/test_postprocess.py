"""Connected-component post-processing per label."""

import numpy as np

from medseg.postprocess import ComponentRule, postprocess


def _blobs():
    label = np.zeros((40, 40, 20), np.uint8)
    label[2:20, 2:20, 2:12] = 1  # organ, big
    label[30:33, 30:33, 15:18] = 1  # organ fragment (false positive)
    label[25:27, 5:7, 5:7] = 2  # lesion, 8 voxels
    label[5:12, 28:35, 5:12] = 2  # lesion, 343 voxels
    return label


def test_largest_component_keeps_the_organ_only():
    out, stats = postprocess(_blobs(), {1: ComponentRule("largest")}, spacing=(1, 1, 1))
    assert (out == 1).sum() == 18 * 18 * 10 and stats[1]["components_before"] == 2
    assert (out == 2).sum() == 8 + 343  # other labels untouched


def test_min_size_drops_small_lesions_but_never_all():
    out, _ = postprocess(_blobs(), {2: ComponentRule("min_size", min_volume_mm3=50)}, spacing=(1, 1, 1))
    assert (out == 2).sum() == 343
    out, _ = postprocess(_blobs(), {2: ComponentRule("min_size", min_volume_mm3=10_000)}, spacing=(1, 1, 1))
    assert (out == 2).sum() == 343  # all below the threshold: the largest lesion stays
    # Thresholds are in mm^3: with 2 mm voxels the small lesion is 64 mm^3 and survives a 50 mm^3 bar.
    out, _ = postprocess(_blobs(), {2: ComponentRule("min_size", min_volume_mm3=50)}, spacing=(2, 2, 2))
    assert (out == 2).sum() == 8 + 343


def test_fill_holes():
    label = np.zeros((20, 20, 20), np.uint8)
    label[4:16, 4:16, 4:16] = 1
    label[8:12, 8:12, 8:12] = 0
    out, stats = postprocess(label, {1: ComponentRule("none", fill_holes=True)}, spacing=(1, 1, 1))
    assert stats[1]["voxels_filled"] == 64 and (out == 1).sum() == 12**3


def test_cc3d_matches_scipy_labelling():
    from scipy import ndimage

    from medseg.postprocess.components import components

    mask = np.random.default_rng(0).random((60, 50, 40)) > 0.7
    ours, sizes = components(mask)
    theirs, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    assert ours.max() == n and sorted(sizes[1:]) == sorted(np.bincount(theirs.ravel())[1:])
