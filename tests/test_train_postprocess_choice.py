"""Post-processing chosen on validation: the chooser on real label maps with added errors (Dice checked with
MONAI's compute_dice, components with scipy), and end to end on a tiny real hippocampus run: training saves
the choice, `medseg infer` applies it under the config's rules, `medseg tune-postprocess` redoes it."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from scipy import ndimage
from typer.testing import CliRunner

from medseg.cli import app
from medseg.postprocess import ComponentRule, choose_rules, postprocess

runner = CliRunner()
HIPPO = {1: "anterior", 2: "posterior"}
LIDC_SPACING = (0.742188, 0.742188, 2.5)  # patient LIDC-IDRI-0011, three nodules


def _dice(pred: np.ndarray, truth: np.ndarray, value: int) -> float:
    """MONAI Dice of one label (1.0 when both are empty, as validation scores)."""
    from monai.metrics import compute_dice

    p, t = (torch.from_numpy(a == value)[None, None] for a in (pred, truth))
    return float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0])


def _mean_dice(preds, truths, value) -> float:
    return float(np.mean([_dice(p, t, value) for p, t in zip(preds, truths, strict=True)]))


def _labels(folder, names) -> list[np.ndarray]:
    return [np.asarray(nib.load(folder / f"{name}.nii.gz").dataobj).astype(np.uint8) for name in names]


@pytest.fixture()
def hippocampus_truths(data_path) -> list[np.ndarray]:
    root = data_path("hippocampus/labelsTr")
    return _labels(root, sorted(p.name[:-7] for p in root.glob("*.nii.gz"))[:6])


def _lidc(data_path, *names) -> list[np.ndarray]:
    return _labels(data_path("lidc_nodules/labelsTr"), names)


def _side_by_side(*maps: np.ndarray, gap: int = 3) -> np.ndarray:
    """Label maps padded to one (Y, Z) and put next to each other along X, ``gap`` empty voxels apart."""
    shape = np.max([m.shape for m in maps], axis=0)
    padded = [np.pad(m, [(0, gap), (0, shape[1] - m.shape[1]), (0, shape[2] - m.shape[2])]) for m in maps]
    return np.concatenate(padded, axis=0)


def _add_cube(label_map: np.ndarray, corner, size: int, value: int) -> np.ndarray:
    """A copy with a ``size``^3 cube of ``value`` at ``corner``, which must lie in background, not next to
    any label (a separate component)."""
    out = label_map.copy()
    region = tuple(slice(max(c - 1, 0), c + size + 1) for c in corner)
    assert not label_map[region].any()
    out[tuple(slice(c, c + size) for c in corner)] = value
    return out


def _component_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels per 26-connected component (scipy)."""
    components, _ = ndimage.label(mask, np.ones((3, 3, 3)))
    return np.bincount(components.ravel())[1:]


def _choose(preds, truths, spacing, labels, contoured=None):
    contoured = contoured or [set(labels)] * len(preds)
    return choose_rules(preds, truths, [spacing] * len(preds), contoured, labels)


def test_clean_predictions_get_no_rule(hippocampus_truths):
    choices = _choose(hippocampus_truths, hippocampus_truths, (1, 1, 1), HIPPO)
    assert sorted(choices) == [1, 2]
    for choice in choices.values():
        assert choice.rule == ComponentRule() and not choice.changed and choice.cases == 6
        assert choice.dice_before == choice.dice_after == 1.0 and choice.gain == 0.0


def test_a_stray_blob_is_removed_by_keeping_the_largest(hippocampus_truths):
    truths = hippocampus_truths
    preds = [_add_cube(t, (0, 0, 0), 4, 1) if i % 2 == 0 else t for i, t in enumerate(truths)]
    choices = _choose(preds, truths, (1, 1, 1), HIPPO)
    anterior = choices[1]
    assert anterior.rule == ComponentRule("largest", keep=1), anterior
    assert not choices[2].changed  # posterior had no error
    cleaned = [postprocess(p, {1: anterior.rule}, (1, 1, 1))[0] for p in preds]
    before, after = _mean_dice(preds, truths, 1), _mean_dice(cleaned, truths, 1)
    assert before < 0.995 and after == 1.0
    assert anterior.dice_before == pytest.approx(before, abs=1e-6)
    assert anterior.dice_after == pytest.approx(after, abs=1e-6)
    assert anterior.gain == pytest.approx(after - before, abs=1e-6) and not anterior.lesion_like


