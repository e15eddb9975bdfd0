"""Splits: test cases never train or validate; MSD folds, nnU-Net splits_final.json and manifest
train/val/test splits are honoured; contradictions are dataset problems."""

import json
import shutil
from collections import Counter

import pytest
import yaml
from conftest import nnunet_copy, tiny

from medseg.config import load_config
from medseg.data import check_dataset, load_dataset
from medseg.data.phantom import write_phantom_dataset
from medseg.errors import MedsegError
from medseg.train import train
from medseg.train.splits import split_cases

TINY = tiny("model.max_filters=16", "train.iterations_per_epoch=2", "train.epochs=1",
            "train.patch_size=[16, 16, 8]", "train.folds=2")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("ph"), cases=6, shape=(24, 24, 10), spacing=(1.5, 1.5, 4.0))


def _manifest(folder, splits: dict[int, dict], name: str = "medseg.yaml"):
    """A manifest over the phantoms in ``folder``; ``splits`` adds keys (fold/split) per case number."""
    cases = [{"id": f"p{i}", "images": [f"imagesTr/phantom_{i:03d}.nii.gz"],
              "label": f"labelsTr/phantom_{i:03d}.nii.gz", **splits.get(i, {})} for i in range(6)]
    (folder / name).write_text(yaml.safe_dump({"name": "ph", "channels": {0: "MR"},
                                               "labels": {0: "background", 1: "organ", 2: "lesion"}, "cases": cases}))
    return folder / name


def _ids(splits):
    return [set(s["train"]) | set(s["val"]) for s in splits]


def test_test_cases_never_enter_seeded_folds(phantoms):
    dataset = load_dataset(_manifest(phantoms, {2: {"split": "test"}}, "t.yaml"))
    assert [c.id for c in dataset.trainable] == ["p0", "p1", "p3", "p4", "p5"] and len(dataset.labelled) == 6
    splits = split_cases(dataset, folds=5, seed=0)
    assert len(splits) == 5 and all(ids == {"p0", "p1", "p3", "p4", "p5"} for ids in _ids(splits))
    assert sorted(x for s in splits for x in s["val"]) == ["p0", "p1", "p3", "p4", "p5"]
    assert "labelled (1 test)" in check_dataset(dataset).summary()


def test_manifest_val_split_is_one_fixed_fold(phantoms):
    dataset = load_dataset(_manifest(phantoms, {0: {"split": "val"}, 1: {"split": "val"}, 2: {"split": "test"},
                                                3: {"split": "train"}}, "v.yaml"))
    assert dataset.problems == []
    assert split_cases(dataset, folds=5, seed=0) == [{"train": ["p3", "p4", "p5"], "val": ["p0", "p1"]}]


def test_manifest_folds_and_contradictions(phantoms):
    folds = {i: {"fold": i % 2} for i in range(6)}
    splits = split_cases(load_dataset(_manifest(phantoms, folds, "f.yaml")), folds=5, seed=0)
    assert splits == [{"train": ["p1", "p3", "p5"], "val": ["p0", "p2", "p4"]},
                      {"train": ["p0", "p2", "p4"], "val": ["p1", "p3", "p5"]}]
    mixed = load_dataset(_manifest(phantoms, {**folds, 5: {"split": "val"}}, "x.yaml"))
    assert any("both 'fold' and 'split: val'" in p for p in mixed.problems)
    assert not check_dataset(mixed).ok
    gaps = load_dataset(_manifest(phantoms, {i: {"fold": 2 * (i % 2)} for i in range(6)}, "g.yaml"))
    assert any("not numbered 0..N-1" in p for p in gaps.problems)
    partial = load_dataset(_manifest(phantoms, {0: {"fold": 0}}, "p.yaml"))
    assert any("5 of 6 labelled training cases have no fold" in p for p in partial.problems)
    with pytest.raises(MedsegError, match="not one of train, val, test"):
        load_dataset(_manifest(phantoms, {0: {"split": "testing"}}, "bad.yaml"))
    with pytest.raises(MedsegError, match="either 'fold' or 'split'"):
        load_dataset(_manifest(phantoms, {0: {"split": "test", "fold": 1}}, "bad2.yaml"))


def test_msd_training_entries_with_folds_are_honoured(phantoms, tmp_path):
    root = tmp_path / "msd"
    shutil.copytree(phantoms, root, ignore=shutil.ignore_patterns("*.yaml"))
    spec = json.loads((root / "dataset.json").read_text())
    for i, entry in enumerate(spec["training"]):
        entry["fold"] = i // 2
    (root / "dataset.json").write_text(json.dumps(spec))
    dataset = load_dataset(root)
    assert dataset.source == "msd" and [c.fold for c in dataset.cases] == [0, 0, 1, 1, 2, 2]
    splits = split_cases(dataset, folds=5, seed=0)
    assert [s["val"] for s in splits] == [["phantom_000", "phantom_001"], ["phantom_002", "phantom_003"],
                                          ["phantom_004", "phantom_005"]]


