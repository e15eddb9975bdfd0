"""The command line: fast help, one-line errors, exit codes, no patient identity in output."""

import re
import subprocess
import sys

from typer.testing import CliRunner

from medseg.cli import app
from medseg.data.phantom import make_phantom
from medseg.io import write_volume
from medseg.io.dicom_write import write_dicom_series

runner = CliRunner()


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from medseg.cli import app; "
            "heavy = [m for m in ('torch', 'monai', 'SimpleITK', 'pydicom', 'nibabel') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("info", "convert", "check", "plan", "train", "infer", "evaluate", "qa", "demo"):
        assert command in result.output


def test_info_lists_series_without_patient_identity(data_path):
    result = runner.invoke(app, ["info", str(data_path("dicom/hippocampus_crops"))])
    assert result.exit_code == 0, result.output
    assert "2 series" in result.output and "HippoCrop" in result.output
    assert "Avasarala" not in result.output and "PGBM" not in result.output


def test_convert_names_series_safely_and_keeps_existing(tmp_path):
    image, _ = make_phantom(shape=(16, 16, 6), seed=2)
    write_dicom_series(image, tmp_path / "in" / "a", description="T1 / ax (post)", series_number=4)
    result = runner.invoke(app, ["convert", str(tmp_path / "in"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    out, sidecar = sorted((tmp_path / "out").iterdir(), key=lambda p: p.suffix)
    assert re.fullmatch(r"s4_[0-9a-f]{8}_T1_ax_post\.nii\.gz", out.name) and sidecar.name.endswith(".json")
    again = runner.invoke(app, ["convert", str(tmp_path / "in"), str(tmp_path / "out")])
    assert "exists, same series, kept" in again.output


def test_bad_inputs_give_one_line_error_and_exit_1(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"not an image at all")
    for args in (["info", str(tmp_path / "bad.nii.gz")], ["check", str(tmp_path)],
                 ["convert", str(tmp_path / "nowhere"), str(tmp_path / "o")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, args
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("error: ") and "Traceback" not in result.output


def test_check_exit_codes(tmp_path):
    from medseg.data.phantom import write_phantom_dataset

    root = write_phantom_dataset(tmp_path / "d", cases=2)
    assert runner.invoke(app, ["check", str(root)]).exit_code == 0
    image, label = make_phantom(seed=0)
    write_volume(label.with_array(label.array * 3), root / "labelsTr/phantom_000.nii.gz", overwrite=True)
    result = runner.invoke(app, ["check", str(root)])
    assert result.exit_code == 1 and "ERROR phantom_000" in result.output


def test_info_on_file(tmp_path, phantom):
    write_volume(phantom[0], tmp_path / "x.nii.gz")
    result = runner.invoke(app, ["info", str(tmp_path / "x.nii.gz")])
    assert result.exit_code == 0 and "1.5 x 1.5 x 4 mm" in result.output and "oblique" in result.output


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "my_notes.txt").write_text("not the demo's")
    result = runner.invoke(app, ["demo", str(tmp_path)])
    assert result.exit_code == 1 and "not written by medseg demo" in result.output
    assert (tmp_path / "my_notes.txt").exists()
