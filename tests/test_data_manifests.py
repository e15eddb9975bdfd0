"""The shared datasets' manifests: a fixed test split that training never sees, by patient for LIDC."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medseg.data import load_dataset
from medseg.train.splits import split_cases

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "data_manifests"


@pytest.mark.parametrize("name", ["hippocampus", "openkbp", "lidc"])
def test_committed_manifests_are_what_the_seeded_generator_writes(shared_data, tmp_path, name):
    copy = tmp_path / "data_manifests"
    copy.mkdir()
    (copy / "make_manifests.py").write_text((MANIFESTS / "make_manifests.py").read_text())
    subprocess.run([sys.executable, str(copy / "make_manifests.py"), "--data", str(shared_data)], check=True,
                   capture_output=True)
    written = yaml.safe_load((copy / f"{name}.yaml").read_text())
    committed = yaml.safe_load((MANIFESTS / f"{name}.yaml").read_text())
    assert [c["id"] for c in written["cases"]] == [c["id"] for c in committed["cases"]]
    assert [c.get("split") for c in written["cases"]] == [c.get("split") for c in committed["cases"]]


def test_lidc_test_split_is_by_patient_and_training_never_sees_it(shared_data, tmp_path):
    dataset = load_dataset(MANIFESTS / "lidc.yaml")
    patient = re.compile(r"_R_\d+$")
    test = {patient.sub("", c.id) for c in dataset.cases if c.split == "test"}
    rest = {patient.sub("", c.id) for c in dataset.cases if c.split != "test"}
    assert not test & rest and 0.15 < len(test) / (len(test) + len(rest)) < 0.25
    folds = split_cases(dataset, 5, 0, tmp_path / "splits.json", r"^(LIDC-IDRI-\d+)")
    seen = {i for fold in folds for i in fold["train"] + fold["val"]}
    assert seen and not {i for i in seen if patient.sub("", i) in test}
