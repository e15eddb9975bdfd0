"""Every slice accounted for: edited copies of the real shared series are read whole or refused whole,
naming the file; float noise never splits a series; one bad series never spoils the folder; files the
header scan accepts are decoded; enhanced multi-frame images read like their single-frame source."""

import shutil
import warnings

import numpy as np
import pydicom
import pytest
from conftest import edit_dicom
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEGLSLossless, RLELossless, generate_uid
from typer.testing import CliRunner

from medseg.cli import app
from medseg.errors import MedsegError
from medseg.infer.inputs import discover
from medseg.io import read_dicom_folder, scan_dicom

runner = CliRunner()
HIPPO = "dicom/hippocampus_crops/study1"
CT_J2K = "dicom/ct_jpeg2000/series"
POSITIONS = {"first": 0, "middle": None, "last": -1}


def _copy(src, dst):
    shutil.copytree(src, dst)
    (series,) = scan_dicom(dst).series
    return series.files  # sorted along the slice normal


def _pick(files, where):
    return files[len(files) // 2] if POSITIONS[where] is None else files[POSITIONS[where]]


def _no_position(path):
    ds = pydicom.dcmread(path)
    del ds.ImagePositionPatient
    ds.save_as(path)


def _nan_position(path):
    edit_dicom(path, ImagePositionPatient=["NaN", "0", "0"])


def _comma_slope(path):
    ds = pydicom.dcmread(path)
    ds.add_new(0x00281053, "DS", None)
    ds[0x00281053]._value = "1,2345678"  # a European decimal comma, as some exporters write
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path)


def _other_size(path):
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array[:-3]
    ds.PixelData, ds.Rows = pixels.tobytes(), pixels.shape[0]
    ds.save_as(path)


def _resent_with_other_content(path):
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.copy()
    pixels[0, 0] += 1
    ds.PixelData = pixels.tobytes()
    ds.save_as(path.parent / "resent.dcm")


DAMAGE = {"no ImagePositionPatient": (_no_position, "ImagePositionPatient"),
          "NaN position": (_nan_position, "ImagePositionPatient"),
          "malformed RescaleSlope": (_comma_slope, "RescaleSlope"),
          "other rows/columns": (_other_size, "pixels"),
          "re-sent SOPInstanceUID": (_resent_with_other_content, "SOPInstanceUID")}


@pytest.mark.parametrize("where", POSITIONS)
@pytest.mark.parametrize("damage", DAMAGE)
def test_one_bad_slice_refuses_the_whole_series_naming_the_file(data_path, tmp_path, damage, where):
    files = _copy(data_path(HIPPO), tmp_path / "s")
    bad = _pick(files, where)
    edit, words = DAMAGE[damage]
    edit(bad)
    with pytest.raises(MedsegError) as info:
        read_dicom_folder(tmp_path / "s")
    message = str(info.value)
    assert bad.name in message and words in message and "\n" not in message


def _recompress(files, syntax):
    for path in files:
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(path)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _undecodable(path):
    ds = pydicom.dcmread(path)
    (frame,) = list(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([bytes(len(frame))])  # right size, no codestream: no decoder accepts it
    ds.save_as(path)


@pytest.mark.parametrize("where", POSITIONS)
@pytest.mark.parametrize("codec", ["JPEG 2000", "RLE", "JPEG-LS"])
@pytest.mark.parametrize("damage", [_truncate, _undecodable], ids=["truncated", "undecodable"])
def test_damaged_compressed_slice_refuses_the_series(data_path, tmp_path, codec, where, damage):
    if codec == "JPEG 2000":
        files = _copy(data_path(CT_J2K), tmp_path / "s")  # real JPEG 2000 lossless CT
    else:
        files = _copy(data_path(HIPPO), tmp_path / "s")
        _recompress(files, RLELossless if codec == "RLE" else JPEGLSLossless)
        reference = read_dicom_folder(data_path(HIPPO)).array
        assert np.array_equal(read_dicom_folder(tmp_path / "s").array, reference)
    bad = _pick(files, where)
    damage(bad)
    with pytest.raises(MedsegError) as info:
        read_dicom_folder(tmp_path / "s")
    assert bad.name in str(info.value)


def test_identical_duplicate_is_ignored_and_said(data_path, tmp_path):
    files = _copy(data_path(HIPPO), tmp_path / "s")
    shutil.copy(files[5], tmp_path / "s" / "copy_of_slice.dcm")
    volume = read_dicom_folder(tmp_path / "s")
    assert np.array_equal(volume.array, read_dicom_folder(data_path(HIPPO)).array)
    assert any("identical duplicate" in w for w in volume.meta["warnings"])


def test_orientation_noise_neither_splits_nor_leaves_a_gap(data_path, tmp_path):
    src = data_path("dicom/brain_mr_study/11-T1post-18670")  # oblique
    files = _copy(src, tmp_path / "s")
    rng = np.random.default_rng(1)
    for path in files[3:6]:
        iop = np.asarray(pydicom.dcmread(path).ImageOrientationPatient, float) + rng.choice([-1e-5, 1e-5], 6)
        edit_dicom(path, ImageOrientationPatient=[f"{v:.8f}" for v in iop])
    scan = scan_dicom(tmp_path / "s")
    assert len(scan.series) == 1 and scan.series[0].readable
    a, b = read_dicom_folder(src), read_dicom_folder(tmp_path / "s")
    assert np.array_equal(a.array, b.array) and np.allclose(a.affine, b.affine, atol=1e-3)


def test_localizer_in_the_series_becomes_its_own_group(data_path, tmp_path):
    files = _copy(data_path(HIPPO), tmp_path / "s")
    ds = pydicom.dcmread(files[0])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal, as a localizer
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "s" / "localizer.dcm")
    scan = scan_dicom(tmp_path / "s")
    assert sorted(len(s.files) for s in scan.series) == [1, 32]
    assert [s.readable for s in scan.series] == [True, False] and "only 1 slice" in scan.series[1].problems[0]
    assert np.array_equal(read_dicom_folder(tmp_path / "s").array, read_dicom_folder(data_path(HIPPO)).array)


