"""`medseg infer` end to end: exact output geometry on oblique DICOM, DICOM SEG round trip, model ids,
skip/redo/overwrite, failure isolation and SIGKILL safety."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from conftest import tiny
from typer.testing import CliRunner

from medseg.cli import app
from medseg.config import load_config
from medseg.data.phantom import make_phantom
from medseg.infer.batch import InferOptions, run_batch
from medseg.infer.predictor import Predictor
from medseg.io import read_dicom_folder, read_volume, write_volume
from medseg.io.dicom_write import write_dicom_series
from medseg.io.seg import read_dicom_seg_labels
from medseg.model import ModelFolder
from medseg.train import train

runner = CliRunner()
TINY = tiny("train.iterations_per_epoch=15", "train.epochs=4",
            "postprocess.rules={1: {mode: largest}, 2: {mode: min_size, min_volume_mm3: 20}}")


@pytest.fixture(scope="module")
def model_dir(phantom_run):
    return phantom_run


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A PACS-like study folder: two oblique phantom series, one with a missing slice, a stray file."""
    root = tmp_path_factory.mktemp("study")
    for i, rot in enumerate([(10, 0, 25), (0, 15, -30), (0, 0, 0)]):
        image, _ = make_phantom(shape=(44, 40, 12), spacing=(1.4, 1.6, 4.2), rotation_deg=rot, seed=20 + i)
        files = write_dicom_series(image, root / f"series{i}", description=f"T1 {i}", series_number=i + 1)
        if i == 2:
            files[6].unlink()
    (root / "export.log").write_text("exported by a PACS script")
    return root


def test_dicom_study_outputs_match_input_grid_and_seg_round_trips(model_dir, study, tmp_path):
    out = tmp_path / "out"
    summary = run_batch(model_dir, study, out)
    assert summary["counts"]["done"] == 2 and summary["counts"]["failed"] == 0
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "summary.json"]
    assert len(records) == 2
    for record in records:
        label = read_volume(out / record["outputs"]["label"], label=True)
        folder = study / f"series{int(record['id'][1]) - 1}"
        source = read_dicom_folder(folder)
        assert label.spatial_shape == source.spatial_shape
        assert np.abs(label.affine - source.affine).max() < 1e-4  # float32 sform precision
        assert label.array.dtype == np.uint8 and (label.array == 1).sum() > 100
        seg = pydicom.dcmread(out / record["outputs"]["dicom_seg"])
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["organ", "lesion"]
        assert seg.Modality == "SEG" and seg.PatientName == "Phantom^Anonymous"
        back = read_dicom_seg_labels(out / record["outputs"]["dicom_seg"], source.meta["source_files"])
        assert np.array_equal(back, label.array)
        # Post-processing ran: a single organ component.
        assert record["postprocess"]["1"]["components_after"] <= 1
        # The SEG names the model that made it, as the JSON and summary.csv do.
        model_id = ModelFolder(model_dir).model_id
        assert record["model_id"] == model_id and seg.SoftwareVersions == model_id
        for segment in seg.SegmentSequence:
            assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == model_id
    assert {row["model_id"] for row in _summary(out)} == {model_id}


def test_oblique_real_dicom_keeps_exact_geometry(model_dir, data_path, tmp_path):
    series = data_path("dicom/brain_mr_study/11-T1post-18670")
    out = tmp_path / "out"
    result = runner.invoke(app, ["infer", str(model_dir), str(series), str(out)])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(p.read_text()) for p in out.glob("s*.json") if p.name != "summary.json"]
    assert "T1post" not in record["id"] and record["id"].startswith("s11_")
    label = read_volume(out / record["outputs"]["label"], label=True)
    source = read_dicom_folder(series)
    assert label.spatial_shape == source.spatial_shape == (280, 320, 22)
    assert np.abs(label.affine - source.affine).max() < 1e-4


