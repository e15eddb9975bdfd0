"""The parts of inference that skip work give the plain pass's labels on real scans: windows of one value reuse
their logits, labels are restored only where they can be foreground, post-processing runs on the labelled box.

The plain pass is every window through the network and MONAI's blending, probabilities resampled to the input
grid whole (``restore_probabilities``, ``F.interpolate``) and arg-maxed. The network is a stand-in for a trained
one (smoothed intensity -> three classes, translation-equivariant with zero padding, as a U-Net is), so the
label maps are real anatomy's shapes (soft tissue, bone) on each dataset's real geometry.
"""

import dataclasses

import numpy as np
import pytest
import torch

from medseg.io import read_volume
from medseg.model.inference import InferenceSettings, predict_volume
from medseg.model.sliding import predict_probabilities, window_count
from medseg.preprocess import preprocess, restore_probabilities

CPU = torch.device("cpu")
# dataset, cases, target spacing, patch, normalisation (the trained models' plans), class edges (normalised units)
DATASETS = {
    "openkbp": (["pt_10", "pt_100"], (3.92, 3.92, 2.5), [48, 48, 48],
                {"scheme": "ct", "lower": -971.0, "upper": 1601.0, "mean": 183.0, "std": 416.3}, (-0.3, 0.6)),
    "lidc_nodules": (["LIDC-IDRI-0001_R_1", "LIDC-IDRI-0004_R_1"], (0.70312, 0.70312, 1.25), [32, 32, 8],
                     {"scheme": "ct", "lower": -927.0, "upper": 1462.0, "mean": -210.7, "std": 353.3}, (-1.0, 0.6)),
    "hippocampus": (["hippocampus_001", "hippocampus_003"], (1.0, 1.0, 1.0), [32, 32, 32],
                    {"scheme": "zscore"}, (-0.5, 0.8)),
}


class Bands(torch.nn.Module):
    """Three classes from the 5x5x5 mean intensity ``s``: background below ``edges[0]``, then 1, then 2 above
    ``edges[1]``; logits ``(0, 4 (s - e0), 8 s - 4 (e0 + e1))``. Counts the windows it sees."""

    def __init__(self, edges):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 3, 5, padding=2)
        with torch.no_grad():
            slopes = torch.tensor([0.0, 4.0, 8.0]).reshape(3, 1, 1, 1, 1)
            self.conv.weight.copy_(slopes * torch.ones(3, 1, 5, 5, 5) / 125)
            self.conv.bias.copy_(torch.tensor([0.0, -4.0 * edges[0], -4.0 * (edges[0] + edges[1])]))
        self.windows = 0

    def forward(self, x):
        self.windows += x.shape[0]
        return self.conv(x)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_fast_inference_equals_plain_pass(dataset, data_path, preprocessing_plan):
    ids, spacing, patch, normalization, edges = DATASETS[dataset]
    plan = dataclasses.replace(preprocessing_plan(spacing, {0: "background", 1: "one", 2: "two"}, [normalization]),
                               patch_size=patch)
    net = Bands(edges)
    reused = 0
    for case in ids:
        volume = read_volume(data_path(f"{dataset}/imagesTr/{case}.nii.gz"))
        data, _, trace = preprocess(volume, None, plan)
        net.windows = 0
        plain = predict_probabilities(net, data, patch, CPU, overlap=0.5, reuse_constant=False)
        assert net.windows == window_count(data.shape[1:], patch, 0.5)
        reference = restore_probabilities(plain, trace).argmax(axis=0)
        net.windows = 0
        fast = predict_volume([net], volume, plan, InferenceSettings(overlap=0.5), CPU, None).label
        reused += window_count(data.shape[1:], patch, 0.5) - net.windows
        assert fast.array.shape == volume.spatial_shape and np.array_equal(fast.affine, volume.affine)
        for value in (1, 2):
            assert (reference == value).sum() > 100, (case, value)  # both classes are real structures here
            assert _dice(fast.array == value, reference == value) >= 0.998, (case, value)
        assert (fast.array != reference).mean() < 1e-5
    if dataset == "openkbp":  # the air around a head-and-neck CT: some windows hold one value
        assert reused > 0
