"""Plan, resampling and preprocessing inversion on anisotropic phantoms, the real CT and a real
hippocampus case (no overshoot from label and probability resampling)."""

import dataclasses
import json

import numpy as np
import pytest
import yaml

from medseg.config import load_config
from medseg.data import load_dataset
from medseg.data.phantom import make_phantom, write_phantom_dataset
from medseg.io import read_volume
from medseg.preprocess import fingerprint, make_plan, preprocess, restore_labels, restore_probabilities
from medseg.preprocess.plan import Plan
from medseg.preprocess.resample import resample_image, resample_labels


@pytest.fixture(scope="module")
def anisotropic_dataset(tmp_path_factory):
    """Phantoms with 0.8 x 0.8 x 5 mm voxels (thick slices) on an oblique grid."""
    return write_phantom_dataset(tmp_path_factory.mktemp("aniso"), cases=4, shape=(64, 64, 12),
                                 spacing=(0.8, 0.8, 5.0), rotation_deg=(5, 0, 20))


def test_plan_picks_separate_z_for_thick_slices(anisotropic_dataset):
    data = load_dataset(anisotropic_dataset)
    plan = make_plan(fingerprint(data), data.channels, data.labels, load_config())
    assert plan.separate_z_axis == 2
    assert plan.target_spacing[:2] == pytest.approx([0.8, 0.8], abs=1e-3)
    assert plan.target_spacing[2] == pytest.approx(5.0, abs=1e-3)
    # No 3-wide convolution and no downsampling across 5 mm slices until in-plane has caught up.
    assert plan.kernel_sizes[0] == [3, 3, 1] and plan.strides[1] == [2, 2, 1]
    assert plan.normalization == [{"scheme": "zscore"}]


def test_separate_z_resampling_keeps_labels_and_inverts(anisotropic_dataset, preprocessing_plan):
    image = read_volume(anisotropic_dataset / "imagesTr/phantom_000.nii.gz")
    label = read_volume(anisotropic_dataset / "labelsTr/phantom_000.nii.gz", label=True)
    plan = preprocessing_plan([0.8, 0.8, 2.0], {0: "bg", 1: "organ", 2: "lesion"}, separate_z_axis=2)
    data, lab, trace = preprocess(image, label, plan)
    assert lab.shape == data.shape[1:] and data.shape[3] == 30  # 12 slices x 5 mm -> 30 x 2 mm
    assert set(np.unique(lab)) <= {0, 1, 2} and 2 in lab  # no new values, the small lesion survives
    assert abs(float(data.mean())) < 1e-3 and abs(float(data.std()) - 1) < 1e-3
    onehot = np.stack([(lab == k).astype(np.float32) for k in (0, 1, 2)])
    back = restore_labels(onehot, trace, [0, 1, 2])
    assert back.shape == label.spatial_shape
    for k in (1, 2):
        a, b = back == k, label.array == k
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9


def test_round_trip_is_exact_without_resampling(preprocessing_plan):
    image, label = make_phantom(shape=(40, 36, 10), spacing=(1, 1, 2), seed=5)
    plan = preprocessing_plan(image.spacing, {0: "b", 1: "o", 2: "l"})
    _, lab, trace = preprocess(image, label, plan)
    onehot = np.stack([(lab == k).astype(np.float32) for k in (0, 1, 2)])
    assert np.array_equal(restore_labels(onehot, trace, [0, 1, 2]), label.array)
    assert np.allclose(trace.original_affine, image.affine)


def test_label_resampling_never_creates_in_between_values():
    label = np.zeros((20, 20, 8), np.int16)
    label[5:10, 5:15, 2:6] = 1
    label[10:15, 5:15, 2:6] = 3  # 1 and 3 touch: linear-then-round would create 2 at the border
    out = resample_labels(label, (33, 33, 19), [0, 1, 3])
    assert set(np.unique(out)) == {0, 1, 3}


def test_image_resampling_shapes():
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 6)).astype(np.float32)
    assert resample_image(x, (20, 24, 15), separate_z_axis=2).shape == (2, 20, 24, 15)
    assert resample_image(x, (8, 8, 3)).shape == (2, 8, 8, 3)


