"""The field's folder formats on real MSD Hippocampus cases: nnU-Net inference folders (one file per channel)
and raw dataset folders for `medseg infer` and `medseg evaluate`, and MONAI / Auto3DSeg datalists."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import compute_dice
from scipy import ndimage

from medseg.data import check_dataset, load_dataset
from medseg.data.dataset import description_kind
from medseg.errors import MedsegError
from medseg.infer.inputs import discover
from medseg.metrics.evaluate import evaluate_folder
from medseg.preprocess.io import load_image
from medseg.train.splits import split_cases

LABELS = {0: "background", 1: "anterior", 2: "posterior"}


@pytest.fixture()
def hippo(data_path):
    """The real MSD Hippocampus folder and its first ten case ids."""
    root = data_path("hippocampus")
    return root, sorted(p.name[: -len(".nii.gz")] for p in (root / "imagesTr").glob("*.nii.gz"))[:10]


def _write_channels(src, folder, case_id):
    """``<case>_0000`` (the real image) and ``<case>_0001`` (the same image halved, as float) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, folder / f"{case_id}_0000.nii.gz")
    img = nib.load(src)
    second = nib.Nifti1Image(np.asarray(img.dataobj, np.float32) * 0.5, img.affine, img.header)
    second.set_data_dtype(np.float32)
    nib.save(second, folder / f"{case_id}_0001.nii.gz")


@pytest.fixture()
def nnunet_raw(hippo, tmp_path):
    """An nnU-Net v2 raw folder: 3 two-channel training cases (imagesTr/labelsTr), 3 test cases (imagesTs/labelsTs)."""
    src, ids = hippo
    root = tmp_path / "Dataset004_Hippocampus"
    for part, chosen in (("Tr", ids[:3]), ("Ts", ids[3:6])):
        (root / f"labels{part}").mkdir(parents=True)
        for case in chosen:
            _write_channels(src / f"imagesTr/{case}.nii.gz", root / f"images{part}", case)
            shutil.copy(src / f"labelsTr/{case}.nii.gz", root / f"labels{part}/{case}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR", "1": "MR_half"}, "labels": {v: k for k, v in LABELS.items()},
        "numTraining": 3, "file_ending": ".nii.gz"}))
    return root, ids[:3], ids[3:6]


def test_nnunet_channel_files_are_grouped_in_channel_order(nnunet_raw, hippo):
    root, _, test_ids = nnunet_raw
    folder = root / "imagesTs"
    shutil.copy(hippo[0] / f"imagesTr/{hippo[1][6]}.nii.gz", folder / "extra.nii.gz")  # not channel-named
    cases, skipped = discover(folder)
    assert skipped == [] and [c.id for c in cases] == sorted(test_ids + ["extra"])
    grouped = [c for c in cases if c.id != "extra"]
    assert all([p.name for p in c.images] == [f"{c.id}_0000.nii.gz", f"{c.id}_0001.nii.gz"] for c in grouped)
    volume = load_image(grouped[0].images)
    assert volume.num_channels == 2
    assert np.allclose(volume.array[1], volume.array[0] * 0.5)
    assert [p.name for p in next(c for c in cases if c.id == "extra").images] == ["extra.nii.gz"]


def test_numbered_files_without_a_0000_stay_single_channel_cases(hippo, tmp_path):
    src, ids = hippo
    for n in (1, 2):
        shutil.copy(src / f"imagesTr/{ids[n]}.nii.gz", tmp_path / f"scan_{n:04d}.nii.gz")
    cases, _ = discover(tmp_path)
    assert [(c.id, len(c.images)) for c in cases] == [("scan_0001", 1), ("scan_0002", 1)]


