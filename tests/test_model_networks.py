"""The network the config asks for: ``model.norm`` against MONAI's own DynUNet."""

import pytest
import torch
from monai.networks.nets import DynUNet

from medseg.config import ModelConfig
from medseg.errors import MedsegError
from medseg.model import build_network
from medseg.preprocess.plan import Plan

PLAN = dict(target_spacing=[1.0, 1.0, 1.0], labels={0: "background", 1: "a", 2: "b"}, normalization=[{"scheme": "ct"}],
            channels={0: "CT"}, patch_size=[32, 32, 32], batch_size=2, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
            kernel_sizes=[[3, 3, 3]] * 3, filters=[8, 16, 32])


def _monai(norm_name):
    return DynUNet(3, 1, 3, PLAN["kernel_sizes"], PLAN["strides"], PLAN["strides"][1:], filters=PLAN["filters"],
                   norm_name=norm_name, deep_supervision=True, deep_supr_num=1)


@pytest.mark.parametrize("norm, reference", [
    ("instance_affine", ("INSTANCE", {"affine": True})),  # MONAI's default for DynUNet, nnU-Net's norm
    ("instance", "instance"),  # no learned scale/shift: models trained before instance_affine keep loading
])
def test_norm_choice_builds_monais_network(norm, reference):
    ours = build_network(Plan(**PLAN), ModelConfig(norm=norm, deep_supervision_levels=1))
    theirs = _monai(reference)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(ours.state_dict())
    ours.eval(), theirs.eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x))
    affine = [m.affine for m in ours.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
    assert affine and all(affine) == (norm == "instance_affine")


def test_registry_names_the_networks_and_refuses_others():
    from medseg.model.networks import NETWORKS, network_entry

    assert "dynunet" in NETWORKS
    for entry in NETWORKS.values():
        assert set(entry.plan_fields) <= set(Plan.__dataclass_fields__) and entry.memory > 0 and entry.compute > 0
    with pytest.raises(MedsegError, match=r"'model.name' is 'unet' \(allowed: dynunet"):
        network_entry("unet")
    with pytest.raises(MedsegError, match=r"'model.name' is 'unet'"):
        build_network(Plan(**PLAN), ModelConfig(name="unet"))


def test_network_key_tells_norms_and_networks_apart():
    from medseg.model import network_key

    plan = Plan(**PLAN)
    keys = {network_key(plan, ModelConfig(norm=norm)) for norm in ("instance", "instance_affine")}
    assert len(keys) == 2 and network_key(plan, ModelConfig()) == network_key(plan, ModelConfig())


def test_residual_dynunet_is_monais_with_res_blocks():
    ours = build_network(Plan(**PLAN), ModelConfig(name="dynunet_res", norm="instance_affine",
                                                   deep_supervision_levels=1))
    theirs = DynUNet(3, 1, 3, PLAN["kernel_sizes"], PLAN["strides"], PLAN["strides"][1:], filters=PLAN["filters"],
                     norm_name=("INSTANCE", {"affine": True}), deep_supervision=True, deep_supr_num=1, res_block=True)
    count = [sum(p.numel() for p in net.parameters()) for net in (ours, theirs)]
    plain = sum(p.numel() for p in build_network(Plan(**PLAN), ModelConfig(norm="instance_affine")).parameters())
    assert count[0] == count[1] > plain
    theirs.load_state_dict(ours.state_dict())
    ours.eval(), theirs.eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
