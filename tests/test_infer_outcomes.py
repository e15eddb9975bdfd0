"""What a PACS script gets from `medseg infer`: summary.json with a fixed set of statuses, documented exit
codes, DICOM UIDs in the case JSON, output names relative to the output folder, plausibility flags (and
--fail-on-flags), --version and --quiet. Real data: a small hippocampus model on crops and whole brains."""

import json
import shutil

import pydicom
import pytest
from typer.testing import CliRunner

from medseg import __version__
from medseg.cli import app
from medseg.infer.batch import STATUSES

runner = CliRunner()


def _infer(*args):
    return runner.invoke(app, ["infer", *map(str, args)])


def test_version_and_usage_errors():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"medseg {__version__}"
    assert runner.invoke(app, ["infer"]).exit_code == 2  # missing arguments
    assert runner.invoke(app, ["infer", "m", "i", "o", "--shard", "x"]).exit_code == 2


def test_model_invalid_and_nothing_to_segment_have_their_own_codes(hippocampus_run, tmp_path, data_path):
    crop = data_path("dicom/hippocampus_crops/study1")
    assert _infer(tmp_path / "no_model", crop, tmp_path / "a").exit_code == 4
    broken = tmp_path / "broken"
    shutil.copytree(hippocampus_run, broken, ignore=shutil.ignore_patterns("cache", "checkpoint_last.pt"))
    (broken / "weights.pt").write_bytes(b"changed")
    result = _infer(broken, crop, tmp_path / "b")
    assert result.exit_code == 4 and "SHA256SUMS" in result.output
    (tmp_path / "empty").mkdir()
    result = _infer(hippocampus_run, tmp_path / "empty", tmp_path / "c")
    assert result.exit_code == 3 and "nothing to segment" in result.output


def test_summary_json_statuses_uids_and_relative_outputs(hippocampus_run, data_path, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(data_path("dicom/hippocampus_crops/study1"), study / "good")
    shutil.copytree(data_path("dicom/hippocampus_crops/study2"), study / "gap")
    slices = sorted((study / "gap").iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    slices[len(slices) // 2].unlink()
    out = tmp_path / "out"
    result = _infer(hippocampus_run, study, out, "--rtstruct")
    assert result.exit_code == 1, result.output  # a refused series counts
    summary = json.loads((out / "summary.json").read_text())
    assert {c["status"] for c in summary["cases"]} <= set(STATUSES)
    assert summary["counts"] == {"done": 1, "skipped": 0, "failed": 0, "refused": 1}
    done = next(c for c in summary["cases"] if c["status"] == "done")
    refused = next(c for c in summary["cases"] if c["status"] == "refused")
    assert "missing slice" in refused["reason"]
    source = pydicom.dcmread(next((study / "good").iterdir()))
    record = json.loads((out / f"{done['id']}.json").read_text())
    assert record["input"]["dicom"] == {"study_instance_uid": source.StudyInstanceUID,
                                        "series_instance_uid": source.SeriesInstanceUID}
    assert done["series_instance_uid"] == source.SeriesInstanceUID
    assert set(record["outputs"]) == {"label", "dicom_seg", "rtstruct"}
    assert all("/" not in name and (out / name).is_file() for name in record["outputs"].values())
    text = (out / "summary.json").read_text() + (out / "summary.csv").read_text()
    assert str(source.PatientName) not in text and str(source.get("StudyDate", "x")) not in text
    again = runner.invoke(app, ["--quiet", "infer", str(hippocampus_run), str(study), str(out), "--rtstruct"])
    assert again.exit_code == 1 and "segmented" not in again.stdout and "refused:" in again.output
    assert json.loads((out / "summary.json").read_text())["counts"]["skipped"] == 1


def test_whole_brain_for_a_crop_model_is_flagged(hippocampus_run, data_path, tmp_path):
    crop, brain = data_path("dicom/hippocampus_crops/study1"), data_path("dicom/brain_mr_study/11-T1post-18670")
    fine = _infer(hippocampus_run, crop, tmp_path / "crop")
    assert fine.exit_code == 0, fine.output
    (case,) = json.loads((tmp_path / "crop" / "summary.json").read_text())["cases"]
    assert not [f for f in case["flags"] if "field of view" in f]
    result = _infer(hippocampus_run, brain, tmp_path / "brain")
    assert result.exit_code == 0 and "flag:" in result.output  # flagged, not failed, by default
    (case,) = json.loads((tmp_path / "brain" / "summary.json").read_text())["cases"]
    assert any("field of view" in f for f in case["flags"]), case["flags"]
    assert json.loads((tmp_path / "brain" / f"{case['id']}.json").read_text())["flags"] == case["flags"]
    strict = _infer(hippocampus_run, brain, tmp_path / "strict", "--fail-on-flags")
    assert strict.exit_code == 1
    (case,) = json.loads((tmp_path / "strict" / "summary.json").read_text())["cases"]
    assert case["status"] == "failed" and "plausibility flags" in case["reason"]


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_cli_help_lists_exit_codes(flag):
    result = runner.invoke(app, [flag])
    assert result.exit_code == 0
    if flag == "--help":
        assert "Exit codes" in result.output and "4 model invalid" in result.output