def test_plan_on_real_ct_uses_ct_normalisation(data_path, tmp_path):
    image, seg = data_path("ct/example_ct_sm.nii.gz"), data_path("ct/example_seg.nii.gz")
    values = np.unique(read_volume(seg, label=True).array)
    manifest = tmp_path / "ct.yaml"
    manifest.write_text(yaml.safe_dump({
        "name": "ct", "channels": {0: "CT"}, "labels": {int(v): f"class_{v}" for v in values},
        "cases": [{"id": "ct0", "images": [str(image)], "label": str(seg)}]}))
    data = load_dataset(manifest)
    fp = fingerprint(data)
    plan = make_plan(fp, data.channels, data.labels, load_config())
    norm = plan.normalization[0]
    assert norm["scheme"] == "ct" and -1100 <= norm["lower"] < norm["upper"] <= 1207
    assert plan.target_spacing == [3.0, 3.0, 3.0] and plan.separate_z_axis is None  # it is isotropic
    assert Plan.from_dict(json.loads(plan.to_json())) == plan  # the plan round-trips through JSON
    # Resampled to thick 6 mm slices and back, 41 organ labels keep exactly their values.
    plan6 = dataclasses.replace(plan, target_spacing=[3.0, 3.0, 6.0])
    _, lab, _ = preprocess(read_volume(image), read_volume(seg, label=True), plan6)
    assert set(np.unique(lab)) <= set(values.tolist())


@pytest.fixture()
def hippocampus_case(data_path):
    root = data_path("hippocampus")
    return (read_volume(root / "imagesTr/hippocampus_001.nii.gz"),
            read_volume(root / "labelsTr/hippocampus_001.nii.gz", label=True))


def test_restored_probabilities_stay_within_unit_range(hippocampus_case, preprocessing_plan):
    image, label = hippocampus_case
    # 1.6 x 1.6 x 5 mm target: separate z, and in-plane resampling both ways (where bicubic overshoots).
    plan = preprocessing_plan([1.6, 1.6, 5.0], {0: "bg", 1: "anterior", 2: "posterior"})
    _, lab, trace = preprocess(image, label, plan)
    assert trace.separate_z_axis == 2
    hard = np.stack([(lab == k).astype(np.float32) for k in (0, 1, 2)])  # 0/1 steps: the worst case
    probs = restore_probabilities(hard, trace)
    assert probs.shape == (3, *image.spatial_shape)
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    cropped = [b - a for a, b in trace.crop_box]
    cubic = resample_image(hard, cropped, separate_z_axis=2, kernel="cubic")
    assert cubic.min() < -0.01 and cubic.max() > 1.01  # what bicubic did to probabilities


def test_label_resampling_with_separate_z_has_no_overshoot(hippocampus_case):
    _, label = hippocampus_case
    onehot = np.stack([(label.array == k).astype(np.float32) for k in (0, 1, 2)])
    new_shape = (22, 32, 7)
    linear = resample_image(onehot, new_shape, separate_z_axis=2, kernel="linear")
    assert linear.min() >= 0.0 and linear.max() <= 1.0 + 1e-6
    assert resample_image(onehot, new_shape, separate_z_axis=2, kernel="cubic").max() > 1.01
    out = resample_labels(label.array, new_shape, [0, 1, 2], separate_z_axis=2)
    assert set(np.unique(out)) == {0, 1, 2}


@pytest.mark.parametrize("new_shape", [(301, 257, 330), (97, 128, 64)])
def test_restored_argmax_equals_interpolating_the_whole_grid(new_shape, data_path):
    """Labels restored only where interpolation can reach a voxel that is not background equal the argmax of
    ``F.interpolate`` over the whole grid (up- and downsampling; real organs of an OpenKBP label map, smoothed
    to soft scores); scores that are all background give an empty map."""
    import nibabel as nib
    import torch
    from scipy.ndimage import gaussian_filter

    from medseg.preprocess.resample import argmax_restored

    label = np.asarray(nib.load(data_path("openkbp/labelsTr/pt_100.nii.gz")).dataobj)
    scores = np.stack([gaussian_filter((label == k).astype(np.float32), 1.5) for k in range(8)]).astype(np.float16)
    whole = torch.nn.functional.interpolate(torch.from_numpy(scores.astype(np.float32))[None], size=new_shape,
                                            mode="trilinear", align_corners=False)[0].argmax(0).numpy()
    restored = argmax_restored(scores, new_shape)
    assert restored.shape == new_shape and restored.dtype == np.int16
    assert (restored != whole).sum() <= 1e-6 * whole.size and len(np.unique(restored)) >= 6
    assert not argmax_restored(scores[[0]].repeat(3, 0), new_shape).any()