def test_skip_overwrite_and_failure_isolation(model_dir, tmp_path):
    folder = tmp_path / "in"
    for i in range(3):
        image, _ = make_phantom(shape=(40, 40, 14), spacing=(1.5, 1.5, 4.0), seed=40 + i)
        write_volume(image, folder / f"case{i}.nii.gz")
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "out"
    result = runner.invoke(app, ["infer", str(model_dir), str(folder), str(out)])
    assert result.exit_code == 1
    assert "error: broken:" in result.output and "3 segmented, 0 skipped, 1 failed" in result.output
    stamp = (out / "case0.nii.gz").stat().st_mtime_ns
    again = run_batch(model_dir, folder, out)
    assert again["counts"]["skipped"] == 3 and (out / "case0.nii.gz").stat().st_mtime_ns == stamp
    # Skipped cases keep their columns, filled from their JSON.
    rows = {row["id"]: row for row in _summary(out)}
    first = json.loads((out / "case0.json").read_text())
    assert rows["case0"]["status"].startswith("skipped")
    assert float(rows["case0"]["volume_mm3_organ"]) == first["label_volumes_mm3"]["organ"] > 0
    assert rows["case0"]["model_id"] == first["model_id"] and rows["broken"]["status"] == "failed"
    redo = run_batch(model_dir, folder, out, InferOptions(overwrite=True))
    assert redo["counts"]["done"] == 3 and (out / "case0.nii.gz").stat().st_mtime_ns != stamp
    rows = {row["id"]: row for row in _summary(out)}
    assert {rows[f"case{i}"]["reason"] for i in range(3)} == {"redone: --overwrite"}
    assert {rows[f"case{i}"]["status"] for i in range(3)} == {"done"} and rows["broken"]["status"] == "failed"
    assert "failed" in (out / "summary.csv").read_text()


def test_sigkill_during_batch_leaves_no_partial_output(model_dir, tmp_path):
    folder = tmp_path / "in"
    for i in range(12):
        image, _ = make_phantom(shape=(40, 40, 14), spacing=(1.5, 1.5, 4.0), seed=60 + i)
        write_volume(image, folder / f"case{i:02d}.nii.gz")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "medseg.cli", "infer", str(model_dir), str(folder), str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in proc.stdout:
        if ": done in" in line:
            break
    time.sleep(0.15)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Only hidden temporaries can be partial; every file under its final name is complete.
    assert all(p.name.startswith(".") for p in out.iterdir() if ".tmp" in p.name)
    for path in out.glob("[!.]*.nii.gz"):
        read_volume(path, label=True)
    finished = len(list(out.glob("case*.json")))
    assert 1 <= finished < 12
    summary = run_batch(model_dir, folder, out)
    assert summary["counts"]["skipped"] == finished and summary["counts"]["done"] == 12 - finished


