"""Mirroring and left/right labels: the plan leaves out the axis that separates lateral label pairs (measured on
real OpenKBP parotids, checked with SimpleITK and on copies stored with permuted axes), training never flips
along it, and mirrored sliding-window prediction averages exactly the flips along the remaining axes."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from conftest import collect_log

from medseg.config import AugmentConfig, load_config
from medseg.data.dataset import load_dataset
from medseg.model import sliding
from medseg.model.sliding import mirror_flips, predict_probabilities, window_count
from medseg.preprocess import fingerprint, make_plan
from medseg.preprocess.plan import Plan, lateral_pairs, mirror_axes
from medseg.train.augment import build_augmentation
from medseg.train.data import load_or_plan
from medseg.train.loop import BatchStream

RIGHT_PAROTID, LEFT_PAROTID = 3, 4
N_CASES = 5


# --- which labels pair up -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("labels", "pairs"), [
    ({3: "RightParotid", 4: "LeftParotid"}, [(4, 3)]),
    ({1: "Kidney_L", 2: "Kidney_R"}, [(1, 2)]),
    ({1: "left lung", 2: "right lung"}, [(1, 2)]),
    ({1: "LEFT_LUNG", 2: "RIGHT_LUNG"}, [(1, 2)]),
    ({1: "Parotid_R", 2: "Parotid_L"}, [(2, 1)]),
    ({1: "Lt_Eye", 2: "Rt_Eye"}, [(1, 2)]),
    ({1: "ParotidLt", 2: "ParotidRt"}, [(1, 2)]),
    ({1: "rib_left_1", 2: "rib_right_1", 3: "rib_left_2", 4: "rib_right_2"}, [(1, 2), (3, 4)]),
    ({1: "Brightness", 2: "bright", 3: "cleft", 4: "Leftover"}, []),  # side words only as whole words
    ({1: "Kidney_L", 2: "Liver"}, []),  # one side alone pairs with nothing
    ({1: "left_kidney", 2: "right_lung"}, []),  # different structures
    ({1: "vertebrae_L1", 2: "vertebrae_L2"}, []),  # lumbar, not left
    ({1: "anterior", 2: "posterior"}, []),
])
def test_lateral_pairs_by_name(labels, pairs):
    assert sorted(lateral_pairs({0: "background", **labels})) == pairs


def test_no_centroids_or_no_pair_keeps_every_axis():
    """A fingerprint written before centroids were measured plans all axes, and so does a plan read from JSON
    written before the field existed."""
    labels = {0: "background", 1: "Kidney_L", 2: "Kidney_R"}
    assert mirror_axes({}, labels) == [0, 1, 2]
    centroids = [{"1": [10.0, 0.0, 0.0], "2": [90.0, 1.0, 0.0]}]
    assert mirror_axes({"label_centroids_mm": centroids}, labels) == [1, 2]
    assert mirror_axes({"label_centroids_mm": centroids}, {0: "background", 1: "a", 2: "b"}) == [0, 1, 2]
    old = {"target_spacing": [1.0] * 3, "patch_size": [16] * 3, "batch_size": 2, "strides": [[1, 1, 1]],
           "kernel_sizes": [[3, 3, 3]], "filters": [8], "normalization": [{"scheme": "zscore"}],
           "labels": {"0": "background"}, "channels": {"0": "MR"}}
    assert Plan.from_dict(old).mirror_axes == [0, 1, 2]


# --- real data: OpenKBP parotids and hippocampus ----------------------------------------------------------------


def _manifest(path: Path, labels: dict, channel: str, cases: list[tuple[str, Path, Path]]) -> Path:
    path.write_text(yaml.safe_dump({"name": path.stem, "channels": {0: channel}, "labels": labels,
                                    "cases": [{"id": c, "images": [str(i)], "label": str(s)} for c, i, s in cases]}))
    return path


@pytest.fixture(scope="module")
def openkbp(shared_data) -> tuple[dict, list[tuple[str, Path, Path]]]:
    """OpenKBP's labels and the first cases (image, label) in which both parotids were contoured."""
    root = shared_data / "openkbp"
    if not root.exists():
        pytest.skip(f"openkbp not in {shared_data}")
    annotated = json.loads((root / "annotated_labels.json").read_text())
    ids = [c for c in sorted(annotated) if {RIGHT_PAROTID, LEFT_PAROTID} <= set(annotated[c])][:N_CASES]
    labels = {int(k): v for k, v in json.loads((root / "dataset.json").read_text())["labels"].items()}
    return labels, [(c, root / "imagesTr" / f"{c}.nii.gz", root / "labelsTr" / f"{c}.nii.gz") for c in ids]


