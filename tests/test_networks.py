"""The network the config asks for: ``model.norm`` against MONAI's own DynUNet."""

import pytest
import torch
from monai.networks.nets import DynUNet

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
    ours = build_network(Plan(**PLAN), {"norm": norm, "deep_supervision_levels": 1})
    theirs = _monai(reference)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(ours.state_dict())
    ours.eval(), theirs.eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x))
    affine = [m.affine for m in ours.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
    assert affine and all(affine) == (norm == "instance_affine")
