"""Sliding-window prediction: the rolling pass over large volumes equals one whole-volume pass (bounded memory,
each window once), MONAI's window count, and the compiled network (same answer, cached, eager fallback)."""

import json
import shutil

import numpy as np
import pytest
import torch

from medseg.model.sliding import call_batches, predict_probabilities, window_count


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


class _Counting(torch.nn.Module):
    """A 3-class network that counts the windows it sees."""

    def __init__(self):
        super().__init__()
        self.conv, self.windows = torch.nn.Conv3d(1, 3, 3, padding=1), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        return self.conv(x)


@pytest.mark.parametrize("shape", [(30, 40, 90), (10, 12, 90)])
def test_rolling_pass_predicts_each_window_once(shape):
    """Over the slab limit every window is predicted once (no recomputation across slab bounds), also when the
    other axes are smaller than the patch (padded as MONAI pads), and the result equals one MONAI pass."""
    torch.manual_seed(0)
    net = _Counting()
    image = np.random.default_rng(1).normal(size=(1, *shape)).astype(np.float32)
    whole = predict_probabilities(net, image, [16, 16, 16], torch.device("cpu"), overlap=0.25)
    net.windows = 0
    rolling = predict_probabilities(net, image, [16, 16, 16], torch.device("cpu"), overlap=0.25,
                                    max_slab_voxels=shape[0] * shape[1] * 20)
    assert net.windows == window_count(shape, [16, 16, 16], 0.25)
    assert rolling.shape == (3, *shape)
    assert np.abs(whole.astype(np.float32) - rolling.astype(np.float32)).max() <= 1e-3


def _tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 1))


@pytest.mark.parametrize("shape", [(30, 40, 90), (16, 10, 33), (17, 16, 16)])
@pytest.mark.parametrize("overlap", [0.5, 0.25, 0.0])
def test_window_count_is_monais(shape, overlap):
    from monai.inferers.utils import _get_scan_interval, dense_patch_slices

    patch = (16, 16, 16)
    padded = tuple(max(n, p) for n, p in zip(shape, patch, strict=True))
    interval = _get_scan_interval(padded, patch, 3, (overlap,) * 3)
    assert window_count(shape, patch, overlap) == len(dense_patch_slices(padded, patch, interval))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None, reason="AOTInductor needs a C++ compiler")
def test_compiled_network_matches_eager_and_is_cached(tmp_path, monkeypatch):
    """A compiled package gives the eager probabilities, is kept on disk and loaded (not recompiled) later; for a
    batch of several windows, the package for it and the one for a single window are both compiled and timed
    against the eager network, and the fastest is cached and used."""
    from medseg.model import compiled

    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiled, "_loaded", {})  # nothing loaded by another test
    monkeypatch.setattr(compiled, "_chosen", {})
    image = np.random.default_rng(0).normal(size=(1, 24, 20, 40)).astype(np.float32)
    cpu = torch.device("cpu")
    monkeypatch.setenv("MEDSEG_COMPILE", "0")
    eager = predict_probabilities(_tiny_net(), image, [16, 16, 16], cpu)
    monkeypatch.setenv("MEDSEG_COMPILE", "1")
    monkeypatch.setattr(compiled, "MIN_COMPILE_WINDOWS", 0)
    first = predict_probabilities(_tiny_net(), image, [16, 16, 16], cpu)
    batch = call_batches(_tiny_net(), cpu, None, (1, 16, 16, 16), 2)[0]
    assert len(list((tmp_path / "compiled").glob("*.pt2"))) == (1 if batch == 1 else 2)
    if batch > 1:
        (choice,) = json.loads((tmp_path / "compiled_batch.json").read_text()).values()
        fastest = min(choice["ms_per_window"], key=choice["ms_per_window"].get)
        assert set(choice["ms_per_window"]) == {"eager", "1", str(batch)}
        assert choice["batch"] == (None if fastest == "eager" else int(fastest))
    assert np.abs(first.astype(np.float32) - eager.astype(np.float32)).max() <= 2e-3
    compiled._loaded.clear()
    monkeypatch.setattr(compiled, "_run_compiler", lambda *a: pytest.fail("recompiled a cached network"))
    again = predict_probabilities(_tiny_net(), image, [16, 16, 16], cpu, mirror=True)
    mirrored = predict_probabilities(_tiny_net(), image, [16, 16, 16], cpu, mirror=True,
                                     max_slab_voxels=24 * 20 * 20)
    assert np.abs(again.astype(np.float32) - mirrored.astype(np.float32)).max() <= 1e-3


