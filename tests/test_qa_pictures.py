"""QA pictures on real data: errors against ground truth, uncertainty, the training curve, the report."""

import json
import logging

import numpy as np
import pytest
from scipy import ndimage

from medseg.io import read_volume, write_volume
from medseg.qa.errors import error_masks, largest_error
from medseg.qa.figures import comparison_figure, uncertainty_figure
from medseg.qa.report import NO_PROBABILITIES, build_report
from medseg.qa.uncertainty import REGION_MM, most_uncertain_point, normalised_entropy
from medseg.train.progress_plot import update_progress_png, write_progress_png


@pytest.fixture()
def ct(data_path):
    """The real abdominal CT, its 41-class label map as truth, and a prediction with known errors: the liver
    (5) eroded by one voxel (a false negative shell) and label 1 shifted 3 voxels along x (false positives
    on one side, false negatives on the other)."""
    image = read_volume(data_path("ct/example_ct_sm.nii.gz"))
    truth = read_volume(data_path("ct/example_seg.nii.gz"), label=True)
    pred = truth.array.copy()
    liver = truth.array == 5
    pred[liver & ~ndimage.binary_erosion(liver)] = 0
    pred[pred == 1] = 0
    pred[np.roll(truth.array == 1, 3, axis=0) & (pred == 0)] = 1
    return image, truth, truth.with_array(pred)


def _plane_titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def test_error_masks_are_the_set_differences_per_label(ct):
    _, truth, pred = ct
    fp, fn = error_masks(pred.array, truth.array)
    coords = {}
    for name, volume in (("pred", pred.array), ("truth", truth.array)):
        coords[name] = {v: set(map(tuple, np.argwhere(volume == v))) for v in np.unique(volume) if v != 0}
    missed, extra = set(), set()
    for value in set(coords["pred"]) | set(coords["truth"]):
        predicted, true = coords["pred"].get(value, set()), coords["truth"].get(value, set())
        extra |= predicted - true
        missed |= true - predicted
    assert set(map(tuple, np.argwhere(fp))) == extra and set(map(tuple, np.argwhere(fn))) == missed
    assert extra and missed


