"""``precision: auto`` decides by measurement: unit tests of the decision with injected timings, and one
real measurement of a small DynUNet on this CPU (its figures printed, its outcome consistent with them)."""

import json
import logging
import time

import pytest
import torch

from medseg.config import RunConfig, load_config
from medseg.errors import MedsegError
from medseg.model.device import (
    GIVE_UP_FACTOR,
    MIN_SPEEDUP,
    check_choice,
    choose_precision,
    decide,
    measure,
    precision_for,
)
from medseg.preprocess.plan import Plan


def test_faster_trusted_bf16_is_chosen():
    choice = decide({"fp32": 1.0, "bf16": 0.3}, {"bf16": 0.01})
    assert choice.precision == "bf16" and "3.33x faster" in choice.reason


def test_bf16_slower_than_fp32_keeps_fp32():
    # The 2-core Xeon with AVX512-BF16 but no AMX: 1.09 s bf16 vs 0.95 s fp32 per step.
    choice = decide({"fp32": 0.95, "bf16": 1.09}, {"bf16": 0.01})
    assert choice.precision == "fp32" and "bf16 only 0.87x" in choice.reason


def test_marginal_gain_or_large_error_keeps_fp32():
    assert decide({"fp32": 1.0, "bf16": 1.0 / (MIN_SPEEDUP - 0.05)}, {"bf16": 0.01}).precision == "fp32"
    choice = decide({"fp32": 1.0, "bf16": 0.2}, {"bf16": 0.3})
    assert choice.precision == "fp32" and "deviate" in choice.reason


def test_a_candidate_far_slower_than_fp32_is_given_up_after_one_step(monkeypatch):
    """A real network whose bf16 steps are made far slower than fp32's (3 s of sleep in the forward): bf16 gets its
    untimed first step only, no logit comparison, and fp32 is kept, naming the measured ratio."""
    net = _small_net()
    slow = {"bf16": 0}

    def forward_hook(module, args, output):
        if torch.is_autocast_enabled("cpu"):
            slow["bf16"] += 1
            time.sleep(3.0)
        return output

    net.register_forward_hook(forward_hook)
    choice = measure(torch.device("cpu"), lambda: net, (1, 1, 32, 32, 32), budget_s=0.2)
    assert slow["bf16"] == 1 and "bf16" not in choice.errors
    assert choice.precision == "fp32" and "bf16 only" in choice.reason
    assert choice.seconds["bf16"] > GIVE_UP_FACTOR * choice.seconds["fp32"]


def test_cuda_picks_the_fastest_trusted_of_bf16_and_fp16():
    choice = decide({"fp32": 1.0, "bf16": 0.4, "fp16": 0.35}, {"bf16": 0.01, "fp16": 0.2})
    assert choice.precision == "bf16"
    assert decide({"fp32": 1.0, "bf16": 0.4, "fp16": 0.35}, {"bf16": 0.01, "fp16": 0.001}).precision == "fp16"


def test_choices_are_checked_with_the_allowed_values():
    with pytest.raises(MedsegError, match=r"allowed: auto, fp32, bf16, fp16"):
        check_choice("half", ("auto", "fp32", "bf16", "fp16"), "precision")


def _small_net():
    from monai.networks.nets import DynUNet

    return DynUNet(3, 1, 3, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2],
                   filters=[8, 16, 32], norm_name="instance")


def test_real_measurement_is_consistent_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))
    device = torch.device("cpu")
    measured = measure(device, _small_net, (1, 1, 32, 32, 32), budget_s=0.2)
    print("measured:", measured)
    assert set(measured.seconds) == {"fp32", "bf16"}
    if "bf16" in measured.errors:  # timed in full: its logits were compared
        assert measured.errors["bf16"] < 0.05
    else:  # given up after its first step (a CPU without native bf16)
        assert measured.seconds["bf16"] > GIVE_UP_FACTOR * measured.seconds["fp32"]
    assert measured.precision == decide(measured.seconds, measured.errors).precision
    first = choose_precision("auto", device, _small_net, (1, 1, 32, 32, 32), key="small", budget_s=0.2)
    cache = json.loads((tmp_path / "precision.json").read_text())
    assert len(cache) == 1 and next(iter(cache.values()))["precision"] == first.precision

    def never(*_):
        raise AssertionError("a cached decision must not be measured again")

    monkeypatch.setattr("medseg.model.device.measure", never)
    assert choose_precision("auto", device, _small_net, (1, 1, 32, 32, 32), key="small") == first
    assert choose_precision("fp32", device, _small_net, (1, 1, 32, 32, 32)).precision == "fp32"


def test_one_decision_per_model_at_its_training_batch_logged_as_info(tmp_path, monkeypatch, caplog):
    """Training, budget planning, tune-postprocess and inference all call precision_for: one timing at the plan's
    training batch, cached; the decision is news, not a warning. Another norm is another network."""
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))
    plan = Plan(target_spacing=[1.0] * 3, labels={0: "background", 1: "a"}, normalization=[{"scheme": "ct"}],
                channels={0: "CT"}, patch_size=[32, 32, 32], batch_size=3, strides=[[1, 1, 1], [2, 2, 2]],
                kernel_sizes=[[3, 3, 3]] * 2, filters=[8, 16])
    shapes = []

    def fake_measure(device, make_net, shape, budget_s):
        shapes.append(shape)
        return decide({"fp32": 1.0, "bf16": 0.5}, {"bf16": 0.01})

    monkeypatch.setattr("medseg.model.device.measure", fake_measure)
    cpu = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="medseg"):
        first = precision_for(plan, RunConfig(), cpu)
    assert first.precision == "bf16" and shapes == [(3, 1, 32, 32, 32)]
    decided = [r for r in caplog.records if "precision auto -> bf16" in r.getMessage()]
    assert decided and all(r.levelno == logging.INFO for r in decided)
    assert precision_for(plan, RunConfig(), cpu) == first and len(shapes) == 1
    assert precision_for(plan, RunConfig(), cpu, "fp32").precision == "fp32"
    assert precision_for(plan, load_config(None, ["train.precision=fp32"]), cpu).precision == "fp32"
    precision_for(plan, load_config(None, ["model.norm=instance_affine"]), cpu)
    assert len(shapes) == 2