def _itk_lateral_axis(label_files: list[Path]) -> int:
    """World axis (0 x, 1 y, 2 z) along which the parotids' median centroid difference is largest, measured by
    SimpleITK in physical space (LPS; the same axes as RAS, which is what closest-RAS canonical axes follow)."""
    import SimpleITK as sitk

    diffs = []
    for path in label_files:
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(sitk.ReadImage(str(path), sitk.sitkUInt8))
        diffs.append(np.subtract(stats.GetCentroid(LEFT_PAROTID), stats.GetCentroid(RIGHT_PAROTID)))
    return int(np.argmax(np.abs(np.median(diffs, axis=0))))


def _plan_axes(manifest: Path) -> list[int]:
    data = load_dataset(manifest)
    return make_plan(fingerprint(data), data.channels, data.labels, load_config()).mirror_axes


def test_openkbp_plan_leaves_out_the_parotid_axis(openkbp, tmp_path):
    """OpenKBP's diagonal affine puts the parotids across array axis 1 (not R): the plan measures that, says so
    in the log line and in plan.json."""
    labels, cases = openkbp
    assert lateral_pairs(labels) == [(LEFT_PAROTID, RIGHT_PAROTID)]
    lateral = _itk_lateral_axis([s for _, _, s in cases])
    assert lateral == 1  # as measured on the label maps (centroids y ~50 vs ~78 voxels)
    with collect_log() as lines:
        plan, fp = load_or_plan(load_dataset(_manifest(tmp_path / "kbp.yaml", labels, "CT", cases)), load_config(),
                                tmp_path)
    assert plan.mirror_axes == [a for a in range(3) if a != lateral] == [0, 2]
    assert any("mirroring axes [0, 2] (left/right labels along axis 1)" in line for line in lines)
    assert json.loads((tmp_path / "plan.json").read_text())["mirror_axes"] == [0, 2]
    assert len(fp["label_centroids_mm"]) == len(cases)
    assert Plan.read(tmp_path / "plan.json") == plan


def _stored_permuted(src: Path, dst: Path, order: tuple[int, int, int], keep_world: bool) -> Path:
    """``src`` with its array axes in ``order`` (new axis i = old axis ``order[i]``), written to ``dst``.

    ``keep_world``: the affine's columns are permuted with the axes and axis 0 is also stored reversed, so every
    voxel keeps its position (same anatomy in world space, another storage); otherwise the affine is the plain
    diagonal of the permuted voxel sizes, so the anatomy itself moves to other world axes.
    """
    img = nib.load(str(src))
    array = np.transpose(np.asarray(img.dataobj), order)
    affine = np.array(img.affine, float)
    if keep_world:
        affine[:, :3] = affine[:, list(order)]
        array = array[::-1]
        affine[:3, 3] += affine[:3, 0] * (array.shape[0] - 1)
        affine[:3, 0] *= -1
    else:
        affine = np.diag([*np.abs(np.diag(img.affine)[:3])[list(order)], 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array), affine), str(dst))
    return dst


@pytest.mark.parametrize(("order", "keep_world", "expected"), [
    ((2, 0, 1), True, [0, 2]),  # stored differently, same anatomy: the same canonical axis
    ((1, 0, 2), False, [1, 2]),  # parotids now lie across world x: axis 0 is left out
    ((0, 2, 1), False, [0, 1]),  # ... across world z: axis 2
])
def test_openkbp_axis_follows_the_anatomy(openkbp, tmp_path, order, keep_world, expected):
    labels, cases = openkbp
    copies = [(c, _stored_permuted(i, tmp_path / f"{c}_img.nii", order, keep_world),
               _stored_permuted(s, tmp_path / f"{c}_seg.nii", order, keep_world)) for c, i, s in cases]
    lateral = _itk_lateral_axis([s for _, _, s in copies])
    assert expected == [a for a in range(3) if a != lateral]
    assert _plan_axes(_manifest(tmp_path / "kbp.yaml", labels, "CT", copies)) == expected


def test_hippocampus_keeps_every_axis(data_path, tmp_path):
    """No left/right pair among anterior/posterior: every axis stays mirrorable."""
    root = data_path("hippocampus")
    ids = sorted(p.name[: -len(".nii.gz")] for p in (root / "labelsTr").glob("*.nii.gz"))[:N_CASES]
    cases = [(c, root / "imagesTr" / f"{c}.nii.gz", root / "labelsTr" / f"{c}.nii.gz") for c in ids]
    labels = {0: "background", 1: "anterior", 2: "posterior"}
    assert _plan_axes(_manifest(tmp_path / "hippo.yaml", labels, "MR", cases)) == [0, 1, 2]


# --- training augmentation -------------------------------------------------------------------------------------


_FLIPS_ONLY = AugmentConfig(affine_prob=0, gamma_prob=0, noise_prob=0, blur_prob=0, contrast_prob=0, lowres_prob=0)


