"""Partial annotations (OpenKBP: an organ missing from a label map was not drawn): loading the contoured
lists, the marginal loss, sampling, and scoring only where contoured."""

import json
from collections import Counter
from functools import partial

import numpy as np
import pytest
import torch
import yaml
from monai.losses import DiceCELoss

from medseg.data import check_dataset, load_dataset
from medseg.errors import MedsegError
from medseg.io import read_volume, write_volume
from medseg.metrics.evaluate import evaluate_case, evaluate_folder
from medseg.train.data import contoured_classes, label_classes, prepare_cases
from medseg.train.loop import deep_supervision_loss
from medseg.train.losses import marginal_dice_ce
from medseg.train.sampling import PatchSampler
from medseg.train.validation import load_validation, summarise, validate

# pt_10 lacks esophagus, larynx and mandible; pt_106 brainstem; pt_1 esophagus and larynx; pt_100 has all seven.
CASES = ["pt_1", "pt_10", "pt_100", "pt_106"]


@pytest.fixture()
def openkbp(data_path):
    return data_path("openkbp")


@pytest.fixture()
def small_openkbp(openkbp, tmp_path):
    """An MSD folder describing four OpenKBP cases (images and labels stay where they are, absolute paths),
    with their lines of annotated_labels.json."""
    spec = json.loads((openkbp / "dataset.json").read_text())
    spec["training"] = [{"image": str(openkbp / f"imagesTr/{c}.nii.gz"), "label": str(openkbp / f"labelsTr/{c}.nii.gz")}
                        for c in CASES]
    spec["numTraining"] = len(CASES)
    listed = json.loads((openkbp / "annotated_labels.json").read_text())
    root = tmp_path / "openkbp4"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps(spec))
    (root / "annotated_labels.json").write_text(json.dumps({c: listed[c] for c in CASES}))
    return root, {c: listed[c] for c in CASES}


def test_openkbp_contoured_counts_match_the_json(openkbp):
    listed = json.loads((openkbp / "annotated_labels.json").read_text())
    dataset = load_dataset(openkbp)
    assert dataset.problems == [] and len(dataset.labelled) == len(listed) == 203
    assert {c.id: list(c.annotated) for c in dataset.cases} == {k: sorted(v) for k, v in listed.items()}
    independent = Counter(v for values in listed.values() for v in values)
    assert dataset.contoured_counts() == {v: independent[v] for v in range(1, 8)}
    assert dataset.contoured_counts()[5] < 100  # esophagus: a partial label, the reason for all this


def test_check_prints_contoured_counts_and_accepts_the_real_cases(small_openkbp):
    root, listed = small_openkbp
    report = check_dataset(load_dataset(root))
    assert report.ok, [str(p) for p in report.problems]
    counts = Counter(v for values in listed.values() for v in values)
    lines = report.summary().splitlines()
    assert f"  Esophagus: contoured in {counts[5]} of 4 cases" in lines
    assert f"  Brainstem: contoured in {counts[1]} of 4 cases" in lines and len(lines) == 8


def test_manifest_and_datalist_keys_give_the_same_cases(small_openkbp, openkbp, tmp_path):
    root, listed = small_openkbp
    from_file = {c.id: c.annotated for c in load_dataset(root).cases}
    labels = json.loads((openkbp / "dataset.json").read_text())["labels"]
    manifest = {"name": "kbp", "channels": {0: "CT"}, "labels": {int(k): v for k, v in labels.items()},
                "cases": [{"id": c, "images": [str(openkbp / f"imagesTr/{c}.nii.gz")],
                           "label": str(openkbp / f"labelsTr/{c}.nii.gz"), "annotated": listed[c]} for c in CASES]}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(manifest))
    datalist = {"labels": labels, "channels": {"0": "CT"},
                "training": [{"image": e["images"][0], "label": e["label"], "annotated": e["annotated"]}
                             for e in manifest["cases"]]}
    (tmp_path / "d.json").write_text(json.dumps(datalist))
    for path in (tmp_path / "m.yaml", tmp_path / "d.json"):
        dataset = load_dataset(path)
        assert dataset.problems == [] and {c.id: c.annotated for c in dataset.cases} == from_file
    assert from_file["pt_10"] == (1, 2, 3, 4)


