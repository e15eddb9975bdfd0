"""Per-lesion Dice and pooled lesion detection on real LIDC nodules, checked against an independent reference
built with SimpleITK (26-connected ``ConnectedComponent``, ``LabelShapeStatisticsImageFilter`` volumes,
``LabelOverlapMeasuresImageFilter`` Dice per lesion)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from scipy import ndimage
from typer.testing import CliRunner

from medseg.cli import app
from medseg.io import read_volume, write_volume
from medseg.metrics.evaluate import score_case
from medseg.metrics.lesions import lesion_rows, match_lesions, summarize_lesions

SMALL_MM3 = 100.0  # the threshold for small nodules
# Real nodules and what the test "model" does to each (volumes: 0039_R_2 and 0024_R_1 are under 100 mm^3).
CASES = {"LIDC-IDRI-0011_R_1": "eroded", "LIDC-IDRI-0016_R_2": "split", "LIDC-IDRI-0039_R_2": "shifted",
         "LIDC-IDRI-0024_R_1": "dropped", "LIDC-IDRI-0004_R_1": "dilated"}
WITH_FALSE_POSITIVE = {"LIDC-IDRI-0016_R_2", "LIDC-IDRI-0024_R_1"}  # a blob in a corner, far from the nodule


def _predict(mask: np.ndarray, how: str, false_positive: bool) -> np.ndarray:
    """A prediction made from a real nodule mask (x, y, z voxels)."""
    if how == "eroded":
        pred = ndimage.binary_erosion(mask, np.ones((3, 3, 1), bool))
    elif how == "dilated":
        pred = ndimage.binary_dilation(mask, np.ones((3, 3, 1), bool))
    elif how == "shifted":
        pred = np.roll(mask, 1, axis=1)
    elif how == "split":  # one plane through the middle removed: two predicted pieces on one lesion
        pred = mask.copy()
        xs = np.nonzero(mask.any(axis=(1, 2)))[0]
        pred[(xs.min() + xs.max()) // 2] = False
    else:
        pred = np.zeros_like(mask)
    if false_positive:
        pred[:3, :3, :2] = True
    return pred


def _image(mask: np.ndarray, spacing) -> sitk.Image:
    """A SimpleITK image of a (x, y, z) numpy mask (SimpleITK arrays are z, y, x)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask.astype(np.uint8).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    return image


def _reference(pred: sitk.Image, truth: sitk.Image) -> tuple[list[tuple[float, bool, float]], int]:
    """``[(volume mm^3, detected, Dice)]`` per truth lesion and the count of false-positive components."""
    truth_cc = sitk.ConnectedComponent(sitk.Cast(truth > 0, sitk.sitkUInt8), True)
    pred_cc = sitk.ConnectedComponent(sitk.Cast(pred > 0, sitk.sitkUInt8), True)
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(truth_cc)
    t, p = sitk.GetArrayFromImage(truth_cc), sitk.GetArrayFromImage(pred_cc)
    lesions = []
    for lesion in shapes.GetLabels():
        touching = sorted(set(np.unique(p[t == lesion]).tolist()) - {0})
        score = 0.0
        if touching:
            measures = sitk.LabelOverlapMeasuresImageFilter()
            measures.Execute(_like(t == lesion, truth_cc), _like(np.isin(p, touching), truth_cc))
            score = measures.GetDiceCoefficient()
        lesions.append((shapes.GetPhysicalSize(lesion), bool(touching), score))
    false_positives = len(set(np.unique(p).tolist()) - set(np.unique(p[t > 0]).tolist()) - {0})
    return lesions, false_positives


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def _pooled(lesions: list[tuple[float, bool, float]], false_positives: list[int]) -> dict:
    """Reference dataset figures: lesions, detected, sensitivity, mean Dice; small/large; FP per case."""

    def pool(group):
        return {"lesions": len(group), "detected": sum(d for _, d, _ in group),
                "sensitivity": sum(d for _, d, _ in group) / len(group), "dice_mean": np.mean([s for *_, s in group])}

    return {**pool(lesions), "false_positives_per_case": np.mean(false_positives),
            "small": pool([x for x in lesions if x[0] < SMALL_MM3]),
            "large": pool([x for x in lesions if x[0] >= SMALL_MM3])}


def _ours(rows: list[dict]) -> list[tuple[float, bool, float]]:
    return sorted((float(r["volume_mm3"]), r["detected"] in (True, "True"), float(r["dice"])) for r in rows)


