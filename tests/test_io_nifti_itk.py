import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.errors import MedsegError
from medseg.io import read_volume, write_volume
from medseg.io.geometry import sitk_to_ras_affine
from medseg.io.nifti import to_label_array


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_write_read_keeps_oblique_anisotropic_geometry(tmp_path, phantom, suffix):
    image, label = phantom
    write_volume(image, tmp_path / f"img{suffix}")
    write_volume(label, tmp_path / f"lab{suffix}")
    back = read_volume(tmp_path / f"img{suffix}")
    back_label = read_volume(tmp_path / f"lab{suffix}", label=True)
    assert back.spatial_shape == image.spatial_shape
    assert np.allclose(back.affine, image.affine, atol=1e-4)
    assert np.array_equal(back.array, image.array)
    assert np.array_equal(back_label.array, label.array) and back_label.array.dtype == np.uint8
    # An independent reader (ITK, LPS internally) sees the same world geometry.
    assert np.allclose(sitk_to_ras_affine(sitk.ReadImage(str(tmp_path / f"img{suffix}"))), image.affine, atol=1e-4)


def test_nifti_sets_sform_and_qform_consistently(tmp_path, phantom):
    write_volume(phantom[0], tmp_path / "x.nii.gz")
    header = nib.load(tmp_path / "x.nii.gz").header
    sform, scode = header.get_sform(coded=True)
    qform, qcode = header.get_qform(coded=True)
    assert scode == qcode == 1
    assert np.allclose(sform, qform, atol=1e-3)


def test_disagreeing_sform_and_qform_uses_sform_with_warning(tmp_path, phantom, caplog):
    image = phantom[0]
    img = nib.Nifti1Image(image.array, image.affine)
    img.set_sform(image.affine, code=1)
    shifted = image.affine.copy()
    shifted[:3, 3] += 7.0
    img.set_qform(shifted, code=1)
    nib.save(img, tmp_path / "odd.nii.gz")
    volume = read_volume(tmp_path / "odd.nii.gz")
    assert np.allclose(volume.affine, image.affine, atol=1e-4)
    assert any("disagree" in w for w in volume.meta["warnings"])
    assert "odd.nii.gz" in caplog.text


def test_qform_only_file_is_read_by_qform(tmp_path, phantom):
    image = phantom[0]
    img = nib.Nifti1Image(image.array, None)
    img.set_qform(image.affine, code=1)
    img.set_sform(np.eye(4), code=0)
    nib.save(img, tmp_path / "q.nii.gz")
    assert np.allclose(read_volume(tmp_path / "q.nii.gz").affine, image.affine, atol=1e-3)


def test_overwrite_refused_unless_asked(tmp_path, phantom):
    path = tmp_path / "x.nii.gz"
    write_volume(phantom[0], path)
    with pytest.raises(MedsegError, match="exists"):
        write_volume(phantom[1], path)
    write_volume(phantom[1], path, overwrite=True)
    assert read_volume(path, label=True).array.max() == 2
    assert [p.name for p in tmp_path.iterdir()] == ["x.nii.gz"]  # no temp files left behind


def test_truncated_gzip_gives_one_line_error(tmp_path, phantom):
    path = tmp_path / "cut.nii.gz"
    write_volume(phantom[0], path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(MedsegError) as info:
        read_volume(path)
    assert "cut.nii.gz" in str(info.value) and "\n" not in str(info.value)


def test_huge_header_is_refused_before_allocating(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000))
    header.set_data_dtype(np.float32)
    path = tmp_path / "huge.nii.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(header.binaryblock + b"\0" * 4)
    with pytest.raises(MedsegError, match="memory"):
        read_volume(path)


def test_interpolated_label_is_refused():
    with pytest.raises(MedsegError, match="non-integer"):
        to_label_array(np.array([0.0, 0.5, 1.0]))
    assert to_label_array(np.array([0.0, 1.0, 300.0])).dtype == np.int16


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(MedsegError, match="unknown image format"):
        read_volume(tmp_path / "notes.txt")
    with pytest.raises(MedsegError, match="not found"):
        read_volume(tmp_path / "missing.nii.gz")


def test_singular_affine_is_refused(tmp_path, phantom):
    img = nib.Nifti1Image(phantom[0].array, None)
    img.header.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)
    nib.save(img, tmp_path / "flat.nii.gz")
    with pytest.raises(MedsegError, match="singular"):
        read_volume(tmp_path / "flat.nii.gz")


def test_stale_temporaries_are_removed_only_when_old(tmp_path):
    import os
    import time

    from medseg.io.atomic import remove_stale_temporaries

    old, fresh, output = tmp_path / ".case.abc.tmp.nii.gz", tmp_path / ".case.def.tmp.nii.gz", tmp_path / "case.nii.gz"
    for path in (old, fresh, output):
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert remove_stale_temporaries(tmp_path) == 1
    assert not old.exists() and fresh.exists() and output.exists()


@pytest.mark.parametrize("kind", ["int16 F-order", "scaled", "big-endian", "uint16", "4D"])
def test_intensities_read_as_nibabel_gives_them(kind, data_path, tmp_path):
    """Intensities come back C-ordered float32, equal to nibabel's own ``get_fdata`` (scl_slope/scl_inter applied),
    whatever the stored type and byte order (a real OpenKBP CT, stored several ways)."""
    source = nib.load(data_path("openkbp/imagesTr/pt_100.nii.gz"))
    hu = np.asarray(source.dataobj)[:40, :50, :30]
    array = {"int16 F-order": hu, "scaled": ((hu + 1024) // 2).astype(np.int16),
             "uint16": (hu + 1024).astype(np.uint16), "big-endian": hu.astype(">i2"),
             "4D": np.stack([hu, hu // 2], axis=-1)}[kind]
    image = nib.Nifti1Image(array, source.affine)
    if kind == "scaled":
        image.header.set_slope_inter(2.0, -1024.0)
    nib.save(image, tmp_path / "ct.nii.gz")
    volume = read_volume(tmp_path / "ct.nii.gz")
    expected = nib.load(tmp_path / "ct.nii.gz").get_fdata()
    if kind == "4D":
        expected = np.moveaxis(expected, -1, 0)
    assert volume.array.dtype == np.float32 and volume.array.flags["C_CONTIGUOUS"]
    assert np.array_equal(volume.array, expected.astype(np.float32))