def test_model_folder_integrity_is_checked(model_dir, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    with open(copy / "plan.json", "a") as fh:
        fh.write(" ")
    with pytest.raises(Exception, match="SHA256SUMS"):
        Predictor.from_dir(copy)


def test_fold_folders_are_ensembled(model_dir, tmp_path):
    folds = tmp_path / "folds"
    for name in ("fold_0", "fold_1"):
        shutil.copytree(model_dir, folds / name, ignore=shutil.ignore_patterns("cache"))
    single, ensemble = Predictor.from_dir(model_dir), Predictor.from_dir(folds)
    assert len(ensemble.nets) == 2
    image, _ = make_phantom(shape=(40, 40, 14), spacing=(1.5, 1.5, 4.0), seed=77)
    a, b = single.predict(image), ensemble.predict(image)
    assert np.array_equal(a.label.array, b.label.array)  # two identical folds average to the same answer


def test_dicom_seg_passes_dciodvfy(model_dir, data_path, tmp_path):
    """The SEG written for a real DICOM series validates with dciodvfy (Debian package dicom3tools)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    summary = run_batch(model_dir, data_path("dicom/hippocampus_crops/study1"), tmp_path)
    assert summary["counts"]["done"] == 1
    (seg,) = tmp_path.glob("*.seg.dcm")
    result = subprocess.run(["dciodvfy", "-new", str(seg)], capture_output=True, text=True)
    report = result.stdout + result.stderr
    assert "Segmentation" in report
    assert not [line for line in report.splitlines() if line.startswith("Error")], report


def _summary(out) -> list[dict]:
    with open(out / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def other_seed_dir(model_dir, tmp_path_factory):
    """The same recipe trained with another seed for fewer epochs."""
    root = tmp_path_factory.mktemp("other")
    data = model_dir.parent / "data"
    train(data, root / "run", load_config(None, TINY + ["train.seed=1", "train.epochs=2"]))
    return root / "run"


def _retrained_copy(model_dir, dest):
    """A copy with other weights but byte-identical config and plan (another epoch of the same run)."""
    shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns("cache", "checkpoint_last.pt"))
    state = torch.load(dest / "weights.pt", weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 1e-3
    torch.save(state, dest / "weights.pt")
    folder = ModelFolder(dest)
    folder.write_sha256sums(list(folder.recorded_sums()))
    return dest


def test_models_identify_themselves(model_dir, other_seed_dir, tmp_path):
    copy = _retrained_copy(model_dir, tmp_path / "copy")
    assert (copy / "config.yaml").read_bytes() == (model_dir / "config.yaml").read_bytes()
    ids = {ModelFolder(p).model_id for p in (model_dir, other_seed_dir, copy)}
    assert len(ids) == 3 and all(len(i) == 16 for i in ids)
    assert Predictor.from_dir(copy).model_id == ModelFolder(copy).model_id


def test_rerun_redoes_results_of_another_model_or_settings(log_lines, model_dir, tmp_path):
    folder = tmp_path / "in"
    for i in range(2):
        image, _ = make_phantom(shape=(40, 40, 14), spacing=(1.5, 1.5, 4.0), seed=90 + i)
        write_volume(image, folder / f"case{i}.nii.gz")
    out = tmp_path / "out"
    run_batch(model_dir, folder, out)
    other = _retrained_copy(model_dir, tmp_path / "other")
    lines = log_lines
    summary = run_batch(other, folder, out)
    assert summary["counts"]["done"] == summary["redone"] == 2 and summary["counts"]["skipped"] == 0
    assert {(row["status"], row["reason"]) for row in _summary(out)} == {("done", "redone: model changed")}
    assert any("(redone: model changed)" in line for line in lines)
    assert json.loads((out / "case0.json").read_text())["model_id"] == ModelFolder(other).model_id
    assert run_batch(other, folder, out)["counts"]["skipped"] == 2
    changed = run_batch(other, folder, out, InferOptions(overlap=0.25))
    assert changed["redone"] == 2
    assert {row["reason"] for row in _summary(out)} == {"redone: settings changed (overlap)"}
    assert json.loads((out / "case1.json").read_text())["settings"]["overlap"] == 0.25
    asked = run_batch(other, folder, out, InferOptions(overlap=0.25, probabilities=True))
    assert asked["redone"] == 2 and (out / "case0_probabilities.nii.gz").exists()


def test_input_warnings_are_recorded_and_printed(log_lines, model_dir, tmp_path):
    image, _ = make_phantom(shape=(40, 40, 14), spacing=(1.5, 1.5, 4.0), seed=95)
    img = nib.Nifti1Image(image.array, image.affine)
    img.set_sform(image.affine, code=1)
    shifted = image.affine.copy()
    shifted[:3, 3] += 7.0
    img.set_qform(shifted, code=1)
    (tmp_path / "in").mkdir()
    nib.save(img, tmp_path / "in" / "odd.nii.gz")
    lines = log_lines
    run_batch(model_dir, tmp_path / "in", tmp_path / "out")
    record = json.loads((tmp_path / "out" / "odd.json").read_text())
    assert any("disagree" in w for w in record["warnings"])
    assert any(line.startswith("warning: odd: sform and qform disagree") for line in lines)
    assert "disagree" in _summary(tmp_path / "out")[0]["warnings"]
