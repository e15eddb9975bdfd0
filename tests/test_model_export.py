"""`medseg export`: a shareable copy of a model (folder or zip) without training data, that infers the same
labels as the run folder; zips are extracted safely."""

import json
import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.data.phantom import make_phantom
from medseg.errors import MedsegError
from medseg.infer.batch import run_batch
from medseg.infer.predictor import Predictor
from medseg.io import read_volume, write_volume
from medseg.model import ModelFolder, export_model
from medseg.model import folder as model_folder

runner = CliRunner()
SHARED = {"config.yaml", "plan.json", "weights.pt", "postprocess.json", "labels.json", "versions.json",
          "fingerprint.json", "SHA256SUMS"}


@pytest.fixture(scope="module")
def run_dir(phantom_run):
    return phantom_run


def test_export_folder_and_zip_hold_only_what_inference_needs(run_dir, tmp_path):
    assert (run_dir / "cache").is_dir() and (run_dir / "checkpoint_last.pt").exists()
    for name in ("shared", "shared.zip"):
        result = runner.invoke(app, ["export", str(run_dir), str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert ModelFolder(run_dir).model_id in result.output
    assert {p.name for p in (tmp_path / "shared").iterdir()} == SHARED
    with zipfile.ZipFile(tmp_path / "shared.zip") as zf:
        assert set(zf.namelist()) == SHARED
    fingerprint = json.loads((tmp_path / "shared" / "fingerprint.json").read_text())
    assert "cases" not in fingerprint and "spacings" not in fingerprint and "label_volume_mm3" in fingerprint
    assert ModelFolder(tmp_path / "shared").verify() == []
    # Nothing is left behind beside the outputs (the staging folder is gone).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared", "shared.zip"]


def test_exported_models_infer_the_same_labels(run_dir, tmp_path):
    folder = tmp_path / "in"
    for i in range(2):
        image, _ = make_phantom(shape=(40, 40, 14), spacing=(1.5, 1.5, 4.0), seed=70 + i)
        write_volume(image, folder / f"case{i}.nii.gz")
    shared_id = export_model(run_dir, tmp_path / "shared")
    assert export_model(run_dir, tmp_path / "shared.zip") == shared_id == ModelFolder(run_dir).model_id
    labels = {}
    for name in ("run", "shared", "shared.zip"):
        model = run_dir if name == "run" else tmp_path / name
        summary = run_batch(model, folder, tmp_path / f"out_{name}")
        assert summary["counts"]["done"] == 2
        labels[name] = [read_volume(tmp_path / f"out_{name}" / f"case{i}.nii.gz", label=True).array for i in range(2)]
        record = json.loads((tmp_path / f"out_{name}" / "case0.json").read_text())
        assert record["model_id"] == shared_id and record["model_dir"] == str(model)
    for name in ("shared", "shared.zip"):
        assert all(np.array_equal(a, b) for a, b in zip(labels["run"], labels[name], strict=True))
    assert (labels["run"][0] == 1).sum() > 100


def test_export_refuses_an_existing_output_and_a_changed_run(run_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(MedsegError, match="already exists"):
        export_model(run_dir, tmp_path / "taken")
    copy = tmp_path / "run"
    export_model(run_dir, copy)
    (copy / "plan.json").write_text((copy / "plan.json").read_text() + " ")
    with pytest.raises(MedsegError, match="SHA256SUMS mismatch: plan.json"):
        export_model(copy, tmp_path / "again.zip")
    assert not (tmp_path / "again.zip").exists()


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("member", ["../evil.txt", "/etc/evil.txt", "model/../../evil.txt", "C:/evil.txt"])
def test_zip_members_outside_the_folder_are_refused(tmp_path, member):
    archive = _zip(tmp_path / "bad.zip", {"plan.json": b"{}", member: b"x"})
    with pytest.raises(MedsegError, match="points outside"):
        Predictor.from_dir(archive)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_zip_size_and_member_limits(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "big.zip", {"plan.json": b"{}", "weights.pt": b"\0" * 5000})
    monkeypatch.setattr(model_folder, "MAX_ZIP_BYTES", 4096)
    with pytest.raises(MedsegError, match="unpacks to 5002 bytes, over the 4096 allowed"):
        Predictor.from_dir(archive)
    monkeypatch.setattr(model_folder, "MAX_ZIP_MEMBERS", 1)
    with pytest.raises(MedsegError, match="2 members"):
        Predictor.from_dir(archive)
    (tmp_path / "not.zip").write_bytes(b"PK not a zip")
    with pytest.raises(MedsegError, match="not a readable zip"):
        Predictor.from_dir(tmp_path / "not.zip")


def test_zip_of_a_user_zipped_folder_loads(run_dir, tmp_path):
    export_model(run_dir, tmp_path / "model")
    with zipfile.ZipFile(tmp_path / "wrapped.zip", "w") as zf:
        for path in (tmp_path / "model").iterdir():
            zf.write(path, f"model/{path.name}")
    assert Predictor.from_dir(tmp_path / "wrapped.zip").model_id == ModelFolder(run_dir).model_id


def test_models_from_other_versions_or_before_reorientation_warn(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(run_dir, copy)
    versions = json.loads((copy / "versions.json").read_text())
    versions["torch"] = "1.13.1"
    (copy / "versions.json").write_text(json.dumps(versions))
    plan = json.loads((copy / "plan.json").read_text())
    plan["orientation"] = ""
    (copy / "plan.json").write_text(json.dumps(plan))
    warnings = ModelFolder(copy).compatibility_warnings()
    assert any("trained with torch 1.13.1" in w for w in warnings)
    assert any("before medseg reoriented" in w for w in warnings)
    assert ModelFolder(run_dir).compatibility_warnings() == []


def test_model_id_covers_postprocess_json_and_keeps_older_ids(tmp_path):
    """tune-postprocess can rewrite postprocess.json and so change results: the id (AlgorithmVersion of a DICOM
    SEG) must change with it; a folder without the file (trained before medseg chose rules) keeps its old id."""
    import hashlib

    for name, text in (("config.yaml", "model: {}\n"), ("plan.json", "{}"), ("weights.pt", "w")):
        (tmp_path / name).write_text(text)
    older = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
                    for p in (tmp_path / n for n in ("config.yaml", "plan.json", "weights.pt")))
    assert ModelFolder(tmp_path).model_id == hashlib.sha256(older.encode()).hexdigest()[:16]
    ModelFolder(tmp_path).write_postprocess({}, {})
    none_chosen = ModelFolder(tmp_path).model_id
    ModelFolder(tmp_path).write_postprocess({1: {"mode": "largest", "keep": 1}}, {})
    ids = {hashlib.sha256(older.encode()).hexdigest()[:16], none_chosen, ModelFolder(tmp_path).model_id}
    assert len(ids) == 3