def _assert_same_lesions(rows: list[dict], reference: list[tuple[float, bool, float]]) -> None:
    ours, ref = _ours(rows), sorted(reference)
    assert len(ours) == len(ref)
    for (v, d, s), (rv, rd, rs) in zip(ours, ref, strict=True):
        assert v == pytest.approx(rv, rel=1e-5) and d == rd and s == pytest.approx(rs, abs=1e-6)


def _assert_summary(summary: dict, expected: dict) -> None:
    for key in ("lesions", "detected"):
        assert summary[key] == expected[key]
        assert summary["small"][key] == expected["small"][key] and summary["large"][key] == expected["large"][key]
    for key in ("sensitivity", "dice_mean"):
        assert summary[key] == pytest.approx(expected[key])
        for group in ("small", "large"):
            assert summary[group][key] == pytest.approx(expected[group][key])
    assert summary["false_positives_per_case"] == pytest.approx(expected["false_positives_per_case"])


@pytest.fixture()
def nodules(data_path):
    """Real LIDC nodule label maps by case id (medseg volumes)."""
    return {c: read_volume(data_path(f"lidc_nodules/labelsTr/{c}.nii.gz"), label=True) for c in CASES}


@pytest.mark.parametrize("case_id", list(CASES))
def test_per_lesion_rows_match_simpleitk(nodules, case_id):
    truth = nodules[case_id]
    mask = truth.array == 1
    pred = _predict(mask, CASES[case_id], case_id in WITH_FALSE_POSITIVE)
    match = match_lesions(pred, mask)
    rows = lesion_rows(match, truth.spacing, case_id, "nodule")
    reference, false_positives = _reference(_image(pred, truth.spacing), _image(mask, truth.spacing))
    _assert_same_lesions(rows, reference)
    (row,) = rows
    assert row["detected"] == (CASES[case_id] != "dropped") and (row["dice"] == 0) == (CASES[case_id] == "dropped")
    assert row["predicted_components"] == {"split": 2, "dropped": 0}.get(CASES[case_id], 1)
    assert match.n_pred - len(set(match.pairs[1].tolist())) == false_positives == (case_id in WITH_FALSE_POSITIVE)


def test_one_component_touching_two_lesions_counts_in_both(data_path):
    truth = read_volume(data_path("lidc_nodules/labelsTr/LIDC-IDRI-0043_R_2.nii.gz"), label=True)
    whole = truth.array == 1
    cut = _predict(whole, "split", false_positive=False)  # the truth now holds two lesions; the prediction is whole
    rows = lesion_rows(match_lesions(whole, cut), truth.spacing)
    reference, false_positives = _reference(_image(whole, truth.spacing), _image(cut, truth.spacing))
    assert len(rows) == 2 and false_positives == 0
    _assert_same_lesions(rows, reference)
    assert all(r["predicted_components"] == 1 and 0 < r["dice"] < 1 for r in rows)


def test_small_and_large_nodules_are_summarised_apart(nodules):
    rows, reference, false_positives = [], [], []
    for case_id, truth in nodules.items():
        mask = truth.array == 1
        pred = _predict(mask, CASES[case_id], case_id in WITH_FALSE_POSITIVE)
        rows += lesion_rows(match_lesions(pred, mask), truth.spacing, case_id, "nodule")
        lesions, fp = _reference(_image(pred, truth.spacing), _image(mask, truth.spacing))
        reference += lesions
        false_positives.append(fp)
    summary = summarize_lesions(rows, {"nodule": false_positives})["nodule"]
    expected = _pooled(reference, false_positives)
    assert expected["small"]["lesions"] == 2 and expected["large"]["lesions"] == 3  # both groups are exercised
    _assert_summary(summary, expected)
    assert summary["small"]["sensitivity"] == pytest.approx(0.5)  # the dropped nodule is a small one


def test_no_lesions_give_no_rates():
    summary = summarize_lesions([], {"nodule": [2, 0]})["nodule"]
    assert summary["lesions"] == 0 and summary["sensitivity"] is None and summary["dice_mean"] is None
    assert summary["small"]["sensitivity"] is None and summary["false_positives_per_case"] == 1.0


def test_uncontoured_label_gets_no_lesion_rows(nodules):
    truth = nodules["LIDC-IDRI-0011_R_1"]
    assert score_case(truth, truth, {1: "nodule"}, annotated=())[1] == []
    assert len(score_case(truth, truth, {1: "nodule"}, annotated=(1,))[1]) == 1


