"""The focused pass (only windows that can reach the foreground run) gives the plain pass's labels with fewer
windows: its first round covers every voxel of MONAI's grid, its probabilities at and next to the foreground are
MONAI's own sliding window's, on a real head-and-neck CT (air around the head) and with a real trained model."""

import dataclasses

import numpy as np
import pytest
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference
from test_model_inference_fast import DATASETS, Bands

from medseg.infer import Predictor
from medseg.io import read_volume
from medseg.model.focused import covering_starts, focused_probabilities
from medseg.model.sliding import predict_probabilities, window_count
from medseg.preprocess import preprocess

CPU = torch.device("cpu")


@pytest.mark.parametrize("size,patch,overlap", [(128, 40, 0.5), (153, 56, 0.5), (90, 16, 0.25), (40, 40, 0.5),
                                                (41, 40, 0.5), (200, 64, 0.75), (30, 8, 0.0)])
def test_first_round_covers_every_voxel_with_few_windows(size, patch, overlap):
    interval = [patch if size == patch else max(int(patch * (1 - overlap)), 1)]
    starts = sorted({w[0].start for w in dense_patch_slices([size], [patch], interval)})
    chosen = covering_starts(starts, patch)
    assert set(chosen) <= set(starts) and chosen[0] == 0 and chosen[-1] == starts[-1]
    covered = np.zeros(size, bool)
    for s in chosen:
        covered[s:s + patch] = True
    assert covered.all()
    assert len(chosen) <= -(-size // patch) + 1  # about one window per patch length, not one per step


def test_foreground_probabilities_are_monais_on_a_real_ct(data_path, preprocessing_plan):
    """pt_100, resampled to a 48 mm-window plan: the focused pass runs fewer windows than MONAI's grid holds,
    its labels equal MONAI's pass everywhere and its probabilities at and next to the foreground equal MONAI's."""
    ids, spacing, patch, normalization, edges = DATASETS["openkbp"]
    plan = dataclasses.replace(preprocessing_plan(spacing, {0: "background", 1: "one", 2: "two"}, [normalization]),
                               patch_size=patch)
    data, _, _ = preprocess(read_volume(data_path("openkbp/imagesTr/pt_100.nii.gz")), None, plan)
    net = Bands(edges)
    focused = focused_probabilities(net, data, patch, CPU, None, overlap=0.5, batch=2)
    assert net.windows < 0.8 * window_count(data.shape[1:], patch, 0.5)
    with torch.no_grad():
        logits = sliding_window_inference(torch.from_numpy(data)[None], patch, 4, net, overlap=0.5, mode="gaussian")
    monai = torch.softmax(logits, dim=1)[0].numpy()
    assert np.array_equal(focused.argmax(0), monai.astype(np.float16).argmax(0))  # both stored as medseg stores
    near = torch.nn.functional.max_pool3d(torch.from_numpy(monai.argmax(0) > 0).float()[None, None], 3, 1, 1)[0, 0]
    near = near.numpy() > 0
    assert 0.05 < near.mean() < 0.95
    assert np.abs(focused[:, near].astype(np.float32) - monai[:, near]).max() < 1e-3  # float16 storage


@pytest.mark.parametrize("mirror", [False, True])
def test_trained_model_gives_the_same_labels_focused_or_not(hippocampus_run, data_path, mirror):
    """A real trained network on unseen hippocampus MRs: focused and full pass label the same voxels."""
    predictor = Predictor.from_dir(hippocampus_run, device="cpu", precision="fp32")
    for case in ("hippocampus_025", "hippocampus_033"):
        volume = read_volume(data_path(f"hippocampus/imagesTr/{case}.nii.gz"))
        full = predictor.predict(volume, mirror=mirror, focus=False).label.array
        focused = predictor.predict(volume, mirror=mirror, focus=True).label.array
        assert (full > 0).sum() > 100 and np.array_equal(full, focused), case


def test_focus_is_what_a_case_json_records(phantom_run):
    predictor = Predictor.from_dir(phantom_run, device="cpu")
    assert predictor.settings()["focus"] is True and predictor.settings(focus=False)["focus"] is False


def test_rolling_pass_runs_every_window_when_focused():
    """Over the slab limit the pass is the rolling one, focus or not (bounded memory over fewer windows)."""
    net = Bands((-0.3, 0.6))
    image = np.random.default_rng(0).normal(size=(1, 30, 40, 90)).astype(np.float32)
    predict_probabilities(net, image, [16, 16, 16], CPU, overlap=0.25, focus=True, reuse_constant=False,
                          max_slab_voxels=30 * 40 * 20)
    assert net.windows == window_count(image.shape[1:], [16, 16, 16], 0.25)
