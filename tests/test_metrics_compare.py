"""Paired comparison of two evaluations on real hippocampus labels: the differences against SimpleITK's Dice,
the interval against a plain percentile bootstrap, pairs scored by one side only named, and the CLI."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from typer.testing import CliRunner

from medseg.cli import app
from medseg.io.volume_io import read_volume, write_volume
from medseg.metrics.compare import compare_folders, paired_differences, read_metrics
from medseg.metrics.evaluate import evaluate_folder
from medseg.types import Volume

CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_008",
         "hippocampus_014", "hippocampus_015", "hippocampus_017", "hippocampus_019", "hippocampus_023"]


def _damaged(label: np.ndarray, grow: bool, iterations: int) -> np.ndarray:
    """Each structure eroded (or dilated into background) by ``iterations`` voxels."""
    out = np.zeros_like(label) if not grow else label.copy()
    for value in (1, 2):
        mask = label == value
        if grow:
            out[ndimage.binary_dilation(mask, iterations=iterations) & (label == 0)] = value
        else:
            out[ndimage.binary_erosion(mask, iterations=iterations)] = value
    return out


@pytest.fixture()
def two_runs(data_path, tmp_path):
    """Truth labels of 10 real cases; run A erodes them, run B dilates them (case by case milder or harsher),
    and B misses the last case. Returns (truth folder, eval A, eval B, sitk Dice per (case, label) for A and B)."""
    truth_dir, a_dir, b_dir = (tmp_path / n for n in ("truth", "a", "b"))
    reference = {}
    for i, case in enumerate(CASES):
        truth = read_volume(data_path(f"hippocampus/labelsTr/{case}.nii.gz"), label=True)
        runs = {"a": _damaged(truth.array, False, 1 + i % 2), "b": _damaged(truth.array, True, 1)}
        for name, folder in (("truth", truth_dir), ("a", a_dir), ("b", b_dir)):
            if name == "b" and case == CASES[-1]:
                continue
            array = truth.array if name == "truth" else runs[name]
            write_volume(Volume(array.astype(np.uint8), truth.affine), folder / f"{case}.nii.gz")
        for name, array in runs.items():
            measures = sitk.LabelOverlapMeasuresImageFilter()
            measures.Execute(sitk.GetImageFromArray(array.astype(np.uint8)),
                             sitk.GetImageFromArray(truth.array.astype(np.uint8)))
            for value, label in ((1, "Anterior"), (2, "Posterior")):
                reference[name, case, label] = measures.GetDiceCoefficient(value)
    labels = {1: "Anterior", 2: "Posterior"}
    evaluate_folder(a_dir, truth_dir, tmp_path / "eval_a", labels=labels)
    evaluate_folder(b_dir, truth_dir, tmp_path / "eval_b", labels=labels)
    return tmp_path / "eval_a", tmp_path / "eval_b", reference


def test_paired_difference_matches_simpleitk_and_a_plain_bootstrap(two_runs):
    eval_a, eval_b, reference = two_runs
    rows, left_out = paired_differences(read_metrics(eval_a), read_metrics(eval_b), level=0.95, seed=0)
    assert [r.label for r in rows] == ["Anterior", "Posterior", "mean"]
    assert left_out["only_a"] == [f"{CASES[-1]}/Anterior", f"{CASES[-1]}/Posterior"] and not left_out["only_b"]
    rng = np.random.default_rng(1)
    for row in rows:
        labels = ["Anterior", "Posterior"] if row.label == "mean" else [row.label]
        diff = np.array([np.mean([reference["b", c, lab] - reference["a", c, lab] for lab in labels])
                         for c in CASES[:-1]])
        assert row.n == len(CASES) - 1
        assert row.difference == pytest.approx(diff.mean(), abs=1e-9)
        assert row.b_higher == (diff > 0).sum() and row.b_lower == (diff < 0).sum()
        means = diff[rng.integers(0, len(diff), (20_000, len(diff)))].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        assert row.low < row.difference < row.high
        assert row.low == pytest.approx(low, abs=0.25 * (high - low))
        assert row.high == pytest.approx(high, abs=0.25 * (high - low))


def test_identical_evaluations_differ_by_exactly_nothing(two_runs):
    eval_a, _, _ = two_runs
    rows, left_out = paired_differences(read_metrics(eval_a), read_metrics(eval_a))
    assert all(r.difference == r.low == r.high == 0 and r.b_higher == r.b_lower == 0 for r in rows)
    assert not any(left_out.values())


def test_compare_command_writes_json_and_never_overwrites(two_runs, tmp_path):
    eval_a, eval_b, _ = two_runs
    out = tmp_path / "comparison.json"
    result = CliRunner().invoke(app, ["compare", str(eval_a), str(eval_b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| mean | 9 |" in result.output
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(compare_folders(eval_a, eval_b)))
    again = CliRunner().invoke(app, ["compare", str(eval_a), str(eval_b), "--out", str(out)])
    assert again.exit_code == 1 and "output exists" in again.output
    missing = CliRunner().invoke(app, ["compare", str(eval_a), str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no metrics.csv" in missing.output