def test_annotation_problems_are_check_errors(small_openkbp):
    root, listed = small_openkbp
    bad = dict(listed, pt_1=[1, 2, 9], pt_999=[1])  # an undeclared value, an unknown case
    (root / "annotated_labels.json").write_text(json.dumps(bad))
    errors = [str(p) for p in check_dataset(load_dataset(root)).errors]
    assert any("pt_1" in e and "[9] are not among the declared labels" in e for e in errors), errors
    assert any("names case(s) ['pt_999'] that are not cases" in e for e in errors), errors
    # pt_1's label map holds 3, 4 and 7, which its list now says nobody drew
    assert any("pt_1" in e and "label value(s) [3, 4, 7]" in e and "does not name as contoured" in e
               for e in errors), errors
    spec = json.loads((root / "dataset.json").read_text())
    spec["training"][1]["annotated"] = [1, 2]  # pt_10: disagrees with the file's [1, 2, 3, 4]
    (root / "dataset.json").write_text(json.dumps(spec))
    assert any("'pt_10': 'annotated' [1, 2] differs" in p for p in load_dataset(root).problems)
    spec["training"][1]["annotated"] = "1,2"
    (root / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(MedsegError, match="must be a list of label values"):
        load_dataset(root)


def _batch(k=4):
    """Two samples of 12^3: class 1 and 2 blocks, background elsewhere; logits confident and right, except in
    the slab x < 2 (truth: background) where both samples predict class 3."""
    target = torch.zeros(2, 1, 12, 12, 12, dtype=torch.long)
    target[:, :, 3:7, 3:7, 3:7] = 1
    target[:, :, 8:11, 8:11, 8:11] = 2
    logits = 10.0 * torch.nn.functional.one_hot(target[:, 0], k).movedim(-1, 1).float()
    logits[:, :, :2] = 0.0
    logits[:, 3, :2] = 10.0
    return logits, target


def _swapped(logits, sample):
    """``logits`` with background and class 3 exchanged in the slab x < 2 of one sample (now predicting background)."""
    out = logits.clone()
    out[sample, [0, 3], :2] = logits[sample, [3, 0], :2]
    return out


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.5, 2.0)])
def test_marginal_loss_equals_dice_ce_when_everything_is_contoured(weights):
    torch.manual_seed(0)
    logits = 3 * torch.randn(3, 5, 10, 12, 8)
    target = torch.randint(0, 5, (3, 1, 10, 12, 8))
    everything = torch.ones(3, 5, dtype=torch.bool)
    monai = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, lambda_dice=weights[0], lambda_ce=weights[1])
    ours = partial(marginal_dice_ce, lambda_dice=weights[0], lambda_ce=weights[1])
    assert torch.allclose(ours(logits, target, everything), monai(logits, target), rtol=1e-6, atol=1e-7)
    stacked = torch.stack([logits, logits.flip(2), 0.5 * logits], 1)  # (B, 1 + levels, K, ...)
    assert torch.allclose(deep_supervision_loss(ours, stacked, target, everything),
                          deep_supervision_loss(monai, stacked, target), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("batch", [True, False])
def test_fully_contoured_fast_path_equals_the_marginal_computation(batch):
    """A batch that contoured everything skips the class merging; value and gradients stay those of the
    marginal computation, which is MONAI's DiceCELoss with the same ``batch`` (Dice over the batch, or per
    sample as MONAI's default)."""
    from medseg.train.losses import _marginal

    torch.manual_seed(1)
    logits = (3 * torch.randn(2, 4, 9, 10, 7)).requires_grad_()
    target = torch.randint(0, 4, (2, 1, 9, 10, 7))
    everything = torch.ones(2, 4, dtype=torch.bool)
    monai = DiceCELoss(to_onehot_y=True, softmax=True, batch=batch, lambda_dice=0.5, lambda_ce=2.0)
    fast = marginal_dice_ce(logits, target, everything, 0.5, 2.0, batch)
    assert torch.allclose(fast, monai(logits, target), rtol=1e-6, atol=1e-7)
    (grad_fast,) = torch.autograd.grad(fast, logits)
    slow = _marginal(logits, target, everything, 0.5, 2.0, batch)
    (grad_slow,) = torch.autograd.grad(slow, logits)
    assert torch.allclose(fast, slow, rtol=1e-6) and torch.allclose(grad_fast, grad_slow, rtol=1e-5, atol=1e-8)


def test_uncontoured_organ_predicted_on_background_is_not_penalised():
    logits, target = _batch()
    partial_mask = torch.tensor([[True, True, True, False], [True, True, True, True]])  # sample 0 did not draw 3
    loss = marginal_dice_ce(logits, target, partial_mask)
    # Moving probability between background and the undrawn organ changes nothing in sample 0 ...
    assert torch.isclose(marginal_dice_ce(_swapped(logits, 0), target, partial_mask), loss, rtol=1e-5)
    # ... but predicting background there instead of the drawn organ lowers the loss in sample 1,
    assert marginal_dice_ce(_swapped(logits, 1), target, partial_mask) < loss - 0.05
    # and with every class contoured sample 0 is penalised just the same.
    everything = torch.ones_like(partial_mask)
    penalised = marginal_dice_ce(logits, target, everything)
    assert marginal_dice_ce(_swapped(logits, 0), target, everything) < penalised - 0.05

    logits.requires_grad_(True)
    marginal_dice_ce(logits, target, partial_mask).backward()
    grad, probs = logits.grad, torch.softmax(logits.detach(), 1)
    # In sample 0 the loss sees background and class 3 only through p_bg + p_3: their logits' gradients are in
    # the ratio of their probabilities (the background-vs-foreground merge) ...
    assert torch.allclose(grad[0, 3, :2] * probs[0, 0, :2], grad[0, 0, :2] * probs[0, 3, :2], rtol=1e-4, atol=1e-12)
    # ... and ~0 next to the push away from class 3 where sample 1 contoured it.
    assert grad[0, 3, :2].abs().max() < 0.01 * grad[1, 3, :2].abs().min()
    assert (grad[1, 3, :2] > 0).all()  # gradient descent lowers the wrongly predicted class's logit


def test_per_sample_dice_averages_the_pairs_each_sample_contoured():
    """With ``batch=False`` the Dice term is the mean over (sample, contoured class) pairs: the batch's value is
    each sample's own loss weighted by how many classes it contoured."""
    logits, target = _batch()
    logits = logits + torch.randn_like(logits)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    alone = [marginal_dice_ce(logits[i:i + 1], target[i:i + 1], mask[i:i + 1], 1.0, 0.0, batch=False) for i in (0, 1)]
    both = marginal_dice_ce(logits, target, mask, 1.0, 0.0, batch=False)
    assert torch.isclose(both, (3 * alone[0] + 4 * alone[1]) / 7, rtol=1e-5)
    assert not torch.isclose(both, marginal_dice_ce(logits, target, mask, 1.0, 0.0, batch=True), rtol=1e-3)


def test_deep_supervision_passes_the_mask_to_every_level():
    logits, target = _batch()
    mask = torch.tensor([[True, True, False, False], [True, False, True, True]])
    stacked = torch.stack([logits, 0.5 * logits], 1)
    expected = (2 * marginal_dice_ce(logits, target, mask) + marginal_dice_ce(0.5 * logits, target, mask)) / 3
    assert torch.isclose(deep_supervision_loss(marginal_dice_ce, stacked, target, mask), expected)


def _real_training_data(root):
    """Raw OpenKBP label maps as class indices, and each case's contoured mask (no preprocessing: fast)."""
    dataset = load_dataset(root)
    values = sorted(dataset.labels)
    labels = [label_classes(read_volume(c.label, label=True).array, values) for c in dataset.cases]
    images = [np.zeros((1, *lab.shape), np.float32) for lab in labels]
    return dataset, labels, images, [contoured_classes(c, values) for c in dataset.cases]


def test_sampler_centres_only_on_contoured_classes_and_returns_the_masks(small_openkbp):
    root, listed = small_openkbp
    dataset, labels, images, masks = _real_training_data(root)
    assert [np.flatnonzero(m).tolist() for m in masks] == [[0, *sorted(listed[c.id])] for c in dataset.cases]
    # Paint esophagus (class 5) into pt_10, which did not contour it: the sampler must not believe those voxels.
    labels[1][60:70, 60:70, 60:70] = 5
    sampler = PatchSampler(images, labels, (32, 32, 32), list(range(1, 8)), 1.0, seed=0, contoured=masks)
    assert 1 not in sampler.cases_with[5] and sampler.cases_with[5]
    centred = Counter()
    for _ in range(60):
        batch = sampler.batch(4)
        assert batch.contoured.shape == (4, 8) and batch.contoured[:, 0].all()
        for b, k in enumerate(batch.centred):
            assert k is not None and batch.contoured[b, k], (k, batch.contoured[b])
            centred[k] += 1
            present = set(np.unique(batch.labels[b]).tolist())
            if present != {0, 5}:  # a patch is from the case whose mask it carries (bar the painted block)
                assert present - {5} <= set(np.flatnonzero(batch.contoured[b]).tolist())
    assert set(centred) == set(range(1, 8))


def test_prepared_cases_cache_the_mask_and_redo_it_when_the_lists_change(small_openkbp, preprocessing_plan, tmp_path):
    from dataclasses import replace

    root, listed = small_openkbp
    dataset = load_dataset(root)
    plan = preprocessing_plan((8.0, 8.0, 8.0), dataset.labels)
    _, labels, masks = prepare_cases(dataset, ["pt_10"], plan, tmp_path / "cache")
    assert np.flatnonzero(masks[0]).tolist() == [0, 1, 2, 3, 4] and set(np.unique(labels[0])) <= {0, 1, 2, 3, 4}
    with np.load(tmp_path / "cache" / "pt_10.npz") as cached:
        assert np.array_equal(cached["contoured"], masks[0])
    dataset.cases = [replace(c, annotated=None) for c in dataset.cases]
    _, _, masks = prepare_cases(dataset, ["pt_10"], plan, tmp_path / "cache")
    with np.load(tmp_path / "cache" / "pt_10.npz") as cached:
        assert masks[0].all() and cached["contoured"].all()


class _AlwaysMandible(torch.nn.Module):
    """A 'network' that predicts class 7 (mandible) everywhere."""

    def forward(self, x):
        out = torch.zeros(x.shape[0], 8, *x.shape[2:], dtype=x.dtype)
        out[:, 7] = 1.0
        return out


def test_validation_scores_only_contoured_classes(small_openkbp, preprocessing_plan):
    from medseg.model.inference import InferenceSettings

    root, listed = small_openkbp
    dataset = load_dataset(root)
    plan = preprocessing_plan((8.0, 8.0, 8.0), dataset.labels)
    val = load_validation(dataset, ["pt_10", "pt_100"])
    scores = validate([_AlwaysMandible()], val, plan, InferenceSettings(overlap=0.0, sw_batch_size=8),
                      torch.device("cpu"), None)
    assert sorted(scores["pt_10"]) == sorted(["Brainstem", "SpinalCord", "RightParotid", "LeftParotid"])
    assert len(scores["pt_100"]) == 7 and 0 < scores["pt_100"]["Mandible"] < 1
    summary = summarise(scores, list(dataset.foreground_labels.values()))
    assert summary["per_class"]["Mandible"] == scores["pt_100"]["Mandible"]  # pt_10 did not draw it
    assert summary["scored_cases"]["Mandible"] == 1 and summary["scored_cases"]["Brainstem"] == 2
    assert summary["mean"] == pytest.approx(np.mean(list(summary["per_class"].values())))


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()) if a.sum() + b.sum() else 1.0


