"""Same answer whatever the storage order: one real hippocampus case stored four ways (as is, x/y reversed,
axes permuted, permuted and reversed) gives the same preprocessed arrays, the same segmentation in
physical space on each input's exact grid, and the same QA display planes."""

import json

import numpy as np
import pytest
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from medseg.infer.predictor import Predictor
from medseg.io import read_volume
from medseg.preprocess import preprocess, restore_labels, restore_probabilities
from medseg.preprocess.orientation import canonical_ornt, from_canonical, to_canonical
from medseg.qa.figures import display_planes, display_slice
from medseg.types import Volume

# Storage variants as nibabel orientations: row i = (new axis, flip) for stored axis i.
VARIANTS = {
    "as is": [[0, 1], [1, 1], [2, 1]],
    "x/y reversed": [[0, -1], [1, -1], [2, 1]],
    "permuted": [[2, 1], [0, 1], [1, 1]],
    "permuted and reversed": [[1, -1], [2, 1], [0, -1]],
}
TEST_CASE = 20  # indices in the sorted case list: the first ten train, the 21st is unseen


def stored_as(volume: Volume, ornt) -> Volume:
    """The same voxels stored with permuted/reversed axes; the affine keeps every voxel where it was."""
    ornt = np.asarray(ornt)
    return Volume(np.ascontiguousarray(apply_orientation(volume.array, ornt)),
                  volume.affine @ inv_ornt_aff(ornt, volume.spatial_shape))


def on_grid_of(array: np.ndarray, affine: np.ndarray, reference: Volume) -> np.ndarray:
    """Map an axis-aligned array back onto ``reference``'s grid (axis order and directions), checking
    that the result is on exactly that grid in physical space."""
    ornt = ornt_transform(io_orientation(affine), io_orientation(reference.affine))
    back = apply_orientation(array, ornt)
    assert np.allclose(affine @ inv_ornt_aff(ornt, array.shape), reference.affine, atol=1e-6)
    return back


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    a, b = a == value, b == value
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def case_ids(root) -> list[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in (root / "labelsTr").glob("*.nii.gz"))


@pytest.fixture()
def hippocampus_case(data_path):
    root = data_path("hippocampus")
    case = case_ids(root)[TEST_CASE]
    return (read_volume(root / "imagesTr" / f"{case}.nii.gz"),
            read_volume(root / "labelsTr" / f"{case}.nii.gz", label=True))


def test_orientation_module_round_trips_exactly(hippocampus_case):
    image, _ = hippocampus_case
    canon = [to_canonical(stored_as(image, o)) for o in VARIANTS.values()]
    for c in canon[1:]:
        assert np.array_equal(c.array, canon[0].array) and np.allclose(c.affine, canon[0].affine, atol=1e-9)
    for ornt in VARIANTS.values():
        stored = stored_as(image, ornt)
        four_d = np.stack([stored.array, stored.array + 1])
        o = canonical_ornt(stored.affine)
        assert np.array_equal(from_canonical(to_canonical(stored).array, o), stored.array)
        assert np.array_equal(from_canonical(to_canonical(Volume(four_d, stored.affine)).array, o), four_d)


def test_preprocess_is_identical_for_every_storage_order_and_restore_undoes_it(hippocampus_case, preprocessing_plan):
    image, label = hippocampus_case
    plan = preprocessing_plan(image.spacing, {0: "bg", 1: "anterior", 2: "posterior"})
    results = {}
    for name, ornt in VARIANTS.items():
        img, lab = stored_as(image, ornt), stored_as(label, ornt)
        data, pre_lab, trace = preprocess(img, lab, plan)
        results[name] = (data, pre_lab)
        onehot = np.stack([(pre_lab == k).astype(np.float32) for k in (0, 1, 2)])
        assert np.array_equal(restore_labels(onehot, trace, [0, 1, 2]), lab.array), name  # no resampling: exact
        probs = restore_probabilities(onehot, trace)
        assert probs.shape == (3, *lab.spatial_shape)
        assert np.array_equal(probs.argmax(axis=0), lab.array), name
        assert trace.original_shape == list(img.spatial_shape) and np.allclose(trace.original_affine, img.affine)
        json.dumps(trace.to_dict())  # the trace stays JSON-serialisable
    data0, lab0 = results["as is"]
    for name, (data, lab) in results.items():
        assert np.array_equal(data, data0) and np.array_equal(lab, lab0), name


def test_qa_display_planes_do_not_depend_on_storage_order(hippocampus_case):
    image, label = hippocampus_case
    reference = display_planes(image.array, label.array, image.affine)
    assert [p.name for p in reference] == ["sagittal", "coronal", "axial"]
    for name, ornt in VARIANTS.items():
        img, lab = stored_as(image, ornt), stored_as(label, ornt)
        for ref, got in zip(reference, display_planes(img.array, lab.array, img.affine), strict=True):
            assert ref.index == got.index and ref.aspect == got.aspect, name
            assert np.array_equal(ref.image, got.image) and np.array_equal(ref.label, got.label), (name, ref.name)


def test_display_is_radiological():
    """On an RAS grid: the patient's right (high x) is on the image's left, anterior/superior at the top."""
    ras = np.zeros((5, 6, 7))
    ras[4, 5, 3] = 1  # rightmost, most anterior voxel of axial slice 3
    ras[4, 2, 6] = 2  # rightmost, most superior voxel of coronal slice 2
    ras[1, 5, 6] = 3  # most anterior, most superior voxel of sagittal slice 1
    assert display_slice(ras, "axial", 3)[0, 0] == 1
    assert display_slice(ras, "coronal", 2)[0, 0] == 2
    assert display_slice(ras, "sagittal", 1)[0, 0] == 3


@pytest.fixture(scope="module")
def hippocampus_model(hippocampus_run):
    return Predictor.from_dir(hippocampus_run)


def test_segmentation_is_the_same_whatever_the_storage_order(hippocampus_model, hippocampus_case):
    image, truth = hippocampus_case
    outputs = {}
    for name, ornt in VARIANTS.items():
        stored = stored_as(image, ornt)
        label = hippocampus_model.predict(stored).label
        assert label.spatial_shape == stored.spatial_shape and np.array_equal(label.affine, stored.affine), name
        outputs[name] = on_grid_of(label.array, label.affine, image)
    reference = outputs["as is"]
    # the model does segment (the session's 120-step model can miss one structure of this unseen case: anterior
    # Dice 0 on a Zen 3 EPYC since the larger-block augmentation, posterior 0.75), so the comparisons below are
    # not between empty maps
    assert max(dice(reference, truth.array, k) for k in (1, 2)) > 0.5
    found = [k for k in (1, 2) if (reference == k).any()]
    for name, out in outputs.items():
        for k in (1, 2):
            if k in found:
                assert dice(out, reference, k) >= 0.995, (name, k)
            else:  # missed in the reference: missed whatever the storage order
                assert not (out == k).any(), (name, k)
    # The check can fail: the permuted voxels presented with an unpermuted affine (what a model sees
    # without reorientation) give a clearly different segmentation.
    ornt = np.asarray(VARIANTS["permuted"])
    lying = Volume(stored_as(image, ornt).array, image.affine)
    wrong = apply_orientation(hippocampus_model.predict(lying).label.array, ornt_transform(VARIANTS["as is"], ornt))
    assert min(dice(wrong, reference, k) for k in found) < 0.9
