"""Connected-component post-processing per label, checked against scipy on a real 41-class CT label map;
rules are validated when the config loads."""

import numpy as np
import pytest
from scipy import ndimage

from medseg.config import load_config
from medseg.errors import MedsegError
from medseg.io import read_volume
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


def test_min_size_never_keeps_a_component_below_the_threshold():
    out, _ = postprocess(_blobs(), {2: ComponentRule("min_size", min_volume_mm3=50)}, spacing=(1, 1, 1))
    assert (out == 2).sum() == 343
    # Every lesion below the bar: none is left (a lesion-free scan must not report its largest speck).
    out, stats = postprocess(_blobs(), {2: ComponentRule("min_size", min_volume_mm3=10_000)}, spacing=(1, 1, 1))
    assert (out == 2).sum() == 0 and stats[2]["components_after"] == 0 and stats[2]["voxels_removed"] == 8 + 343
    # Thresholds are in mm^3: with 2 mm voxels the small lesion is 64 mm^3 and survives a 50 mm^3 bar.
    out, _ = postprocess(_blobs(), {2: ComponentRule("min_size", min_volume_mm3=50)}, spacing=(2, 2, 2))
    assert (out == 2).sum() == 8 + 343


def test_largest_keeps_n_components():
    out, stats = postprocess(_blobs(), {2: ComponentRule("largest", keep=2)}, spacing=(1, 1, 1))
    assert (out == 2).sum() == 8 + 343 and stats[2]["components_after"] == 2
    out, _ = postprocess(_blobs(), {2: ComponentRule("largest", keep=5)}, spacing=(1, 1, 1))
    assert (out == 2).sum() == 8 + 343  # fewer components than asked for: all stay


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


def _reference_sizes(mask: np.ndarray) -> np.ndarray:
    """Component sizes, largest first, by scipy (26-connectivity): the independent reference."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    return np.sort(np.bincount(labels.ravel())[1:])[::-1]


@pytest.fixture()
def ct_labels(data_path):
    """TotalSegmentator's 41-class label map of a real abdominal CT (3 mm voxels, 27 mm^3 each)."""
    return read_volume(data_path("ct/example_seg.nii.gz"), label=True)


def test_largest_keep_n_on_real_label_map_matches_scipy(ct_labels):
    multi = [v for v in np.unique(ct_labels.array)[1:] if len(_reference_sizes(ct_labels.array == v)) > 1]
    assert len(multi) >= 4  # the map has several multi-part labels (e.g. 3, 4 and 6 components)
    for keep in (1, 2, 3):
        rules = {int(v): ComponentRule("largest", keep=keep) for v in multi}
        out, stats = postprocess(ct_labels.array, rules, ct_labels.spacing)
        for v in multi:
            reference = _reference_sizes(ct_labels.array == v)
            kept = _reference_sizes(out == v)
            assert list(kept) == list(reference[:keep]), (v, keep)
            assert stats[v]["components_before"] == len(reference)
            assert stats[v]["components_after"] == min(keep, len(reference))
        untouched = ~np.isin(ct_labels.array, multi)
        assert np.array_equal(out[untouched], ct_labels.array[untouched])


def test_min_size_on_real_label_map_matches_scipy(ct_labels):
    voxel_mm3 = float(np.prod(ct_labels.spacing))
    assert voxel_mm3 == pytest.approx(27.0)
    values = [int(v) for v in np.unique(ct_labels.array)[1:]]
    threshold = 100 * voxel_mm3
    rules = {v: ComponentRule("min_size", min_volume_mm3=threshold) for v in values}
    out, stats = postprocess(ct_labels.array, rules, ct_labels.spacing)
    emptied = 0
    for v in values:
        reference = _reference_sizes(ct_labels.array == v)
        expected = reference[reference * voxel_mm3 >= threshold]
        kept = _reference_sizes(out == v)
        assert list(kept) == list(expected), v
        assert all(kept * voxel_mm3 >= threshold)  # nothing below the bar survives
        assert stats[v]["components_after"] == len(expected)
        emptied += len(expected) == 0
    # Some labels are only specks (one is a single voxel): they are gone, not kept as "the largest".
    assert emptied >= 2 and not (out == 13).any()


@pytest.mark.parametrize("rule, message", [
    ("{1: {mode: biggest}}", "unknown mode 'biggest' (allowed: largest, min_size, none)"),
    ("{1: {mode: largest, size: 3}}", "unknown key(s) size (allowed: mode, min_volume_mm3, fill_holes, keep)"),
    ("{1: {mode: min_size}}", "min_size needs min_volume_mm3 > 0"),
    ("{1: {mode: min_size, min_volume_mm3: 30, keep: 2}}", "keep applies to mode largest only"),
    ("{1: {mode: largest, min_volume_mm3: 30}}", "min_volume_mm3 applies to mode min_size only"),
    ("{1: {mode: largest, keep: 0}}", "keep must be a whole number >= 1"),
    ("{0: {mode: largest}}", "not a foreground label value"),
    ("{1: largest}", "a rule is a mapping"),
])
def test_bad_rules_are_refused_when_the_config_loads(rule, message):
    with pytest.raises(MedsegError, match="postprocess.rules") as info:
        load_config(None, [f"postprocess.rules={rule}"])
    assert message in str(info.value)


def test_rules_load_with_every_key_filled_in():
    config = load_config(None, ["postprocess.rules={1: {mode: largest, keep: 2}, 2: {mode: min_size, "
                                "min_volume_mm3: 20}}"])
    assert config.postprocess.rules == {
        1: {"mode": "largest", "min_volume_mm3": 0.0, "fill_holes": False, "keep": 2},
        2: {"mode": "min_size", "min_volume_mm3": 20.0, "fill_holes": False, "keep": 1}}


def test_rules_on_the_labelled_box_equal_the_whole_map(data_path):
    """Post-processing runs on the box around the labelled voxels: the same result and statistics as each rule
    applied to the whole map (a real OpenKBP label map with stray voxels and a hole added)."""
    import nibabel as nib

    from medseg.postprocess.components import clean_label

    label = np.asarray(nib.load(data_path("openkbp/labelsTr/pt_100.nii.gz")).dataobj).astype(np.uint8)
    label[5, 6, 7] = label[100, 3, 120] = 2  # far from the organs: the box spans them
    label[tuple(np.argwhere(label == 7)[len(np.argwhere(label == 7)) // 2])] = 0  # a hole in the mandible
    rules = {1: ComponentRule("largest"), 2: ComponentRule("largest", fill_holes=True),
             7: ComponentRule("largest", fill_holes=True), 5: ComponentRule("min_size", min_volume_mm3=500.0)}
    out, stats = postprocess(label, rules, (2.0, 2.0, 2.5))
    whole = label.copy()
    expected = {value: clean_label(whole, value, rule, 10.0) for value, rule in rules.items()}
    assert np.array_equal(out, whole) and stats == expected
    assert stats[2]["voxels_removed"] == 2 and not np.array_equal(out, label)