def test_pictures_cut_through_the_centroid_of_the_largest_error(ct):
    image, truth, pred = ct
    fp, fn = error_masks(pred.array, truth.array)
    components, count = ndimage.label(fp | fn, structure=np.ones((3, 3, 3)))  # 26-connected, independently
    sizes = np.bincount(components.ravel())[1:]
    biggest = int(np.argmax(sizes)) + 1
    expected = tuple(int(round(c)) for c in ndimage.center_of_mass(components == biggest))
    voxel_mm3 = float(np.prod(truth.spacing))
    assert count >= 2  # the liver shell and the shifted label compete

    focus = largest_error(pred.array, truth.array, truth.spacing)
    assert focus.point == expected
    assert focus.volume_mm3 == pytest.approx(sizes.max() * voxel_mm3)

    # The grid is stored RAS, so display indices are voxel indices: sagittal = x, coronal = y, axial = z.
    fig = comparison_figure(image.array, pred.array, truth.array, truth.affine, title="ct")
    want = [f"sagittal {expected[0]}", f"coronal {expected[1]}", f"axial {expected[2]}"]
    assert _plane_titles(fig) == want * 2
    assert f"largest error ({focus.volume_mm3:.0f} mm³)" in fig._suptitle.get_text()

    # Stored left-to-right and posterior-to-anterior: the same planes, the same picture.
    n0, n1 = truth.spatial_shape[:2]
    flip = np.array([[-1, 0, 0, n0 - 1], [0, -1, 0, n1 - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    flipped = [a[::-1, ::-1] for a in (image.array, pred.array, truth.array)]
    assert _plane_titles(comparison_figure(*flipped, truth.affine @ flip)) == want * 2


def test_without_errors_the_pictures_cut_through_the_label_centre(ct):
    _, truth, _ = ct
    focus = largest_error(truth.array, truth.array, truth.spacing)
    centre = tuple(int(round(c)) for c in ndimage.center_of_mass(truth.array > 0))
    assert focus.point == centre and focus.volume_mm3 == 0.0


def test_uncertainty_is_normalised_entropy_and_found_where_highest(ct):
    image, truth, _ = ct
    certain = np.zeros((3, *truth.spatial_shape), np.float32)
    certain[0] = 1.0
    uniform = np.full_like(certain, 1 / 3)
    assert np.allclose(normalised_entropy(certain), 0.0) and np.allclose(normalised_entropy(uniform), 1.0)

    probs = certain.copy()
    probs[:, 30:34, 60:64, 10:14] = 1 / 3  # a small region where the model cannot decide
    uncertainty = normalised_entropy(probs)
    point, level = most_uncertain_point(uncertainty, truth.spacing)
    assert all(lo <= p < hi for p, lo, hi in zip(point, (30, 60, 10), (34, 64, 14), strict=True)), point
    assert REGION_MM / min(truth.spacing) < 4.5  # the averaging box fits in the 4-voxel region...
    assert level == pytest.approx(1.0, abs=1e-4)  # ...so its mean is the region's uncertainty
    fig = uncertainty_figure(image.array, uncertainty, truth.array, truth.affine)
    assert _plane_titles(fig) == [f"sagittal {point[0]}", f"coronal {point[1]}", f"axial {point[2]}"]


def _log_records(epochs: int) -> list[dict]:
    return [{"epoch": e, "step": 10 * e, "loss": 1.0 / e, "val_dice": {"anterior": 0.5 + 0.04 * e,
                                                                         "posterior": 0.4 + 0.05 * e},
             "val_mean_dice": 0.45 + 0.045 * e, "lr": 0.01 * (1 - e / (epochs + 1)) ** 0.9, "epoch_seconds": 3.0,
             "elapsed": 3.0 * e} for e in range(1, epochs + 1)]


def test_progress_png_from_a_log(tmp_path, caplog):
    import matplotlib.image

    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in _log_records(8)))
    png = write_progress_png(log, tmp_path / "progress.png")
    picture = matplotlib.image.imread(png)
    assert picture.shape[1] > 2.5 * picture.shape[0] and picture.std() > 0.05  # three panels, drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl", "progress.png"]  # no temporary left

    log.write_text("not json\n")
    with caplog.at_level(logging.WARNING, logger="medseg"):
        update_progress_png(log, tmp_path / "broken.png")  # a warning, never an exception
    assert "progress.png not updated" in caplog.text and not (tmp_path / "broken.png").exists()


def _write_result(results, case_id, image_path, label, labels, model, probabilities=None):
    """What `medseg infer` leaves for one case: the label map, optional probabilities, and <id>.json naming
    them relative to the results folder."""
    outputs = {"label": write_volume(label, results / f"{case_id}.nii.gz", label=True).name}
    if probabilities is not None:  # channel-first in memory, channel-last on disk, as medseg infer writes
        outputs["probabilities"] = write_volume(label.with_array(probabilities.astype(np.float32)),
                                                results / f"{case_id}_probabilities.nii.gz", label=False).name
    record = {"id": case_id, "model_id": "m-test", "model_dir": str(model), "outputs": outputs,
              "input": {"path": str(image_path)}, "labels": {str(k): v for k, v in labels.items()}}
    (results / f"{case_id}.json").write_text(json.dumps(record))


def test_report_shows_errors_uncertainty_and_training_curve(ct, data_path, tmp_path):
    _, truth, pred = ct
    hippo_image = data_path("hippocampus/imagesTr/hippocampus_001.nii.gz")
    hippo_truth = read_volume(data_path("hippocampus/labelsTr/hippocampus_001.nii.gz"), label=True)
    onehot = np.stack([ndimage.gaussian_filter((hippo_truth.array == k).astype(np.float32), 1.0) for k in range(3)])
    probabilities = onehot / onehot.sum(axis=0, keepdims=True)

    model, results, gt = tmp_path / "model", tmp_path / "results", tmp_path / "gt"
    for folder in (model, results, gt):
        folder.mkdir()
    (model / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _log_records(5)))
    write_progress_png(model / "log.jsonl", model / "progress.png")
    ct_names = {int(v): f"organ {v}" for v in np.unique(truth.array) if v}
    _write_result(results, "ct", data_path("ct/example_ct_sm.nii.gz"), pred, ct_names, model)
    _write_result(results, "hippo", hippo_image, hippo_truth, {1: "anterior", 2: "posterior"}, model, probabilities)
    write_volume(truth, gt / "ct.nii.gz", label=True)
    write_volume(hippo_truth, gt / "hippo.nii.gz", label=True)

    page = build_report(results, gt=gt).read_text()
    assert page.count("data:image/png;base64,") == 4  # two cases, one uncertainty map, one training curve
    for alt in ("prediction against ground truth ct", "prediction against ground truth hippo", "uncertainty hippo",
                "training progress m-test"):
        assert f"alt='{alt}'" in page, alt
    assert page.count(NO_PROBABILITIES) == 1 and "uncertainty ct" not in page
    assert str(tmp_path) not in page

    page = build_report(results, out=tmp_path / "no_gt.html").read_text()
    assert "alt='prediction ct'" in page and "against ground truth" not in page
    (model / "progress.png").unlink()  # a model without a curve (a .zip, an old run): skipped silently
    assert "training progress" not in build_report(results).read_text()