@pytest.mark.parametrize(("names", "message"), [
    (["a_0000.nii.gz", "a_0002.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz", "b_0002.nii.gz"],
     "case 'a' lacks channel file(s) _0001 (found _0000, _0002)"),
    (["a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz", "c_0000.nii.gz"],
     "case 'c' has 1 channel file(s) but 2 case(s) have 2 (e.g. 'a')"),
    (["a_0000.nii.gz", "a_0000.nii"], "case 'a' has two files for channel _0000"),
    (["a_0000.nii.gz", "a.nii.gz"], "two inputs would both be written as a.nii.gz"),
])
def test_channel_files_that_do_not_add_up_are_one_line_errors(tmp_path, names, message):
    for name in names:
        (tmp_path / name).write_bytes(b"")  # discovery goes by names; nothing is read
    with pytest.raises(MedsegError) as caught:
        discover(tmp_path)
    assert message in str(caught.value) and "\n" not in str(caught.value) and str(tmp_path) in str(caught.value)


def test_nnunet_raw_folder_test_cases_are_segmented_and_never_train(nnunet_raw):
    root, train_ids, test_ids = nnunet_raw
    dataset = load_dataset(root)
    assert dataset.problems == [] and [c.id for c in dataset.trainable] == train_ids
    assert [(c.id, c.split, c.label.name) for c in dataset.cases if c.split] == [
        (i, "test", f"{i}.nii.gz") for i in test_ids]
    report = check_dataset(dataset)
    assert report.ok and report.warnings == [], [str(p) for p in report.problems]
    assert "6 cases, 6 labelled (3 test), 2 channel(s)" in report.summary()
    assert all(set(s["train"] + s["val"]) == set(train_ids) for s in split_cases(dataset, folds=3, seed=0))

    cases, _ = discover(root)
    assert [c.id for c in cases] == test_ids and all(len(c.images) == 2 for c in cases)
    shutil.rmtree(root / "imagesTr")
    shutil.rmtree(root / "labelsTr")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR", "1": "MR_half"}, "labels": {"background": 0}, "file_ending": ".nii.gz"}))
    assert [c.id for c in discover(root)[0]] == test_ids  # an inference-only raw folder


def _eroded(label: np.ndarray) -> np.ndarray:
    """Each structure lost its outer layer of voxels (a realistic under-segmentation)."""
    out = label.copy()
    for value in (1, 2):
        mask = label == value
        out[mask & ~ndimage.binary_erosion(mask)] = 0
    return out


def _monai_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p = torch.from_numpy(pred)[None, None].float()
    t = torch.from_numpy(truth)[None, None].float()
    return float(compute_dice(torch.cat([1 - p, p], 1), torch.cat([1 - t, t], 1), include_background=False))


@pytest.fixture()
def predictions(nnunet_raw, tmp_path):
    """Predictions named as `medseg infer` names them (``CASE.nii.gz``) for the test cases: the first is the
    ground truth itself, the others the eroded ground truth; with the Dice MONAI gives each (case, label)."""
    root, _, test_ids = nnunet_raw
    out = tmp_path / "pred"
    out.mkdir()
    expected = {}
    for n, case in enumerate(test_ids):
        img = nib.load(root / f"labelsTs/{case}.nii.gz")
        truth = np.asarray(img.dataobj).astype(np.uint8)
        pred = truth if n == 0 else _eroded(truth)
        nib.save(nib.Nifti1Image(pred, img.affine, img.header), out / f"{case}.nii.gz")
        expected.update({(case, v): _monai_dice(pred == v, truth == v) for v in (1, 2)})
    return out, expected


@pytest.mark.parametrize("gt", ["labelsTs", "raw folder", "raw folder without imagesTs"])
def test_evaluate_pairs_nnunet_outputs_with_labels_ts(nnunet_raw, predictions, tmp_path, gt):
    root, _, test_ids = nnunet_raw
    pred, expected = predictions
    if gt == "raw folder without imagesTs":
        shutil.rmtree(root / "imagesTs")
    result = evaluate_folder(pred, root / "labelsTs" if gt == "labelsTs" else root, tmp_path / "eval")
    assert result["errors"] == []  # the training cases (labelsTr) are not asked for
    names = {f"label_{v}" if gt == "labelsTs" else LABELS[v]: v for v in (1, 2)}
    got = {(r["case"], names[r["label"]]): r["dice"] for r in result["rows"]}
    assert got.keys() == expected.keys() and {c for c, _ in got} == set(test_ids)
    assert got[(test_ids[0], 1)] == got[(test_ids[0], 2)] == 1.0
    assert all(got[k] == pytest.approx(expected[k], abs=1e-6) for k in expected)
    assert 0.2 < got[(test_ids[1], 1)] < 0.95


