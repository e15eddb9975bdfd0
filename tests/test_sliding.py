"""Slab-wise sliding-window prediction equals one whole-volume pass (bounded memory, same answer)."""

import numpy as np
import pytest
import torch

from medseg.model.sliding import predict_probabilities


@pytest.mark.parametrize("overlap", [0.5, 0.25])
@pytest.mark.parametrize("mirror", [False, True])
def test_slabs_match_single_pass(overlap, mirror):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv3d(3, 3, 3, padding=1))
    image = np.random.default_rng(0).normal(size=(1, 30, 40, 90)).astype(np.float32)
    whole = predict_probabilities(net, image, [16, 16, 16], torch.device("cpu"), overlap=overlap, mirror=mirror)
    assert whole.dtype == np.float16 and whole.shape == (3, 30, 40, 90)
    assert np.allclose(whole.astype(np.float32).sum(0), 1.0, atol=3e-3)
    for slab_voxels in (30 * 40 * 40, 30 * 40 * 53):
        slabs = predict_probabilities(net, image, [16, 16, 16], torch.device("cpu"), overlap=overlap, mirror=mirror,
                                      max_slab_voxels=slab_voxels)
        assert np.abs(whole.astype(np.float32) - slabs.astype(np.float32)).max() <= 1e-3