def test_a_bilateral_structure_keeps_two(hippocampus_truths):
    """Two real hippocampi side by side (left and right, as one label) and a stray blob: keep 2, not 1."""
    truths = [_side_by_side(t, t[::-1]) for t in hippocampus_truths]
    preds = [_add_cube(t, (0, 0, 0), 3, 2) for t in truths]
    choice = _choose(preds, truths, (1, 1, 1), HIPPO)[2]
    assert choice.rule == ComponentRule("largest", keep=2), choice
    cleaned = [postprocess(p, {2: choice.rule}, (1, 1, 1))[0] for p in preds]
    assert _mean_dice(cleaned, truths, 2) == 1.0 and choice.dice_after == pytest.approx(1.0, abs=1e-6)
    one_side = [postprocess(p, {2: ComponentRule("largest")}, (1, 1, 1))[0] for p in preds]
    one_side_dice = _mean_dice(one_side, truths, 2)
    assert one_side_dice < 0.7 and choice.tried["largest"] == pytest.approx(one_side_dice, abs=1e-6)
    # Two truth components: lesion-like, and keeping two loses neither side.
    assert choice.lesion_like and choice.sensitivity_before == choice.sensitivity_after == 1.0


def test_specks_go_by_size_and_every_real_nodule_stays(data_path):
    """Real LIDC nodules (one case holds two of one patient's) with one-voxel false positives: the size bar
    removes the specks; keeping the largest would drop a nodule and is not chosen."""
    r1, r10, r6 = _lidc(data_path, "LIDC-IDRI-0011_R_1", "LIDC-IDRI-0011_R_10", "LIDC-IDRI-0011_R_6")
    truths = [_side_by_side(r10, r6), _side_by_side(r1), _side_by_side(r6)]
    preds = []
    for truth in truths:
        pred = truth
        for corner in [(0, 0, 0), (0, pred.shape[1] - 1, 0), (pred.shape[0] - 1, 0, 1)]:
            pred = _add_cube(pred, corner, 1, 1)
        preds.append(pred)
    choice = _choose(preds, truths, LIDC_SPACING, {1: "nodule"})[1]
    smallest_mm3 = min(_component_voxels(t == 1).min() for t in truths) * np.prod(LIDC_SPACING)
    assert choice.rule.mode == "min_size" and 0 < choice.rule.min_volume_mm3 < smallest_mm3, choice
    cleaned = [postprocess(p, {1: choice.rule}, LIDC_SPACING)[0] for p in preds]
    assert _mean_dice(cleaned, truths, 1) == 1.0 and choice.dice_after == pytest.approx(1.0, abs=1e-6)
    assert choice.dice_before == pytest.approx(_mean_dice(preds, truths, 1), abs=1e-6)
    assert choice.lesion_like and choice.sensitivity_before == choice.sensitivity_after == 1.0
    assert choice.tried["largest"] < choice.dice_after


def test_keep_largest_is_refused_when_it_would_lose_a_true_lesion(data_path):
    """A small nodule found by a blob mostly outside it: dropping that blob raises Dice, yet loses the
    lesion, so the lesion-like label keeps its raw prediction."""
    r1, r10, r6 = _lidc(data_path, "LIDC-IDRI-0011_R_1", "LIDC-IDRI-0011_R_10", "LIDC-IDRI-0011_R_6")
    truths = [_side_by_side(r10, r6), _side_by_side(r1)]
    small = _side_by_side(np.zeros_like(r10), r6) == 1
    blob = ndimage.binary_dilation(small, np.ones((3, 3, 1)), iterations=5)
    preds = [np.where(blob, 1, truths[0]).astype(np.uint8), truths[1]]
    assert len(_component_voxels(preds[0] == 1)) == 2
    largest = [postprocess(p, {1: ComponentRule("largest")}, LIDC_SPACING)[0] for p in preds]
    raw_dice, largest_dice = _mean_dice(preds, truths, 1), _mean_dice(largest, truths, 1)
    assert largest_dice > raw_dice + 0.05  # Dice alone would pick keep-largest
    assert not (largest[0] == 1)[small].any()  # which loses the small nodule
    for name in ("nodule", "region"):  # lesion-like by its name, and by two truth components in one case
        choice = _choose(preds, truths, LIDC_SPACING, {1: name})[1]
        assert choice.lesion_like and choice.rule == ComponentRule(), choice
        assert choice.tried["largest"] == pytest.approx(largest_dice, abs=1e-6)
        assert choice.sensitivity_before == choice.sensitivity_after == 1.0


