"""Datasets and `medseg check` on the real MSD Hippocampus folder and on damaged copies of it."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import nnunet_copy

from medseg.data import check_dataset, load_dataset
from medseg.data.phantom import write_phantom_dataset
from medseg.errors import MedsegError
from medseg.io import read_volume, write_volume


def test_msd_hippocampus_loads_and_checks_clean(data_path):
    dataset = load_dataset(data_path("hippocampus"))
    assert dataset.source == "msd" and len(dataset.cases) == 208
    assert dataset.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    report = check_dataset(dataset)
    assert report.ok and report.errors == [], [str(p) for p in report.problems]
    assert report.label_values == {0, 1, 2} and "labels declared [0, 1, 2], found [0, 1, 2]" in report.summary()


@pytest.fixture()
def small_hippocampus(data_path, tmp_path):
    """A 4-case copy of the MSD Hippocampus dataset to damage."""
    src = data_path("hippocampus")
    spec = json.loads((src / "dataset.json").read_text())
    spec["training"] = spec["training"][:4]
    spec["numTraining"] = 4
    dst = tmp_path / "hippo"
    for entry in spec["training"]:
        for key in ("image", "label"):
            (dst / entry[key]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / entry[key], dst / entry[key])
    (dst / "dataset.json").write_text(json.dumps(spec))
    return dst, spec


def _messages(folder):
    return [str(p) for p in check_dataset(load_dataset(folder)).errors]


def test_deleted_label_is_reported(small_hippocampus):
    root, spec = small_hippocampus
    (root / spec["training"][1]["label"]).unlink()
    errors = _messages(root)
    assert len(errors) == 1 and "file not found" in errors[0] and "hippocampus_003" in errors[0]


def test_wrong_shape_label_is_reported(small_hippocampus):
    root, spec = small_hippocampus
    path = root / spec["training"][2]["label"]
    label = read_volume(path, label=True)
    write_volume(label.with_array(label.array[:-3]), path, overwrite=True)
    errors = _messages(root)
    assert len(errors) == 1 and "label grid does not match the image: shape" in errors[0]


def test_out_of_range_label_value_is_reported(small_hippocampus):
    root, spec = small_hippocampus
    path = root / spec["training"][0]["label"]
    label = read_volume(path, label=True)
    array = label.array.copy()
    array[0, 0, 0] = 7
    write_volume(label.with_array(array), path, overwrite=True)
    errors = _messages(root)
    assert len(errors) == 1 and "label value(s) [7] not among the declared labels [0, 1, 2]" in errors[0]


def test_every_problem_is_listed_at_once(small_hippocampus):
    root, spec = small_hippocampus
    (root / spec["training"][1]["label"]).unlink()
    image_path = root / spec["training"][3]["image"]
    image = read_volume(image_path)
    array = image.array.copy()
    array[1, 1, 1] = np.nan
    write_volume(image.with_array(array), image_path, overwrite=True)
    spec["training"].append(spec["training"][0])
    (root / "dataset.json").write_text(json.dumps(spec))
    errors = " | ".join(_messages(root))
    assert "file not found" in errors and "NaN" in errors and "duplicate case id 'hippocampus_001'" in errors


def test_nnunet_v2_folder_and_manifest(tmp_path):
    src = write_phantom_dataset(tmp_path / "msd", cases=3)
    ids = {f"phantom_{i:03d}": f"phantom_{i:03d}" for i in range(3)}
    nn = nnunet_copy(src, tmp_path / "Dataset001_Phantom", ids, {"background": 0, "organ": 1, "lesion": 2})
    dataset = load_dataset(nn)
    assert dataset.source == "nnunet" and [c.id for c in dataset.cases] == ["phantom_000", "phantom_001", "phantom_002"]
    assert check_dataset(dataset).ok

    manifest = tmp_path / "msd" / "medseg.yaml"
    manifest.write_text(yaml.safe_dump({
        "name": "phantoms", "channels": {0: "MR"}, "labels": {0: "background", 1: "organ", 2: "lesion"},
        "cases": [{"id": "a", "images": ["imagesTr/phantom_000.nii.gz"], "label": "labelsTr/phantom_000.nii.gz",
                   "fold": 0},
                  {"id": "b", "images": ["imagesTr/phantom_001.nii.gz"]}]}))
    report = check_dataset(load_dataset(tmp_path / "msd"))  # the manifest wins over dataset.json
    assert report.ok and len(report.warnings) == 1 and "no label" in str(report.warnings[0])


def test_manifest_typos_and_non_datasets_are_errors(tmp_path):
    (tmp_path / "m.yaml").write_text("name: x\ncasess: []\n")
    with pytest.raises(MedsegError, match="unknown manifest key"):
        load_dataset(tmp_path / "m.yaml")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsegError, match="not a dataset folder"):
        load_dataset(tmp_path / "empty")


def test_label_on_other_grid_and_channel_count(tmp_path):
    root = write_phantom_dataset(tmp_path / "d", cases=2)
    label_path = root / "labelsTr/phantom_001.nii.gz"
    img = nib.load(label_path)
    moved = img.affine.copy()
    moved[:3, 3] += 5
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), moved), label_path)
    errors = _messages(root)
    assert len(errors) == 1 and "origin" in errors[0]


def test_nnunet_images_ts_load_as_test_cases(tmp_path):
    from medseg.infer.inputs import discover

    src = write_phantom_dataset(tmp_path / "msd", cases=4)
    nn = tmp_path / "Dataset002_Phantom"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (nn / sub).mkdir(parents=True)
    for i in range(4):
        part = "Tr" if i < 2 else "Ts"
        shutil.copy(src / f"imagesTr/phantom_{i:03d}.nii.gz", nn / f"images{part}/phantom_{i:03d}_0000.nii.gz")
        if part == "Tr":
            shutil.copy(src / f"labelsTr/phantom_{i:03d}.nii.gz", nn / f"labelsTr/phantom_{i:03d}.nii.gz")
    (nn / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    dataset = load_dataset(nn)
    assert dataset.problems == [] and [c.id for c in dataset.trainable] == ["phantom_000", "phantom_001"]
    assert [(c.id, c.split, c.label) for c in dataset.cases[2:]] == [("phantom_002", "test", None),
                                                                    ("phantom_003", "test", None)]
    assert [c.id for c in discover(nn)[0]] == ["phantom_002", "phantom_003"]


def test_datalist_file_loads_with_folds_and_testing(tmp_path):
    write_phantom_dataset(tmp_path / "d", cases=5)

    def entry(i, **extra):
        return {"image": f"imagesTr/phantom_{i:03d}.nii.gz", "label": f"labelsTr/phantom_{i:03d}.nii.gz", **extra}

    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"dataroot": "d", "labels": {"0": "background", "1": "organ", "2": "lesion"},
                                "channels": {"0": "MR"}, "training": [entry(i, fold=i % 2) for i in range(4)],
                                "testing": [{"image": "imagesTr/phantom_004.nii.gz"}]}))
    dataset = load_dataset(path)
    assert dataset.source == "datalist" and dataset.problems == []
    assert [(c.fold, c.split) for c in dataset.cases] == [(0, None), (1, None), (0, None), (1, None), (None, "test")]
    assert check_dataset(dataset).ok
    spec = json.loads(path.read_text())
    spec["testing"][0]["fold"] = 0
    path.write_text(json.dumps(spec))
    with pytest.raises(MedsegError, match="testing entry 0: 'fold' is read on training entries only"):
        load_dataset(path)
