"""Reading never leaks, hangs or guesses: detached headers stay in their folder, FIFOs are never opened,
NIfTI units and types are honoured, outputs get the umask's permissions, mistyped commands get a plain
answer. Built from the real shared files (checked against nibabel and SimpleITK)."""

import os
import signal
import stat

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from medseg.cli import app
from medseg.errors import MedsegError
from medseg.io import read_volume, scan_dicom, write_volume
from medseg.io.atomic import write_csv_atomic, write_text_atomic
from medseg.train.checkpoint import save_checkpoint

runner = CliRunner()
CT = "ct/example_ct_sm.nii.gz"
MARKER = b"SECRET-OUTSIDE-THE-SCAN"


@pytest.fixture()
def detached(data_path, tmp_path):
    """A real CT as ``scan/ct.mhd`` + ``scan/ct.raw``, and a same-sized file outside ``scan/`` that
    SimpleITK would happily read if a header pointed at it."""
    image = sitk.ReadImage(str(data_path(CT)))
    (tmp_path / "scan").mkdir()
    sitk.WriteImage(image, str(tmp_path / "scan" / "ct.mhd"), useCompression=False)
    raw = (tmp_path / "scan" / "ct.raw").read_bytes()
    secret = (MARKER * (len(raw) // len(MARKER) + 1))[: len(raw)]
    (tmp_path / "secret.raw").write_bytes(secret)
    return tmp_path / "scan" / "ct.mhd", image


def _point_at(header, value, key="ElementDataFile = "):
    lines = header.read_text(encoding="latin-1").splitlines()
    lines = [f"{key}{value}" if line.startswith(key.split()[0]) else line for line in lines]
    header.write_text("\n".join(lines) + "\n", encoding="latin-1")


def test_detached_header_beside_its_data_reads_like_simpleitk(detached):
    header, image = detached
    volume = read_volume(header)
    assert np.array_equal(volume.array, sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32))


@pytest.mark.parametrize("target", ["../secret.raw", "ABSOLUTE", "link.raw", "LIST", "ct%03d.raw 1 3 1"])
def test_header_naming_a_file_outside_its_folder_is_refused(detached, target):
    header, _ = detached
    if target == "ABSOLUTE":
        target = str(header.parent.parent / "secret.raw")
    if target == "link.raw":
        (header.parent / "link.raw").symlink_to(header.parent.parent / "secret.raw")
    _point_at(header, target)
    with pytest.raises(MedsegError) as info:
        read_volume(header)
    assert MARKER.decode() not in str(info.value) and "\n" not in str(info.value)
    result = runner.invoke(app, ["info", str(header)])
    assert result.exit_code == 1 and MARKER.decode() not in result.output and "Traceback" not in result.output


def test_mha_must_hold_its_own_data(detached):
    header, image = detached
    mha = header.with_suffix(".mha")
    sitk.WriteImage(image, str(mha))
    assert read_volume(mha).spatial_shape == image.GetSize()
    text = header.read_text(encoding="latin-1").replace("ElementDataFile = ct.raw", "ElementDataFile = ../secret.raw")
    mha.write_text(text, encoding="latin-1")
    with pytest.raises(MedsegError, match="LOCAL"):
        read_volume(mha)


def test_detached_nrrd_outside_its_folder_is_refused(detached):
    header, image = detached
    nhdr = header.with_suffix(".nhdr")
    sitk.WriteImage(image, str(nhdr), useCompression=False)
    assert read_volume(nhdr).spatial_shape == image.GetSize()
    _point_at(nhdr, "../secret.raw", key="data file: ")
    with pytest.raises(MedsegError, match="outside its own folder"):
        read_volume(nhdr)


def _alarm(seconds):
    def fail(*_):
        raise TimeoutError("a read hung on a FIFO")

    signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)


def test_fifo_in_a_scan_folder_or_as_a_data_file_is_never_opened(data_path, tmp_path, detached):
    import shutil

    shutil.copytree(data_path("dicom/hippocampus_crops/study1"), tmp_path / "dicom")
    os.mkfifo(tmp_path / "dicom" / "pipe")
    os.mkfifo(tmp_path / "pipe.nii.gz")
    header, _ = detached
    (header.parent / "ct.raw").unlink()
    os.mkfifo(header.parent / "ct.raw")
    _alarm(30)
    try:
        scan = scan_dicom(tmp_path / "dicom")
        with pytest.raises(MedsegError, match="FIFO"):
            read_volume(tmp_path / "pipe.nii.gz")
        with pytest.raises(MedsegError, match="FIFO"):
            read_volume(header)
    finally:
        signal.alarm(0)
    assert len(scan.series) == 1 and scan.series[0].readable
    assert any("FIFO" in reason for _, reason in scan.skipped)