def _datalist(tmp, name, **content):
    path = tmp / name
    path.write_text(json.dumps({"labels": {str(k): v for k, v in LABELS.items()}, "modality": {"0": "MRI"},
                                **content}))
    return path


def _entry(case, fold=None, label=True):
    entry = {"image": f"imagesTr/{case}.nii.gz"}
    if label:
        entry["label"] = f"labelsTr/{case}.nii.gz"
    return entry if fold is None else {**entry, "fold": fold}


def test_datalist_with_folds_and_testing_over_real_files(hippo, tmp_path):
    src, ids = hippo
    path = _datalist(tmp_path, "folds.json", dataroot=str(src),
                     training=[_entry(c, fold=n % 3) for n, c in enumerate(ids[:6])],
                     testing=[_entry(ids[6], label=False), _entry(ids[7])])
    dataset = load_dataset(path)
    assert dataset.source == "datalist" and dataset.labels == LABELS and dataset.channels == {0: "MRI"}
    assert [(c.id, c.fold, c.split) for c in dataset.cases] == (
        [(c, n % 3, None) for n, c in enumerate(ids[:6])] + [(ids[6], None, "test"), (ids[7], None, "test")])
    assert dataset.cases[0].images == (src.resolve() / f"imagesTr/{ids[0]}.nii.gz",)
    report = check_dataset(dataset)
    assert report.ok and "8 cases, 7 labelled (1 test)" in report.summary(), [str(p) for p in report.problems]
    splits = split_cases(dataset, folds=5, seed=0)
    assert [s["val"] for s in splits] == [sorted(ids[n] for n in range(6) if n % 3 == f) for f in range(3)]
    assert all(ids[6] not in s["train"] + s["val"] and ids[7] not in s["train"] + s["val"] for s in splits)
    assert [c.id for c in discover(path)[0]] == [ids[6], ids[7]]  # `medseg infer` segments the testing entries


def test_datalist_validation_entries_are_the_validation_fold(hippo, tmp_path):
    src, ids = hippo
    (tmp_path / "data").symlink_to(src)
    path = _datalist(tmp_path, "val.json", dataroot="data", training=[_entry(c) for c in ids[:4]],
                     validation=[_entry(c) for c in ids[4:6]], testing=[_entry(ids[6])])
    dataset = load_dataset(path)
    assert [c.split for c in dataset.cases] == [None] * 4 + ["val"] * 2 + ["test"]
    assert check_dataset(dataset).ok
    assert split_cases(dataset, folds=5, seed=0) == [{"train": sorted(ids[:4]), "val": sorted(ids[4:6])}]

    both = _datalist(tmp_path, "both.json", dataroot="data", training=[_entry(c, fold=n % 2) for n, c in
                                                                        enumerate(ids[:4])],
                     validation=[_entry(c) for c in ids[4:6]])
    problems = load_dataset(both).problems
    assert any("training folds and a 'validation' list" in p for p in problems)