def test_evaluate_cli_writes_lesions_csv_and_summary(data_path, tmp_path):
    """`medseg evaluate` on a manifest of real cases; one more case did not contour the nodule label."""
    root = data_path("lidc_nodules")
    uncontoured = "LIDC-IDRI-0043_R_2"
    preds = tmp_path / "pred"
    preds.mkdir()
    entries, reference, false_positives = [], [], []
    for case_id in [*CASES, uncontoured]:
        label = root / "labelsTr" / f"{case_id}.nii.gz"
        truth = read_volume(label, label=True)
        how = CASES.get(case_id, "dilated")
        pred = _predict(truth.array == 1, how, case_id in WITH_FALSE_POSITIVE or case_id == uncontoured)
        write_volume(truth.with_array(pred.astype(np.uint8)), preds / f"{case_id}.nii.gz", label=True)
        entry = {"id": case_id, "images": [str(root / "imagesTr" / f"{case_id}.nii.gz")], "label": str(label)}
        if case_id == uncontoured:
            entries.append({**entry, "annotated": []})
            continue
        entries.append(entry)
        lesions, fp = _reference(sitk.ReadImage(str(preds / f"{case_id}.nii.gz")), sitk.ReadImage(str(label)))
        reference += lesions
        false_positives.append(fp)
    manifest = tmp_path / "lidc.yaml"
    manifest.write_text(yaml.safe_dump({"name": "lidc", "channels": {0: "CT"},
                                        "labels": {0: "background", 1: "nodule"}, "cases": entries}))
    result = CliRunner().invoke(app, ["evaluate", str(preds), str(manifest), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "eval" / "lesions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["case"] for r in rows} == set(CASES) and {r["label"] for r in rows} == {"nodule"}
    _assert_same_lesions(rows, reference)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["small_lesion_mm3"] == SMALL_MM3 and summary["lesions"]["nodule"]["cases"] == len(CASES)
    _assert_summary(summary["lesions"]["nodule"], _pooled(reference, false_positives))
    assert summary["summary"]["nodule"]["dice"]["n"] == len(CASES)  # the per-case summary is still there
    assert summary["uncontoured_omitted"] == {"nodule": 1}
    markdown = (tmp_path / "eval" / "summary.md").read_text()
    assert "| nodule |" in markdown and "## Lesions" in markdown and "100 mm^3" in markdown
    assert "## Lesions" in result.output  # the terminal shows the lesion section too


@pytest.mark.parametrize("case_id", ["LIDC-IDRI-0406_R_3", "LIDC-IDRI-0634_R_2"])
def test_fragments_under_the_minimum_size_are_not_lesions(data_path, case_id):
    """Real majority-vote labels with a speck beside the nodule (1 and 6 voxels): under LIDC's 3 mm minimum
    (14.1 mm^3) the speck is no lesion, the predicted piece on it no false positive; Dice is unchanged."""
    truth = read_volume(data_path(f"lidc_nodules/labelsTr/{case_id}.nii.gz"), label=True)
    mask = truth.array == 1
    pred = mask.copy()  # finds the nodule and the speck, and one false positive far away
    pred[:3, :3, :2] = True
    voxel_mm3 = float(np.prod(truth.spacing))
    min_voxels = int(np.ceil(14.1 / voxel_mm3))
    truth_cc = sitk.ConnectedComponent(sitk.Cast(_image(mask, truth.spacing), sitk.sitkUInt8), True)
    kept = sitk.GetArrayFromImage(sitk.RelabelComponent(truth_cc, minimumObjectSize=min_voxels)) > 0
    kept = kept.transpose(2, 1, 0)
    speck = mask & ~kept
    pred_cc = sitk.GetArrayFromImage(sitk.ConnectedComponent(_image(pred, truth.spacing), True)).transpose(2, 1, 0)
    aside = set(np.unique(pred_cc[speck]).tolist()) - set(np.unique(pred_cc[kept]).tolist())
    reference, false_positives = _reference(_image(pred & ~np.isin(pred_cc, list(aside)), truth.spacing),
                                            _image(kept, truth.spacing))
    assert speck.any() and len(reference) == 1 and false_positives == 1

    rows, lesions = score_case(truth.with_array(pred.astype(np.uint8)), truth, {1: "nodule"}, min_lesion_mm3=14.1)
    _assert_same_lesions(lesions, reference)
    (row,) = rows
    assert (row["lesions_gt"], row["lesion_fragments"], row["lesions_false_positive"]) == (1, 1, 1)
    every, every_lesion = score_case(truth.with_array(pred.astype(np.uint8)), truth, {1: "nodule"})
    assert (every[0]["lesions_gt"], every[0]["lesion_fragments"], len(every_lesion)) == (2, 0, 2)
    assert row["dice"] == every[0]["dice"]
