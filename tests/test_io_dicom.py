"""DICOM series: real PACS-style exports against SimpleITK, and damaged synthetic series."""

import random
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import edit_dicom

from medseg.data.phantom import make_phantom
from medseg.errors import MedsegError
from medseg.io import read_dicom_folder, read_volume, scan_dicom
from medseg.io.dicom_write import write_dicom_series
from medseg.io.geometry import sitk_to_ras_affine

REAL_SERIES = [
    "dicom/hippocampus_crops/study1",
    "dicom/hippocampus_crops/study2",
    "dicom/brain_mr_study/11-T1post-18670",
    "dicom/brain_mr_study/26401-T1prereg-52906",
    "dicom/brain_mr_study/36468-FLAIRreg-58706",
    "dicom/brain_mr_study/37830-T2reg-78532",
    "dicom/brain_mr_study/11_HCropVolume",
    "dicom/ct_jpeg2000/series",
]


def _sitk_read(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), sitk_to_ras_affine(image)


@pytest.mark.parametrize("rel", REAL_SERIES)
def test_real_series_match_simpleitk(data_path, rel):
    folder = data_path(rel)
    volume = read_dicom_folder(folder)
    array, affine = _sitk_read(folder)
    assert volume.array.shape == array.shape
    assert np.abs(volume.affine - affine).max() < 1e-4
    assert np.array_equal(volume.array, array.astype(np.float32))


def test_oblique_study_spacing_comes_from_positions(data_path):
    scan = scan_dicom(data_path("dicom/brain_mr_study"))
    assert len(scan.series) == 5 and all(s.readable for s in scan.series)
    t1 = next(s for s in scan.series if s.description == "T1post")
    assert abs(t1.spacing[2] - 6.5) < 1e-3  # SliceThickness says 5 mm
    volume = read_volume(data_path("dicom/brain_mr_study/11-T1post-18670"))
    assert volume.meta["description"] == "T1post"


def test_jpeg2000_ct_matches_reference_label_grid(data_path):
    volume = read_dicom_folder(data_path("dicom/ct_jpeg2000/series"))
    ref = nib.load(data_path("dicom/ct_jpeg2000/reference_seg.nii.gz"))
    assert volume.spatial_shape == ref.shape
    # Same voxel centres in world space, whatever the axis order/flips each writer chose.
    ours = nib.Nifti1Image(np.zeros(volume.spatial_shape, np.uint8), volume.affine)
    ornt = nib.orientations.io_orientation(ref.affine)
    ours = ours.as_reoriented(nib.orientations.ornt_transform(nib.orientations.io_orientation(ours.affine), ornt))
    assert np.abs(ours.affine - ref.affine).max() < 1e-3
    assert volume.array.min() == -1024  # HU after RescaleIntercept


def _copy_shuffled(src, dst, rename=True):
    files = sorted(p for p in src.iterdir() if p.is_file())
    names = [f"x{i:03d}" for i in range(len(files))]
    random.Random(7).shuffle(names)
    dst.mkdir(parents=True)
    for f, n in zip(files, names, strict=True):
        shutil.copy(f, dst / (n if rename else f.name))
    return sorted(dst.iterdir())


def test_shuffled_renamed_copy_reads_identically(data_path, tmp_path):
    src = data_path("dicom/brain_mr_study/11-T1post-18670")
    _copy_shuffled(src, tmp_path / "nested" / "deeper")
    (tmp_path / "README.txt").write_text("not dicom")
    a, b = read_dicom_folder(src), read_dicom_folder(tmp_path)
    assert np.array_equal(a.array, b.array) and np.allclose(a.affine, b.affine)
    assert len(scan_dicom(tmp_path).non_dicom) == 1


