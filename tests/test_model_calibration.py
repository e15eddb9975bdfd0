"""Calibrated confidence: the temperature and the predicted quality (medseg.model.calibration), against torch's
softmax and MONAI's Dice, and end to end through training, `medseg infer` and the QA report."""

import json

import numpy as np
import torch
from monai.metrics import compute_dice

from medseg.infer.batch import run_batch
from medseg.infer.predictor import Predictor
from medseg.model.calibration import VoxelSample, expected_dice, fit_temperature, temper
from medseg.qa.report import build_report


def _logits(rng, n=40_000, k=3, scale=4.0) -> np.ndarray:
    return (rng.normal(0, scale, (k, n))).astype(np.float32)


def test_tempering_probabilities_is_softmax_of_scaled_logits_and_keeps_every_label():
    z = torch.from_numpy(_logits(np.random.default_rng(0)))
    p = torch.softmax(z, dim=0).numpy()
    for t in (0.5, 2.0, 3.7):
        tempered = temper(p, t)
        assert np.allclose(tempered, torch.softmax(z / t, dim=0).numpy(), atol=1e-5)
        assert np.array_equal(tempered.argmax(0), p.argmax(0))
    assert temper(p, 1.0) is p and temper(p.astype(np.float16), 2.0).dtype == np.float16


def test_fit_recovers_the_temperature_of_overconfident_probabilities():
    """Truth drawn from softmax(z / 2.5) while the 'network' says softmax(z): the fit must find ~2.5."""
    rng = np.random.default_rng(1)
    z = _logits(rng)
    honest = torch.softmax(torch.from_numpy(z) / 2.5, dim=0).numpy()
    truth = (honest.cumsum(0) < rng.random(z.shape[1])).sum(0)  # one draw per voxel
    sample = VoxelSample()
    overconfident = torch.softmax(torch.from_numpy(z), dim=0).numpy()
    sample.add(overconfident.reshape(3, 200, 200, 1), truth.reshape(200, 200, 1), np.array([True, True, True]))
    fit = fit_temperature(sample)
    assert abs(fit["temperature"] - 2.5) < 0.15 and fit["nll_after"] < fit["nll_before"]
    assert fit_temperature(VoxelSample())["temperature"] == 1.0


def test_expected_dice_of_certain_probabilities_is_monai_dice():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 3, (20, 20, 8))
    b = np.where(rng.random(a.shape) < 0.8, a, rng.integers(0, 3, a.shape))
    onehot = np.stack([b == v for v in (0, 1, 2)]).astype(np.float32)
    ours = expected_dice(onehot, a, [0, 1, 2])
    ref = compute_dice(torch.from_numpy(np.stack([a == v for v in (1, 2)]))[None],
                       torch.from_numpy(onehot[1:])[None], include_background=True)[0]
    assert np.allclose([ours[1], ours[2]], ref.numpy(), atol=1e-6)


def test_training_calibrates_and_inference_reports_quality_sorted_in_the_qa_report(phantom_run, tmp_path):
    saved = json.loads((phantom_run / "postprocess.json").read_text())["calibration"]
    assert 0.05 <= saved["temperature"] <= 20 and saved["voxels"] > 1000
    assert saved["nll_after"] <= saved["nll_before"]
    assert json.loads((phantom_run / "validation.json").read_text())["calibration"] == saved
    predictor = Predictor.from_dir(phantom_run, device="cpu")
    assert predictor.temperature == saved["temperature"]
    images = sorted((phantom_run.parent / "data" / "imagesTr").glob("*.nii.gz"))[:3]
    (tmp_path / "in").mkdir()
    for image in images:
        (tmp_path / "in" / image.name.replace("_0000", "")).symlink_to(image)
    run_batch(phantom_run, tmp_path / "in", tmp_path / "out", device="cpu")
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json")) if p.name[0] != "s"]
    qualities = {r["id"]: r["quality"] for r in records}
    assert len(qualities) == 3
    for quality in qualities.values():
        assert quality["temperature"] == saved["temperature"] and set(quality["expected_dice"]) == {"organ", "lesion"}
        assert quality["min"] == min(quality["expected_dice"].values()) and 0 <= quality["min"] <= 1
    page = build_report(tmp_path / "out").read_text()
    order = sorted(qualities, key=lambda i: qualities[i]["min"])
    assert [page.index(f"id='{i}'") for i in order] == sorted(page.index(f"id='{i}'") for i in order)


def test_labels_do_not_depend_on_the_temperature_when_resampled(phantom_run):
    """The input's grid differs from the plan's, so probabilities are resampled back to it: tempered ones would
    move label boundaries there (seen: Dice 0.60 vs 0.37 on an OpenKBP case); labels must not change."""
    from medseg.data.phantom import make_phantom

    image, _ = make_phantom(shape=(56, 60, 20), spacing=(1.0, 1.1, 2.7), seed=7)
    predictor = Predictor.from_dir(phantom_run, device="cpu")
    assert not np.allclose(image.spacing, predictor.plan.target_spacing)
    predictor.temperature = 1.0
    plain = predictor.predict(image)
    predictor.temperature = 4.0
    hot = predictor.predict(image, probabilities=True)
    assert np.array_equal(plain.label.array, hot.label.array)
    assert hot.probabilities is not None and hot.probabilities.max() < 0.999  # tempered: less certain