def test_only_cases_that_contoured_a_label_count(hippocampus_truths):
    """A case that did not contour posterior: its (unscored) posterior prediction, a lone stray blob, must not
    make a rule for posterior."""
    truths = [t.copy() for t in hippocampus_truths]
    truths[0][truths[0] == 2] = 0  # not drawn
    preds = [t.copy() for t in truths]
    preds[0] = _add_cube(preds[0], (0, 0, 0), 4, 2)
    contoured = [{1}] + [{1, 2}] * 5
    choices = _choose(preds, truths, (1, 1, 1), HIPPO, contoured)
    assert choices[2].cases == 5 and not choices[2].changed and choices[2].dice_before == 1.0
    assert choices[1].cases == 6
    # Counted (as if posterior were absent there), the blob would go: the size bar makes that case's Dice 1.
    counted = _choose(preds, truths, (1, 1, 1), HIPPO)[2]
    assert counted.rule.mode == "min_size" and counted.dice_before == pytest.approx(5 / 6)


# --- end to end: the tiny real hippocampus run of conftest (10 cases, 2 validation cases) ---


@pytest.fixture()
def run_copy(hippocampus_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(hippocampus_run, copy, ignore=shutil.ignore_patterns("cache", "checkpoint_last.pt"))
    shutil.copy(_manifest(hippocampus_run), _manifest(copy))
    return copy


def _manifest(run):
    return run.parent / "hippocampus.yaml"


def _validation_cases(run) -> list:
    """The run's validation cases (:class:`medseg.data.dataset.Case`), from its manifest."""
    from medseg.data import load_dataset

    val_ids = json.loads((run / "splits.json").read_text())[0]["val"]
    by_id = {c.id: c for c in load_dataset(_manifest(run)).cases}
    return [by_id[i] for i in val_ids]


def _raw_and_final(run, image):
    """The model's prediction without any post-processing, and what `medseg infer`'s Predictor gives."""
    from dataclasses import replace

    from medseg.infer.predictor import Predictor
    from medseg.model.inference import predict_volume

    predictor = Predictor.from_dir(run, device="cpu")
    settings = replace(predictor._settings(None, None, None), rules={})
    raw = predict_volume(predictor.nets, image, predictor.plan, settings, predictor.device, predictor.dtype)
    return raw.label.array, predictor.predict(image).label.array, predictor


def test_training_saves_the_choice_and_validation_scores_it(hippocampus_run):
    from medseg.model import ModelFolder
    from medseg.preprocess.io import load_case

    run = hippocampus_run
    folder = ModelFolder(run)
    assert "postprocess.json" in folder.recorded_sums() and folder.verify() == []
    saved = json.loads((run / "postprocess.json").read_text())
    validation = json.loads((run / "validation.json").read_text())
    choice = validation["postprocess_choice"]
    assert sorted(choice) == ["anterior", "posterior"] and saved["choice"] == choice
    applied = {str(c["value"]): c["rule"] for c in choice.values() if c["rule"]["mode"] != "none"}
    assert saved["rules"] == applied == validation["postprocess_rules"]
    assert validation["postprocess"] == bool(applied)
    for name, entry in choice.items():
        assert entry["gain"] == pytest.approx(entry["dice_after"] - entry["dice_before"])
        assert entry["gain"] > 0.001 if entry["rule"]["mode"] != "none" else entry["gain"] == 0
        assert validation["per_class"][name] == pytest.approx(entry["dice_after"], abs=1e-6)
    # Inference gives the raw output post-processed with the saved rules, and validation.json scores exactly
    # that; the choice's "before" is the raw output's Dice.
    rules = {int(v): ComponentRule(**r) for v, r in saved["rules"].items()}
    raw_dice = {name: [] for name in HIPPO.values()}
    for case in _validation_cases(run):
        image, truth = load_case(case)
        raw, final, predictor = _raw_and_final(run, image)
        assert predictor.rules == rules
        assert np.array_equal(final, postprocess(raw, rules, image.spacing)[0])
        for value, name in HIPPO.items():
            assert validation["cases"][case.id][name] == pytest.approx(_dice(final, truth.array, value), abs=1e-6)
            raw_dice[name].append(_dice(raw, truth.array, value))
    for name, values in raw_dice.items():
        assert choice[name]["dice_before"] == pytest.approx(np.mean(values), abs=1e-6)


def test_infer_applies_saved_rules_under_the_config_rules(run_copy, tmp_path):
    """A saved choice (written as training writes it) changes `medseg infer`'s output and its case JSON; a
    rule in the config replaces the saved one for its label; export carries postprocess.json."""
    from medseg.infer.batch import InferOptions, run_batch
    from medseg.model import ModelFolder, export_model
    from medseg.preprocess.io import load_case

    folder = ModelFolder(run_copy)
    huge = {"mode": "min_size", "min_volume_mm3": 1e9, "fill_holes": False, "keep": 1}
    folder.write_postprocess({2: huge}, {})
    folder.reseal()
    case = _validation_cases(run_copy)[0]
    image, _ = load_case(case)
    raw, final, _ = _raw_and_final(run_copy, image)
    assert (raw == 2).sum() > 100 and not (final == 2).any()  # every posterior component is under 1e9 mm^3
    assert np.array_equal(final == 1, raw == 1)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / f"{case.id}.nii.gz").symlink_to(case.images[0])
    run_batch(run_copy, tmp_path / "in", tmp_path / "out", InferOptions(dicom_seg=False), device="cpu")
    record = json.loads((tmp_path / "out" / f"{case.id}.json").read_text())
    assert record["settings"]["postprocess"] == {"2": huge}
    written = np.asarray(nib.load(tmp_path / "out" / record["outputs"]["label"]).dataobj)
    assert np.array_equal(written, final)
    exported = tmp_path / "shared"
    export_model(run_copy, exported)
    assert (exported / "postprocess.json").is_file() and ModelFolder(exported).verify() == []
    assert np.array_equal(_raw_and_final(exported, image)[1], final)
    # The config's own rule for posterior wins over the saved one.
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["postprocess"]["rules"] = {2: {"mode": "none"}}
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config))
    folder.reseal()
    raw, final, predictor = _raw_and_final(run_copy, image)
    assert predictor.rules == {2: ComponentRule()} and np.array_equal(final, raw)