def test_missing_middle_slice_is_refused_naming_the_gap(data_path, tmp_path):
    src = data_path("dicom/brain_mr_study/11-T1post-18670")
    shutil.copytree(src, tmp_path / "s")
    files = sorted((tmp_path / "s").iterdir(), key=lambda p: float(pydicom.dcmread(p).SliceLocation))
    files[len(files) // 2].unlink()
    with pytest.raises(MedsegError) as info:
        read_dicom_folder(tmp_path / "s")
    message = str(info.value)
    assert "missing slice" in message and "13.000 mm" in message and "6.500" in message and "\n" not in message


def test_synthetic_oblique_anisotropic_series_round_trip(tmp_path):
    image, _ = make_phantom(shape=(40, 30, 12), spacing=(0.7, 0.9, 5.0), rotation_deg=(15, -20, 35), seed=1)
    write_dicom_series(image, tmp_path / "s", modality="CT")
    volume = read_dicom_folder(tmp_path / "s")
    assert np.abs(volume.affine - image.affine).max() < 1e-4
    assert np.abs(volume.array - image.array).max() < 0.05
    array, affine = _sitk_read(tmp_path / "s")
    assert np.abs(affine - volume.affine).max() < 1e-4


def _phantom_series(folder, **kwargs):
    image, _ = make_phantom(shape=(24, 20, 10), spacing=(1.0, 1.0, 3.0), **kwargs)
    return write_dicom_series(image, folder)


def test_float_noise_in_positions_is_accepted(tmp_path):
    rng = np.random.default_rng(0)
    for path in _phantom_series(tmp_path):
        pos = np.asarray(pydicom.dcmread(path).ImagePositionPatient, float) + rng.normal(0, 2e-4, 3)
        edit_dicom(path, ImagePositionPatient=[f"{v:.6f}" for v in pos])
    assert read_dicom_folder(tmp_path).spatial_shape == (24, 20, 10)


def test_non_uniform_spacing_reports_largest_deviation(tmp_path):
    paths = _phantom_series(tmp_path, rotation_deg=(0, 0, 0))
    for path in paths[5:]:
        pos = np.asarray(pydicom.dcmread(path).ImagePositionPatient, float)
        edit_dicom(path, ImagePositionPatient=[f"{v:.6f}" for v in pos + [0, 0, 1.0]])
    with pytest.raises(MedsegError, match=r"non-uniform slice spacing: largest deviation 1\.000 mm"):
        read_dicom_folder(tmp_path)


def test_gantry_tilt_is_refused(tmp_path):
    paths = _phantom_series(tmp_path, rotation_deg=(0, 0, 0))
    for k, path in enumerate(paths):
        pos = np.asarray(pydicom.dcmread(path).ImagePositionPatient, float)
        edit_dicom(path, ImagePositionPatient=[f"{v:.6f}" for v in pos + [0, k * 3.0 * np.tan(np.radians(12)), 0]])
    with pytest.raises(MedsegError, match=r"gantry tilt of about 12\.0 degrees"):
        read_dicom_folder(tmp_path)


def test_too_few_slices_and_truncated_pixels(tmp_path):
    paths = _phantom_series(tmp_path / "few")
    for path in paths[2:]:
        path.unlink()
    with pytest.raises(MedsegError, match="only 2 slice"):
        read_dicom_folder(tmp_path / "few")
    paths = _phantom_series(tmp_path / "cut")
    paths[4].write_bytes(paths[4].read_bytes()[:-200])
    with pytest.raises(MedsegError, match="truncated") as info:
        read_dicom_folder(tmp_path / "cut")
    assert "IMG0005.dcm" in str(info.value)


def test_uid_mixing_orientations_is_split(tmp_path):
    axial = _phantom_series(tmp_path / "a", rotation_deg=(0, 0, 0), seed=1)
    tilted = _phantom_series(tmp_path / "b", rotation_deg=(0, 0, 30), seed=2)
    uid = pydicom.dcmread(axial[0]).SeriesInstanceUID
    for path in tilted:
        edit_dicom(path, SeriesInstanceUID=uid)
    scan = scan_dicom(tmp_path)
    assert len(scan.series) == 2 and all(s.readable and len(s.files) == 10 for s in scan.series)
    with pytest.raises(MedsegError, match="2 series found"):
        read_dicom_folder(tmp_path)


def test_compressed_transfer_syntaxes_decode(tmp_path):
    pytest.importorskip("pylibjpeg")
    from pydicom.uid import JPEG2000Lossless, RLELossless

    image, _ = make_phantom(shape=(32, 32, 6), spacing=(1, 1, 2), seed=4)
    paths = write_dicom_series(image, tmp_path / "s")
    reference = read_dicom_folder(tmp_path / "s").array
    for i, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless if i % 2 else JPEG2000Lossless)
        ds.save_as(path)
    assert np.array_equal(read_dicom_folder(tmp_path / "s").array, reference)


def test_malformed_header_refuses_its_series_naming_the_file(tmp_path):
    paths = _phantom_series(tmp_path / "s")
    raw = bytearray(paths[0].read_bytes())  # overwrite ImagePositionPatient's value with letters
    at = raw.index(b"\x20\x00\x32\x00DS") + 6
    length = int.from_bytes(raw[at:at + 2], "little")
    raw[at + 2:at + 2 + length] = b"x" * length
    paths[0].write_bytes(bytes(raw))
    (series,) = scan_dicom(tmp_path).series
    assert not series.readable and paths[0].name in series.problems[0]
    assert "ImagePositionPatient" in series.problems[0]


def test_jpeg_lossless_decodes_without_gpl_codecs(data_path, tmp_path):
    """JPEG lossless (process 14, common in older CT exports) decodes through GDCM (BSD), not the GPL plugin."""
    gdcm = pytest.importorskip("gdcm")
    src = data_path("dicom/hippocampus_crops/study1")
    (tmp_path / "jl").mkdir()
    for path in sorted(src.iterdir()):
        reader = gdcm.ImageReader()
        reader.SetFileName(str(path))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        writer.SetFileName(str(tmp_path / "jl" / path.name))
        assert writer.Write()
    first = pydicom.dcmread(next((tmp_path / "jl").iterdir()))
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLosslessSV1
    assert np.array_equal(read_dicom_folder(tmp_path / "jl").array, read_dicom_folder(src).array)