def test_failed_compilation_predicts_eagerly_and_is_not_retried(tmp_path, monkeypatch):
    from medseg.model import compiled

    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiled, "_loaded", {})
    monkeypatch.setattr(compiled, "_chosen", {})
    monkeypatch.setattr(compiled, "MIN_COMPILE_WINDOWS", 0)
    calls = []
    monkeypatch.setattr(compiled, "_run_compiler", lambda *a: calls.append(a) or "compilation took over 1 s")
    image = np.random.default_rng(0).normal(size=(1, 24, 20, 40)).astype(np.float32)
    cpu = torch.device("cpu")
    tried = predict_probabilities(_tiny_net(), image, [16, 16, 16], cpu)
    again = predict_probabilities(_tiny_net(), image, [16, 16, 16], cpu)
    monkeypatch.setenv("MEDSEG_COMPILE", "0")
    eager = predict_probabilities(_tiny_net(), image, [16, 16, 16], cpu)
    assert len(calls) == 1 and list((tmp_path / "compiled").glob("*.failed"))
    assert np.array_equal(tried, eager) and np.array_equal(again, eager)


@pytest.mark.parametrize("mirror", [False, True])
def test_constant_windows_reuse_logits_exactly(mirror):
    """Windows of one value per channel (an MR's zero background, CT air at the clip floor) go through the
    network once per value; the probabilities are the plain pass's, bit for bit."""
    torch.manual_seed(0)
    net = _Counting()
    image = np.full((1, 64, 48, 40), -1.25, dtype=np.float32)  # one value outside the body...
    image[0, 20:40, 10:30, 8:30] = np.random.default_rng(2).normal(size=(20, 20, 22))
    image[0, 56:, :, :] = 3.0  # ...and a second value (a couch, a bright band)
    plain = predict_probabilities(net, image, [16, 16, 16], torch.device("cpu"), mirror=mirror,
                                  reuse_constant=False)
    every = net.windows
    net.windows = 0
    reused = predict_probabilities(net, image, [16, 16, 16], torch.device("cpu"), mirror=mirror)
    assert np.array_equal(plain, reused)
    flips = 8 if mirror else 1
    assert every == window_count(image.shape[1:], [16, 16, 16], 0.5) * flips
    constant = every // flips - (net.windows // flips - 2)  # windows answered from the two cached values
    assert net.windows < every and constant > 2


def test_constant_windows_in_a_batch():
    """A batch that is all constant windows: each new value computed once, alone; a batch with any varied window
    goes through whole."""
    from medseg.model.sliding import _ConstantWindows

    net = _Counting()
    wrapped = _ConstantWindows(net)
    batch = torch.stack([torch.full((1, 8, 8, 8), v) for v in (0.0, 2.0, 0.0)])
    with torch.no_grad():
        out = wrapped(batch)
        assert net.windows == 2 and (wrapped.computed, wrapped.reused) == (2, 1)
        assert torch.allclose(out, net(batch), atol=1e-6)  # one window at a time vs a batch: rounding only
        net.windows = 0
        mixed = batch.clone()
        mixed[1, 0, 0, 0, 0] = 1.0
        assert torch.equal(wrapped(mixed), net(mixed)) and net.windows == 6