def test_nnunet_splits_final_json_is_honoured_and_checked(phantoms, tmp_path):
    root = nnunet_copy(phantoms, tmp_path / "Dataset002_Ph", {f"phantom_{i:03d}": f"c{i}" for i in range(6)},
                       {"background": 0, "organ": 1, "lesion": 2})
    wanted = [{"train": ["c5", "c1", "c2"], "val": ["c0"]}, {"train": ["c0", "c3"], "val": ["c4", "c5"]}]
    (root / "splits_final.json").write_text(json.dumps(wanted))
    dataset = load_dataset(root)
    assert dataset.problems == [] and dataset.splits == wanted
    saved = tmp_path / "splits.json"
    splits = split_cases(dataset, folds=5, seed=0, path=saved)
    assert splits == [{"train": ["c1", "c2", "c5"], "val": ["c0"]}, {"train": ["c0", "c3"], "val": ["c4", "c5"]}]
    assert json.loads(saved.read_text()) == splits

    (root / "splits_final.json").write_text(json.dumps([{"train": ["c1", "c9"], "val": ["c1"]}]))
    problems = " | ".join(load_dataset(root).problems)
    assert "['c9'] that are not labelled cases" in problems and "['c1'] in both train and val" in problems
    (root / "splits_final.json").write_text(json.dumps({"train": []}))
    with pytest.raises(MedsegError, match="splits_final.json"):
        load_dataset(root)


def test_splits_final_json_naming_a_test_case_is_refused(phantoms, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(phantoms, root, ignore=shutil.ignore_patterns("*.yaml"))
    manifest = _manifest(root, {4: {"split": "test"}})
    (root / "splits_final.json").write_text(json.dumps([{"train": ["p0", "p1", "p4"], "val": ["p2"]}]))
    dataset = load_dataset(manifest)
    assert any("uses test case(s) ['p4']" in p for p in dataset.problems)
    with pytest.raises(MedsegError, match="p4"):
        split_cases(dataset, folds=5, seed=0)


def test_reused_splits_json_with_a_test_case_is_refused(phantoms, tmp_path):
    dataset = load_dataset(_manifest(phantoms, {1: {"split": "test"}}, "r.yaml"))
    old = tmp_path / "splits.json"  # written by a run made before p1 was marked as a test case
    old.write_text(json.dumps([{"train": ["p0", "p2", "p3"], "val": ["p1", "p4", "p5"]}]))
    with pytest.raises(MedsegError, match="p1"):
        split_cases(dataset, folds=5, seed=0, path=old)


def test_training_never_loads_a_test_case(phantoms, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(phantoms, root, ignore=shutil.ignore_patterns("*.yaml"))
    manifest = _manifest(root, {3: {"split": "test"}})
    out = tmp_path / "run"
    train(manifest, out, load_config(None, TINY))
    splits = json.loads((out / "splits.json").read_text())
    cached = sorted(p.stem for p in (out / "cache").glob("*.npz"))
    assert cached == splits[0]["train"] and "p3" not in cached  # validation reads original images, uncached
    assert sorted(splits[0]["train"] + splits[0]["val"]) == ["p0", "p1", "p2", "p4", "p5"]
    assert sorted(json.loads((out / "validation.json").read_text())["cases"]) == splits[0]["val"]
    assert "p3" not in json.loads((out / "fingerprint.json").read_text())["cases"]


def test_split_group_keeps_each_lidc_patient_in_one_fold(data_path):
    """Real LIDC ids (patient id + ``_R_`` + nodule): seeded folds without grouping put nodules of one patient
    on both sides; with ``train.split_group`` every patient (read from the id independently) sits in one fold."""
    config = load_config(None, ["train.split_group=^(LIDC-IDRI-\\d+)"])
    dataset = load_dataset(data_path("lidc_nodules"))
    ids = [c.id for c in dataset.trainable]
    patient = {i: i.split("_R_")[0] for i in ids}

    def straddling(splits):
        return {patient[i] for s in splits for i in s["val"]} & {patient[i] for s in splits[:1] for i in s["train"]}

    assert straddling(split_cases(dataset, folds=5, seed=0))  # the leak grouping prevents
    grouped = split_cases(dataset, folds=5, seed=0, group=config.train.split_group)
    for fold in grouped:
        val_patients = {patient[i] for i in fold["val"]}
        assert not val_patients & {patient[i] for i in fold["train"]}
        assert sorted(fold["train"] + fold["val"]) == sorted(ids)
    sizes = [len(f["val"]) for f in grouped]
    assert sum(sizes) == len(ids) and max(sizes) - min(sizes) <= max(Counter(patient.values()).values())
    with pytest.raises(MedsegError, match="split_group"):
        load_config(None, ["train.split_group=(unclosed"])