def test_datalist_channel_lists_paths_beside_the_json_and_evaluation(nnunet_raw, predictions, tmp_path):
    root, train_ids, test_ids = nnunet_raw
    pred, expected = predictions

    def entry(part, case, label=True):
        out = {"image": [f"images{part}/{case}_0000.nii.gz", f"images{part}/{case}_0001.nii.gz"]}
        return {**out, "label": f"labels{part}/{case}.nii.gz"} if label else out

    path = root / "datalist.json"  # no dataroot: paths are relative to the JSON's folder
    path.write_text(json.dumps({"labels": {str(k): v for k, v in LABELS.items()}, "channels": {"0": "MR", "1": "H"},
                                "training": [entry("Tr", c) for c in train_ids],
                                "testing": [entry("Ts", c) for c in test_ids]}))
    dataset = load_dataset(path)
    assert [c.id for c in dataset.cases] == train_ids + test_ids and all(len(c.images) == 2 for c in dataset.cases)
    assert check_dataset(dataset).ok
    assert [c.id for c in discover(path)[0]] == test_ids
    result = evaluate_folder(pred, path, tmp_path / "eval")
    assert result["errors"] == [] and {r["case"] for r in result["rows"]} == set(test_ids)
    got = {(r["case"], {"anterior": 1, "posterior": 2}[r["label"]]): r["dice"] for r in result["rows"]}
    assert all(got[k] == pytest.approx(expected[k], abs=1e-6) for k in expected)


def test_datalist_without_labels_or_channels_is_refused_saying_what_to_add(hippo, tmp_path):
    src, ids = hippo
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"dataroot": str(src), "training": [_entry(c, fold=0) for c in ids[:2]]}))
    with pytest.raises(MedsegError, match='names no labels and no channels; add "labels": {"0": "background"'):
        load_dataset(plain)
    plain.write_text(json.dumps({"training": [_entry(c) for c in ids[:2]], "labels": {"0": "background"}}))
    with pytest.raises(MedsegError, match='names no channels; add "channels": {"0": "CT"}') as caught:
        load_dataset(plain)
    assert "\n" not in str(caught.value) and "plain.json" in str(caught.value)


def test_datalist_and_msd_are_told_apart(hippo, tmp_path):
    src, ids = hippo
    msd = json.loads((src / "dataset.json").read_text())
    assert description_kind(msd) == "msd" and load_dataset(src).source == "msd"
    assert description_kind({"training": [], "labels": {}, "modality": {}}) == "msd"
    assert description_kind({"training": [], "labels": {}, "channels": {}}) == "datalist"
    assert description_kind({"training": [{"image": ["a_0000.nii.gz", "a_0001.nii.gz"]}], "modality": {}}) == "datalist"
    assert description_kind({"training": [], "test": [{"image": "t.nii.gz"}], "numTraining": 0}) == "datalist"
    assert description_kind({"channel_names": {}, "training": []}) == "nnunet"
    assert description_kind({"name": "x", "casess": []}) == "manifest"  # its loader names the unknown key

    btcv_like = {**msd, "training": msd["training"][:3], "validation": msd["training"][3:5],
                 "test": [e["image"] for e in msd["training"][5:7]], "numTraining": 5, "numTest": 2}
    folder = tmp_path / "btcv_like"
    folder.mkdir()
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).symlink_to(src / sub)
    (folder / "dataset.json").write_text(json.dumps(btcv_like))
    dataset = load_dataset(folder)
    assert dataset.source == "datalist" and dataset.channels == {0: "MRI"} and dataset.labels[2] == "Posterior"
    assert [c.split for c in dataset.cases] == [None] * 3 + ["val"] * 2 + ["test"] * 2
    assert [c.id for c in discover(folder)[0]] == ids[5:7]


def test_datalist_ids_from_per_case_folders_stay_unique(hippo, tmp_path):
    src, ids = hippo
    for case in ids[:2]:
        (tmp_path / case).mkdir()
        (tmp_path / case / "imaging.nii.gz").symlink_to(src / f"imagesTr/{case}.nii.gz")
    path = _datalist(tmp_path, "kits_like.json", training=[{"image": f"{c}/imaging.nii.gz"} for c in ids[:2]],
                     testing=[{"image": f"imagesTr/{ids[2]}.nii.gz"}], dataroot=str(tmp_path))
    (tmp_path / "imagesTr").symlink_to(src / "imagesTr")
    assert [c.id for c in load_dataset(path).cases] == [f"{ids[0]}_imaging", f"{ids[1]}_imaging", ids[2]]