def test_tune_postprocess_redoes_the_choice_for_an_older_model(run_copy, hippocampus_run, tmp_path):
    from medseg.model import ModelFolder, export_model
    from medseg.preprocess.io import load_case

    # As a model trained before the choice existed: no postprocess.json, no choice in validation.json.
    (run_copy / "postprocess.json").unlink()
    old = json.loads((run_copy / "validation.json").read_text())
    for key in ("postprocess_choice", "postprocess_rules"):
        old.pop(key)
    (run_copy / "validation.json").write_text(json.dumps(old))
    ModelFolder(run_copy).reseal()
    assert "postprocess.json" not in ModelFolder(run_copy).recorded_sums()
    image, _ = load_case(_validation_cases(run_copy)[0])
    raw, final, predictor = _raw_and_final(run_copy, image)
    assert predictor.rules == {} and np.array_equal(raw, final)  # a folder without the file works as before

    missing = runner.invoke(app, ["tune-postprocess", str(run_copy)])
    assert missing.exit_code == 2 and "--dataset" in missing.output
    result = runner.invoke(app, ["tune-postprocess", str(run_copy), "--dataset", str(_manifest(hippocampus_run)),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "final validation" in result.output and "post-processing" in result.output
    assert ModelFolder(run_copy).verify() == [] and "postprocess.json" in ModelFolder(run_copy).recorded_sums()
    trained = json.loads((hippocampus_run / "postprocess.json").read_text())
    assert json.loads((run_copy / "postprocess.json").read_text()) == trained
    redone = json.loads((run_copy / "validation.json").read_text())
    trained_validation = json.loads((hippocampus_run / "validation.json").read_text())
    assert redone["postprocess_choice"] == trained["choice"]
    assert redone["per_class"] == pytest.approx(trained_validation["per_class"])
    # An exported model has no validation fold: a one-line error.
    export_model(run_copy, tmp_path / "shared")
    refused = runner.invoke(app, ["tune-postprocess", str(tmp_path / "shared"), "--dataset",
                                  str(_manifest(hippocampus_run))])
    assert refused.exit_code == 1 and "not a finished run folder" in refused.output
