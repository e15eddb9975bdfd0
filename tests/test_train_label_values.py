"""Non-consecutive label values (0, 5, 7): checked, trained as class indices, predicted as the values."""

import json

import numpy as np
import pytest
from conftest import tiny

from medseg.config import load_config
from medseg.data import check_dataset, load_dataset
from medseg.data.phantom import write_phantom_dataset
from medseg.errors import MedsegError
from medseg.infer.predictor import Predictor
from medseg.io import read_volume, write_volume
from medseg.train import train
from medseg.train.data import label_classes

TINY = tiny("train.iterations_per_epoch=10", "train.epochs=4")
VALUES = {0: "background", 5: "organ", 7: "lesion"}


@pytest.fixture(scope="module")
def relabelled(tmp_path_factory):
    """Five phantoms whose organ is 5 and lesion 7."""
    root = write_phantom_dataset(tmp_path_factory.mktemp("ph"), cases=5, shape=(40, 40, 14), spacing=(1.5, 1.5, 4.0))
    for path in sorted((root / "labelsTr").glob("*.nii.gz")):
        label = read_volume(path, label=True)
        write_volume(label.with_array(np.asarray([0, 5, 7], np.uint8)[label.array]), path, overwrite=True)
    spec = json.loads((root / "dataset.json").read_text())
    spec["labels"] = {str(k): v for k, v in VALUES.items()}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def test_check_reports_the_values_found(relabelled):
    report = check_dataset(load_dataset(relabelled))
    assert report.ok and report.label_values == {0, 5, 7}
    assert "labels declared [0, 5, 7], found [0, 5, 7]" in report.summary()


def test_check_reports_undeclared_and_unused_values(relabelled, tmp_path):
    spec = json.loads((relabelled / "dataset.json").read_text())
    spec["labels"] = {"0": "background", "1": "organ", "5": "kidney"}
    spec["training"] = [{k: str(relabelled / v) for k, v in entry.items()} for entry in spec["training"]]
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    report = check_dataset(load_dataset(tmp_path))
    assert "found [0, 5, 7]" in report.summary()
    assert len(report.errors) == 5 and all("label value(s) [7] not among" in str(p) for p in report.errors)
    assert [str(p) for p in report.warnings] == ["WARNING declared label(s) [1] found in no label map"]


def test_label_values_map_to_class_indices():
    label = np.array([[[0, 5], [7, 5]]], np.int16)
    assert label_classes(label, [7, 0, 5]).tolist() == [[[0, 1], [2, 1]]]
    with pytest.raises(MedsegError, match=r"\[6\] not among the declared labels \[0, 5, 7\]"):
        label_classes(np.array([0, 6, 7]), [0, 5, 7])


def test_training_and_inference_with_values_0_5_7(relabelled, tmp_path):
    out = tmp_path / "run"
    train(relabelled, out, load_config(None, TINY))
    for path in (out / "cache").glob("*.npz"):
        with np.load(path) as cached:
            assert set(np.unique(cached["label"]).tolist()) == {0, 1, 2}, path.name
            assert cached["label_values"].tolist() == [0, 5, 7]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert set(log[-1]["val_dice"]) == {"organ", "lesion"} and log[-1]["val_dice"]["organ"] > 0.3, log[-1]
    image = read_volume(relabelled / "imagesTr/phantom_000.nii.gz")
    predicted = Predictor.from_dir(out, device="cpu").predict(image).label.array
    values = set(np.unique(predicted).tolist())
    assert values <= {0, 5, 7} and 5 in values, values
