"""Metrics against MONAI's reference implementations on real label maps, and the empty-mask conventions."""

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

from medseg.io import read_volume
from medseg.metrics import dice, lesion_detection, surface_metrics


def _monai(pred, truth, spacing, tol):
    p = torch.from_numpy(pred)[None, None].float()
    t = torch.from_numpy(truth)[None, None].float()
    p2, t2 = torch.cat([1 - p, p], 1), torch.cat([1 - t, t], 1)
    d = float(compute_dice(p2, t2, include_background=False))
    hd = float(compute_hausdorff_distance(p2, t2, percentile=95, spacing=list(spacing)))
    nsd = float(compute_surface_dice(p2, t2, class_thresholds=[tol], spacing=list(spacing)))
    return d, hd, nsd


def _perturbed(mask, seed):
    """A realistic 'prediction': the truth shifted by one voxel with some boundary voxels flipped."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shifted = np.roll(mask, 1, axis=int(rng.integers(3)))
    grown = ndimage.binary_dilation(shifted)
    edge = grown & ~shifted
    return shifted | (edge & (rng.random(mask.shape) < 0.3))


def _assert_agrees_with_monai(pred, truth, spacing, tolerance_mm):
    ours = surface_metrics(pred, truth, spacing, tolerance_mm=tolerance_mm)
    d, hd, nsd = _monai(pred, truth, spacing, tolerance_mm)
    assert abs(dice(pred, truth) - d) < 1e-3
    assert abs(ours["hd95"] - hd) < 0.1 and abs(ours["nsd"] - nsd) < 1e-3


@pytest.mark.parametrize("label_value", [1, 2])
def test_agree_with_monai_on_hippocampus(data_path, label_value):
    truth = read_volume(data_path("hippocampus/labelsTr/hippocampus_001.nii.gz"), label=True)
    mask = truth.array == label_value
    _assert_agrees_with_monai(_perturbed(mask, label_value), mask, truth.spacing, 1.0)


def test_agree_with_monai_on_ct_organs(data_path):
    seg = read_volume(data_path("ct/example_seg.nii.gz"), label=True)
    values = [v for v, n in zip(*np.unique(seg.array, return_counts=True), strict=True) if v and n > 500][:4]
    for i, value in enumerate(values):
        mask = seg.array == value
        _assert_agrees_with_monai(_perturbed(mask, i), mask, seg.spacing, 3.0)


def test_anisotropic_spacing_is_used():
    truth = np.zeros((30, 30, 30), bool)
    truth[10:20, 10:20, 10:20] = True
    pred = np.roll(truth, 2, axis=2)
    assert surface_metrics(pred, truth, (1, 1, 1))["hd95"] == pytest.approx(2.0)
    assert surface_metrics(pred, truth, (1, 1, 5))["hd95"] == pytest.approx(10.0)
    d, hd, _ = _monai(pred.astype(np.uint8), truth.astype(np.uint8), (1, 1, 5), 1.0)
    assert hd == pytest.approx(10.0)


def test_empty_conventions_never_nan():
    empty = np.zeros((10, 10, 10), bool)
    full = empty.copy()
    full[3:6, 3:6, 3:6] = True
    assert surface_metrics(empty, empty, (1, 1, 1)) == {"hd95": 0.0, "assd": 0.0, "nsd": 1.0}
    one = surface_metrics(empty, full, (1, 1, 2))
    assert one["nsd"] == 0.0 and one["hd95"] == pytest.approx(np.linalg.norm([10, 10, 20]))
    assert dice(empty, empty) == 1.0 and dice(empty, full) == 0.0
    for value in lesion_detection(empty, empty).values():
        assert not np.isnan(value)


def test_lesion_wise_detection():
    truth = np.zeros((40, 40, 40), bool)
    truth[2:6, 2:6, 2:6] = True  # lesion A
    truth[20:24, 20:24, 20:24] = True  # lesion B
    truth[30:33, 2:5, 30:33] = True  # lesion C
    pred = np.zeros_like(truth)
    pred[3:7, 3:7, 3:7] = True  # finds A
    pred[20:22, 20:22, 20:22] = True  # finds B (partly)
    pred[10:12, 30:32, 10:12] = True  # false positive
    result = lesion_detection(pred, truth)
    assert result["lesions"] == 3 and result["detected"] == 2 and result["false_positives"] == 1
    assert result["sensitivity"] == pytest.approx(2 / 3) and result["precision"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