def _flipped_axes(patch: np.ndarray, original: np.ndarray) -> tuple[int, ...]:
    """The spatial axes along which a ``(C, X, Y, Z)`` ``patch`` is ``original`` flipped (exactly one match)."""
    found = [s for n in range(4) for s in combinations(range(3), n)
             if np.array_equal(patch, np.flip(original, [a + 1 for a in s]))]
    assert len(found) == 1
    return found[0]


class _OnePatch:
    """A sampler that always returns the same patch, asymmetric along every axis."""

    def __init__(self, image: np.ndarray, label: np.ndarray):
        self.image, self.label, self.rng = image, label, None

    def batch(self, n: int) -> SimpleNamespace:
        return SimpleNamespace(images=np.stack([self.image] * n), labels=np.stack([self.label] * n),
                               contoured=np.ones((n, 3), bool))


@pytest.mark.parametrize(("axes", "excluded"), [((0, 2), 1), ((1, 2), 0)])
def test_batch_stream_never_flips_an_excluded_axis(axes, excluded):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 8, 10, 6)).astype(np.float32)
    label = (image > 0).astype(np.int64) + (np.arange(10)[None, None, :, None] > 4)
    stream = iter(BatchStream(_OnePatch(image, label), _FLIPS_ONLY, 4, seed=1, mirror_axes=axes))
    seen = set()
    for _ in range(40):
        images, labels, _ = next(stream)
        for img, lab in zip(images.numpy(), labels.numpy(), strict=True):
            flip = _flipped_axes(img, image)
            assert np.array_equal(lab, np.flip(label, [a + 1 for a in flip]))  # the label goes with the image
            seen.add(flip)
    assert all(excluded not in flip for flip in seen)
    assert seen == set(mirror_flips(axes))  # the other axes are flipped, alone and together


def test_augmentation_flips_every_axis_by_default():
    image = np.random.default_rng(1).normal(size=(1, 6, 7, 8)).astype(np.float32)
    compose = build_augmentation(_FLIPS_ONLY, seed=3)
    seen = {_flipped_axes(np.asarray(compose({"image": image, "label": image})["image"]), image)
            for _ in range(120)}
    assert seen == set(mirror_flips((0, 1, 2)))


# --- mirrored sliding-window prediction --------------------------------------------------------------------------


class _Counting(torch.nn.Module):
    """A 3-class convolutional network that counts the windows it sees."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv3d(4, 3, 3, padding=1))
        self.windows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        return self.net(x)


def _monai_flip_average(net: torch.nn.Module, image: np.ndarray, axes, patch, overlap: float) -> np.ndarray:
    """Softmax of the average logits of MONAI sliding-window passes over ``image`` flipped along each subset of
    ``axes`` (flips undone on the logits): the reference, on a grid whose windows flip onto windows."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(image)[None]
    subsets = [[a + 2 for a in s] for n in range(len(axes) + 1) for s in combinations(axes, n)]
    with torch.no_grad():
        logits = [torch.flip(sliding_window_inference(torch.flip(x, d), patch, 1, net, overlap=overlap,
                                                      mode="gaussian"), d) for d in subsets]
    return torch.softmax(torch.stack(logits).mean(0), dim=1)[0].numpy()


@pytest.mark.parametrize("axes", [(0, 2), (0, 1, 2), (1,)])
def test_mirrored_prediction_averages_the_flips_of_its_axes(axes, monkeypatch):
    """(32, 40, 24) with 16-voxel windows at overlap 0.5: every axis is a whole number of 8-voxel steps, so a
    flipped image has the flipped windows and the reference is exact up to float rounding."""
    monkeypatch.setenv("MEDSEG_COMPILE", "0")
    asked = []
    real = sliding.compiled_forward
    monkeypatch.setattr(sliding, "compiled_forward", lambda *a: asked.append(a[-1]) or real(*a))
    net, patch = _Counting().eval(), [16, 16, 16]
    image = np.random.default_rng(2).normal(size=(1, 32, 40, 24)).astype(np.float32)
    expected = _monai_flip_average(net, image, axes, patch, 0.5)
    windows = window_count(image.shape[1:], patch, 0.5)
    for slab in (None, 32 * 40 * 12):  # one MONAI pass, and the rolling pass
        net.windows = 0
        extra = {} if slab is None else {"max_slab_voxels": slab}
        got = predict_probabilities(net, image, patch, torch.device("cpu"), mirror=True, mirror_axes=axes, **extra)
        assert np.abs(got.astype(np.float32) - expected).max() <= 1e-3
        assert net.windows == asked[-1] == windows * 2 ** len(axes)  # 4 passes for two axes, 8 for three
