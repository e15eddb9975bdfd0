"""Windows per network call on CPU are measured and cached, and batching windows or flips never changes the result:
probabilities on a real hippocampus MR equal MONAI's one-window sliding-window pass (and its mirrored average)."""

import functools
import json

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import DynUNet

from medseg.io import read_volume
from medseg.model import batching, sliding
from medseg.model.batching import choose_batch, windows_per_call
from medseg.model.sliding import _exact_batch, call_batches, predict_probabilities

CPU = torch.device("cpu")


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return DynUNet(3, 1, 3, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2],
                   filters=[8, 16, 32], norm_name="instance").eval()


class _Counted(torch.nn.Module):
    """The DynUNet, counting the windows it sees."""

    def __init__(self):
        super().__init__()
        self.net, self.windows = _net(), 0

    def forward(self, x):
        self.windows += x.shape[0]
        return self.net(x)


def test_the_smallest_batch_within_the_margin_of_the_fastest_is_chosen():
    assert choose_batch({1: 201.2, 2: 40.1, 4: 41.0}) == 2  # Zen 3 EPYC, 2026-12-07
    assert choose_batch({1: 122.0, 2: 130.0, 4: 131.0}) == 1  # Zen 5 EPYC, 2026-11-26
    assert choose_batch({1: 100.0, 2: 95.0, 4: 60.0}) == 4
    assert choose_batch({1: 100.0, 2: 95.0, 4: 92.0}) == 1  # within 10 %: the smaller batch holds less memory


def test_a_real_measurement_is_cached_per_machine_and_network(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(batching, "_memo", {})
    net = _Counted()
    chosen = windows_per_call(net, CPU, None, (1, 16, 16, 16), sw_batch_size=2)
    cached = json.loads((tmp_path / "window_batch.json").read_text())
    (entry,) = cached.values()
    print("ms per window:", entry["ms_per_window"])
    assert chosen == entry["batch"] == choose_batch({int(b): ms for b, ms in entry["ms_per_window"].items()})
    assert net.windows == 0  # measured on a copy: the caller's network saw no call
    monkeypatch.setattr(batching, "_memo", {})

    def never(*_, **__):
        raise RuntimeError("measured again")

    monkeypatch.setattr(batching, "measure", never)
    assert windows_per_call(net, CPU, None, (1, 16, 16, 16), sw_batch_size=2) == chosen
    assert windows_per_call(net, torch.device("cuda"), None, (1, 16, 16, 16), sw_batch_size=3) == 3
    with pytest.raises(RuntimeError):  # another window shape is another measurement
        windows_per_call(net, CPU, None, (1, 16, 16, 24), sw_batch_size=2)


def test_a_network_fresh_from_a_training_step_is_measured(tmp_path, monkeypatch):
    """Validation between epochs: DynUNet with deep supervision keeps its last training forward's heads (tensors
    with autograd history, which cannot be deep-copied); measuring must neither fail nor change the weights."""
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(batching, "_memo", {})
    torch.manual_seed(0)
    net = DynUNet(3, 1, 3, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2],
                  filters=[8, 16, 32], norm_name="instance", deep_supervision=True, deep_supr_num=1).train()
    net(torch.randn(2, 1, 16, 16, 16)).square().mean().backward()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    assert windows_per_call(net, CPU, None, (1, 16, 16, 16), sw_batch_size=2) in batching.CANDIDATES
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_measuring_runs_in_eval_mode_and_leaves_the_callers_mode(tmp_path, monkeypatch):
    """A network in training mode with batch norm: the measurement runs in eval mode (the running statistics do not
    move) and every layer is back in training mode after it (the timed copy shares the layers)."""
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(batching, "_memo", {})
    torch.manual_seed(0)
    net = DynUNet(3, 1, 3, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2],
                  filters=[8, 16, 32], norm_name="batch").train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert windows_per_call(net, CPU, None, (1, 16, 16, 16), sw_batch_size=2) in batching.CANDIDATES
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # running stats unchanged
    assert all(module.training for module in net.modules())


@pytest.mark.parametrize("best,flips,expected", [(2, 8, (1, 2)), (4, 4, (1, 4)), (4, 2, (1, 2)), (4, 1, (4, 1)),
                                                 (1, 8, (1, 1))])
def test_mirroring_spends_the_batch_on_flips_of_one_window(best, flips, expected, monkeypatch):
    monkeypatch.setattr(sliding, "windows_per_call", lambda *a: best)
    assert call_batches(_net(), CPU, None, (1, 16, 16, 16), 2, flips) == expected


def test_a_fixed_shape_forward_takes_smaller_batches_padded():
    net = _net()
    x = torch.randn(3, 1, 16, 16, 16)

    def exactly_four(batch):
        assert batch.shape[0] == 4
        return net(batch)

    with torch.no_grad():
        expected = net(x)
        for n in (1, 3, 4):
            torch.testing.assert_close(_exact_batch(exactly_four, 4)(torch.cat([x, x[:1]])[:n]),
                                       torch.cat([expected, expected[:1]])[:n], rtol=1e-4, atol=1e-5)


@functools.cache
def _monai_reference(image_bytes: bytes, shape: tuple[int, ...], mirror: bool) -> np.ndarray:
    """MONAI's sliding-window probabilities at one window per call (mirrored: the mean logits of the passes over
    each flip of the image, flips undone)."""
    x = torch.from_numpy(np.frombuffer(image_bytes, np.float32).reshape(shape).copy())[None]
    flips = [[]] + ([[2], [3], [4], [2, 3], [2, 4], [3, 4], [2, 3, 4]] if mirror else [])
    with torch.no_grad():
        logits = [torch.flip(sliding_window_inference(torch.flip(x, d), [16, 16, 16], 1, _net(1), overlap=0.5,
                                                      mode="gaussian"), d) for d in flips]
    return torch.softmax(torch.stack(logits).mean(0), dim=1)[0].numpy()


@pytest.mark.parametrize("batch", [1, 2, 4])
@pytest.mark.parametrize("mirror", [False, True])
def test_batched_windows_and_flips_give_monai_one_window_result(batch, mirror, data_path, monkeypatch):
    """A real hippocampus MR (zero background, so constant windows are reused too) with a DynUNet: every batch
    size gives MONAI's probabilities at one window per call. 16-voxel windows at overlap 0.5 flip onto each
    other's grid when each axis is a whole number of 8-voxel steps, so the image is cropped to one."""
    monkeypatch.setenv("MEDSEG_COMPILE", "0")
    monkeypatch.setattr(sliding, "windows_per_call", lambda *a: batch)
    volume = read_volume(data_path("hippocampus/imagesTr/hippocampus_001.nii.gz"))
    data = np.asarray(volume.array, np.float32)[:24, 8:40, 4:28]
    image = np.ascontiguousarray(((data - data.mean()) / data.std())[None], np.float32)
    got = predict_probabilities(_net(1), image, [16, 16, 16], CPU, None, overlap=0.5, mirror=mirror)
    expected = _monai_reference(image.tobytes(), image.shape, mirror)
    np.testing.assert_allclose(got.astype(np.float32), expected, atol=2e-3)  # float16 storage