def test_one_bad_tag_spoils_one_series_in_info_convert_and_infer(data_path, tmp_path):
    study = tmp_path / "study"
    bad_files = _copy(data_path(HIPPO), study / "a")
    shutil.copytree(data_path("dicom/hippocampus_crops/study2"), study / "b")
    _comma_slope(bad_files[10])
    info = runner.invoke(app, ["info", str(study)])
    assert info.exit_code == 0 and "Traceback" not in info.output
    assert info.output.count("REFUSED") == 1 and "RescaleSlope" in info.output and "35 slices): " in info.output
    converted = runner.invoke(app, ["convert", str(study), str(tmp_path / "out")])
    assert converted.exit_code == 1 and "converted 1 of 2 series" in converted.output
    assert "Traceback" not in converted.output and len(list((tmp_path / "out").glob("*.nii.gz"))) == 1
    cases, _ = discover(study)
    ready = [c for c in cases if not c.refused]
    refused = [c for c in cases if c.refused]
    assert len(ready) == 1 and ready[0].series.depth == 35 and len(refused) == 1
    assert "RescaleSlope" in refused[0].refused and bad_files[10].name in refused[0].refused


def test_file_without_preamble_or_file_meta_is_read_like_the_others(data_path, tmp_path):
    files = _copy(data_path(HIPPO), tmp_path / "s")
    ds = pydicom.dcmread(files[7])
    ds.preamble = None
    del ds.file_meta
    ds.save_as(files[7], implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert files[7].read_bytes()[128:132] != b"DICM"
    assert np.array_equal(read_dicom_folder(tmp_path / "s").array, read_dicom_folder(data_path(HIPPO)).array)


@pytest.mark.parametrize("rel", [HIPPO, "dicom/brain_mr_study/11-T1post-18670"])
def test_enhanced_multiframe_reads_like_its_single_frame_source(data_path, tmp_path, rel):
    import highdicom as hd

    single = read_dicom_folder(data_path(rel))
    sources = [pydicom.dcmread(p) for p in scan_dicom(data_path(rel)).series[0].files]
    multi = hd.legacy.LegacyConvertedEnhancedMRImage(
        sources, series_instance_uid=generate_uid(), series_number=99, sop_instance_uid=generate_uid(),
        instance_number=1)
    (tmp_path / "mf").mkdir()
    multi.save_as(tmp_path / "mf" / "volume.dcm")
    (series,) = scan_dicom(tmp_path / "mf").series
    assert series.readable and series.frames == len(sources)
    volume = read_dicom_folder(tmp_path / "mf")
    assert volume.array.shape == single.array.shape and np.array_equal(volume.array, single.array)
    assert np.abs(volume.affine - single.affine).max() < 1e-4


def test_colour_images_are_refused_as_colour(data_path, tmp_path):
    files = _copy(data_path(HIPPO), tmp_path / "s")
    for path in files:
        ds = pydicom.dcmread(path)
        grey = (ds.pixel_array.astype(float) / max(1, ds.pixel_array.max()) * 255).astype(np.uint8)
        ds.PixelData = np.repeat(grey[..., None], 3, axis=-1).tobytes()
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.save_as(path)
    with pytest.raises(MedsegError, match="colour image"):
        read_dicom_folder(tmp_path / "s")


def test_convert_names_follow_series_identity_not_discovery_order(data_path, tmp_path):
    study, out = tmp_path / "study", tmp_path / "out"
    t1 = data_path("dicom/brain_mr_study/11-T1post-18670")
    shutil.copytree(t1, study / "zz_t1")
    assert runner.invoke(app, ["convert", str(study), str(out)]).exit_code == 0
    (first,) = out.glob("*.nii.gz")
    before = first.read_bytes()
    older = _copy(data_path("dicom/brain_mr_study/36468-FLAIRreg-58706"), study / "aa_older")
    for path in older:  # an older study whose series has the same number, found first on disk
        edit_dicom(path, SeriesNumber=11)
    again = runner.invoke(app, ["convert", str(study), str(out)])
    assert again.exit_code == 0 and "same series, kept" in again.output
    assert first.read_bytes() == before
    names = sorted(p.name for p in out.glob("*.nii.gz"))
    assert len(names) == 2 and all(n.startswith("s11_") for n in names)
    from medseg.io import read_volume

    for source in (t1, study / "aa_older"):
        expected = read_dicom_folder(source)
        (match,) = [p for p in out.glob("*.nii.gz") if np.array_equal(read_volume(p).array, expected.array)]
        assert np.allclose(read_volume(match).affine, expected.affine, atol=1e-4)
    sidecar = next(out.glob("*T1post.json"))
    sidecar.write_text(sidecar.read_text().replace('"series_sha256": "', '"series_sha256": "0'))
    third = runner.invoke(app, ["convert", str(study), str(out)])
    assert third.exit_code == 1 and "does not show it holds this series" in third.output
    assert first.read_bytes() == before
