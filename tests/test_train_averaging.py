"""Weight averaging (``train.ema``): the average follows the EMA formula step by step (checked against a plain
NumPy recurrence on a real DynUNet), and a training run validates, keeps and checkpoints the average."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny
from monai.networks.nets import DynUNet

from medseg.config import load_config
from medseg.data.phantom import write_phantom_dataset
from medseg.errors import MedsegError
from medseg.train import train
from medseg.train.averaging import WeightAverage
from medseg.train.checkpoint import load_checkpoint


def _net():
    torch.manual_seed(0)
    return DynUNet(3, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2],
                   filters=[4, 8, 16], norm_name=("instance", {"affine": True}))


def test_average_follows_the_ema_recurrence_over_real_optimiser_steps():
    net, decay = _net(), 0.9
    average = WeightAverage(net, decay)
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.05)
    expected = None
    for step in range(4):
        x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        net(x).square().mean().backward()
        optimizer.step()
        average.update(net)
        weights = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
        expected = weights if expected is None else {k: decay * expected[k] + (1 - decay) * weights[k]
                                                     for k in weights}
    got = average.net.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key].numpy(), value, rtol=1e-5, atol=1e-6, err_msg=key)
    assert not torch.equal(got["output_block.conv.conv.weight"], net.state_dict()["output_block.conv.conv.weight"])
    restored = WeightAverage(_net(), decay)
    restored.load_state_dict(average.state_dict())
    assert all(torch.equal(restored.net.state_dict()[k], v) for k, v in got.items())


def test_decay_outside_zero_one_is_refused_when_the_config_loads():
    with pytest.raises(MedsegError, match="train.ema"):
        load_config(None, ["train.ema=1.0"])


def test_training_validates_keeps_and_checkpoints_the_average(tmp_path):
    data = write_phantom_dataset(tmp_path / "ph", cases=5, shape=(40, 40, 14), spacing=(1.5, 1.5, 4.0))
    config = load_config(None, tiny("train.precision=fp32", "train.iterations_per_epoch=10", "train.epochs=3",
                                    "train.ema=0.9"))
    train(data, tmp_path / "run", config, fold=0)
    run = tmp_path / "run"
    ckpt = load_checkpoint(run / "checkpoint_last.pt")
    kept = torch.load(run / "weights.pt", weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in ckpt["average"].items() if k.startswith("module.")}
    assert set(kept) == set(ckpt["model"]) == set(averaged)
    assert int(ckpt["average"]["n_averaged"]) == ckpt["state"]["step"] == 30
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    if ckpt["state"]["best_epoch"] == log[-1]["epoch"]:  # the last epoch scored best: its average is kept
        assert all(torch.equal(kept[k], averaged[k]) for k in kept)
    key = next(k for k in kept if k.endswith("conv.weight"))
    assert not torch.equal(averaged[key], ckpt["model"][key])  # the average is not the last step's weights
