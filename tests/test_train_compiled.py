"""The training network under torch.compile: the eager network's outputs and gradients, or the eager network."""

import torch

from medseg.config import ModelConfig
from medseg.model import build_network
from medseg.preprocess.plan import Plan
from medseg.train import compiled
from medseg.train.losses import COMPILE_MIN_STEPS

PLAN = Plan(target_spacing=[1.0, 1.0, 1.0], labels={0: "background", 1: "a", 2: "b"},
            normalization=[{"scheme": "zscore"}], channels={0: "MR"}, patch_size=[16, 24, 16], batch_size=2,
            strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], kernel_sizes=[[3, 3, 3]] * 3, filters=[8, 16, 32])


def _step(model, x):
    """Deep-supervision outputs of one training forward and the gradients of their sum of squares."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def test_compiled_network_trains_as_the_eager_one(monkeypatch):
    """A long CPU run's steps call the DynUNet under torch.compile: the same deep-supervision outputs and
    gradients as eagerly (train mode, fp32), the same parameters (one set, the network's own), and train/eval
    reach the network; a short run, MEDSEG_COMPILE=0 or CUDA keep the network itself; a compiler that fails
    leaves the eager network in charge, with a warning."""
    torch.manual_seed(0)
    net = build_network(PLAN, ModelConfig(deep_supervision_levels=1))
    model = compiled.training_network(net, torch.device("cpu"), COMPILE_MIN_STEPS)
    assert isinstance(model, compiled.CompiledNetwork)
    assert [id(p) for p in model.parameters()] == [id(p) for p in net.parameters()]
    model.train()
    assert net.training
    x = torch.randn(2, 1, 16, 24, 16, generator=torch.Generator().manual_seed(1))
    eager_out, eager_grads = _step(net, x)
    out, grads = _step(model, x)
    assert not model.failed and out.shape == (2, 2, 3, 16, 24, 16)
    assert torch.allclose(out, eager_out, atol=1e-4)
    assert all((g - e).abs().max() <= 1e-5 * e.abs().max() for g, e in zip(grads, eager_grads, strict=True))
    model.eval()
    assert not net.training

    assert compiled.training_network(net, torch.device("cpu"), COMPILE_MIN_STEPS - 1) is net
    assert compiled.training_network(net, torch.device("cuda"), 10**6) is net
    monkeypatch.setenv("MEDSEG_COMPILE", "0")
    assert compiled.training_network(net, torch.device("cpu"), 10**6) is net

    def broken(x):
        raise RuntimeError("no C++ compiler")

    fallback = compiled.CompiledNetwork(net)
    fallback._compiled = (broken,)
    fallback.train()
    out, grads = _step(fallback, x)
    assert fallback.failed and torch.equal(out, eager_out)