@pytest.mark.parametrize("unit, factor", [("meter", 1e-3), ("micron", 1e3)])
def test_nifti_units_are_converted_to_mm(data_path, tmp_path, unit, factor):
    original = nib.load(data_path(CT))
    scaled = original.affine.copy()
    scaled[:3, :] *= factor
    img = nib.Nifti1Image(np.asanyarray(original.dataobj), scaled)
    img.header.set_xyzt_units(unit)
    nib.save(img, tmp_path / "ct.nii.gz")
    volume = read_volume(tmp_path / "ct.nii.gz")
    assert np.allclose(volume.affine, original.affine, atol=1e-4)
    assert any(unit in w for w in volume.meta["warnings"])


def test_complex_and_bad_pixdim_are_refused(data_path, tmp_path):
    data = np.asanyarray(nib.load(data_path(CT)).dataobj).astype(np.float32)
    nib.save(nib.Nifti1Image(data.astype(np.complex64), np.eye(4)), tmp_path / "complex.nii")
    with pytest.raises(MedsegError, match="complex"):
        read_volume(tmp_path / "complex.nii")
    for pixdim in ([0.0, 3.0, 3.0], [3.0, -3.0, 3.0]):
        img = nib.Nifti1Image(data, None)
        img.header.set_sform(None, code=0)
        img.header.set_qform(None, code=0)
        img.header["pixdim"][1:4] = pixdim
        nib.save(img, tmp_path / "nopose.nii")
        with pytest.raises(MedsegError, match="pixdim"):
            read_volume(tmp_path / "nopose.nii")


def test_nan_voxels_are_warned_and_recorded(data_path, tmp_path):
    original = nib.load(data_path(CT))
    data = np.asanyarray(original.dataobj).astype(np.float32)
    data[10:12, 20, 5] = [np.nan, np.inf]
    nib.save(nib.Nifti1Image(data, original.affine), tmp_path / "ct.nii.gz")
    volume = read_volume(tmp_path / "ct.nii.gz")
    assert any("2 NaN or infinite" in w for w in volume.meta["warnings"])
    result = runner.invoke(app, ["info", str(tmp_path / "ct.nii.gz")])
    assert "2 NaN or infinite" in result.output


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_get_the_umask_permissions(data_path, tmp_path, umask, mode):
    volume = read_volume(data_path(CT))
    old = os.umask(umask)
    try:
        written = [write_volume(volume, tmp_path / "ct.nii.gz"), write_volume(volume, tmp_path / "ct.nrrd")]
        write_text_atomic(tmp_path / "case.json", "{}")
        write_csv_atomic(tmp_path / "summary.csv", [{"id": "a", "status": "done"}])
        save_checkpoint(tmp_path / "weights.pt", {"w": torch.zeros(2)})
        written += [tmp_path / "case.json", tmp_path / "summary.csv", tmp_path / "weights.pt"]
        result = runner.invoke(app, ["convert", str(data_path("dicom/hippocampus_crops/study1")),
                                     str(tmp_path / "converted")])
        assert result.exit_code == 0, result.output
        written += list((tmp_path / "converted").iterdir())
    finally:
        os.umask(old)
    assert len(written) == 7
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {mode}


def test_mistyped_commands_get_a_plain_answer(data_path, tmp_path):
    (tmp_path / "afile").write_text("x")
    empty = tmp_path / "no_dicom"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here")
    cases = {
        ("check", str(data_path(CT))): "this is an image, not a dataset",
        ("convert", str(empty), str(tmp_path / "o")): "no DICOM image series found",
        ("convert", str(data_path("dicom/hippocampus_crops/study1")), str(tmp_path / "afile")):
            "is an existing file",
        ("infer", str(tmp_path / "no_model"), str(data_path(CT)), str(tmp_path / "afile")): "is an existing file",
        ("train", str(data_path("hippocampus")), "--out", str(tmp_path / "afile" / "run")): "is an existing file",
    }
    for args, expected in cases.items():
        result = runner.invoke(app, list(args))
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1, args
        assert expected in lines[-1] and lines[-1].startswith("error: ") and "unexpected" not in result.output