def test_evaluate_skips_uncontoured_classes(small_openkbp, openkbp, tmp_path):
    root, listed = small_openkbp
    preds = tmp_path / "pred"
    preds.mkdir()
    truths = {c: read_volume(openkbp / f"labelsTr/{c}.nii.gz", label=True) for c in ("pt_10", "pt_100")}
    for case_id, truth in truths.items():
        pred = truth.array.copy()
        pred[pred == 3] = 0  # right parotid missed
        pred[10:30, 10:30, 10:30] = 7  # mandible drawn where the truth has background
        write_volume(truth.with_array(pred), preds / f"{case_id}.nii.gz", label=True)
    result = evaluate_folder(preds, root, tmp_path / "eval")
    names = load_dataset(root).labels
    expected = {}
    for case_id, truth in truths.items():
        pred = read_volume(preds / f"{case_id}.nii.gz", label=True).array
        for value in listed[case_id]:
            expected[(case_id, names[value])] = _dice(pred == value, truth.array == value)
    assert {(r["case"], r["label"]): r["dice"] for r in result["rows"]} == pytest.approx(expected)
    assert result["uncontoured_omitted"] == {"Esophagus": 1, "Larynx": 1, "Mandible": 1}  # all pt_10's
    assert result["summary"]["Mandible"]["dice"]["n"] == 1
    assert result["summary"]["Mandible"]["dice"]["mean"] == pytest.approx(expected[("pt_100", "Mandible")])
    assert result["summary"]["RightParotid"]["dice"]["mean"] == 0.0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["uncontoured_omitted"] == result["uncontoured_omitted"]
    # Without the list, pt_10's painted mandible would have scored 0.
    pred10 = read_volume(preds / "pt_10.nii.gz", label=True)
    assert evaluate_case(pred10, truths["pt_10"], {7: "Mandible"})[0]["dice"] == 0.0
    assert evaluate_case(pred10, truths["pt_10"], {7: "Mandible"}, annotated=(1, 2, 3, 4)) == []


def test_intensity_flag_ignores_the_air_around_a_ct_body(small_openkbp):
    """A real head-and-neck CT is mostly air outside the body: the intensity check must not flag it against its
    own training fingerprint; the same voxels on an MR channel (where nothing is skipped) are flagged."""
    from types import SimpleNamespace

    from medseg.infer.plausibility import input_flags
    from medseg.preprocess import fingerprint
    from medseg.preprocess.io import load_case

    root, _ = small_openkbp
    dataset = load_dataset(root)
    fp = fingerprint(dataset)
    ct = SimpleNamespace(channels={0: "CT"})
    image, _ = load_case(dataset.cases[0])
    assert (image.array <= -900).mean() > 0.5  # mostly air, as every OpenKBP scan
    assert not [f for f in input_flags(image, ct, fp) if "intensities" in f]
    as_mr = SimpleNamespace(channels={0: "MR"})  # the same numbers read as MR: air is not skipped
    assert [f for f in input_flags(image, as_mr, fp) if "intensities" in f]
