"""Networks by name, built from a plan. Only MONAI networks; no code of our own in the layers."""

from __future__ import annotations

import json

import torch

from medseg.preprocess.plan import Plan


def build_network(plan: Plan, model_config: dict) -> torch.nn.Module:
    """Build the network the plan describes.

    Args:
        plan: From :func:`medseg.preprocess.plan.make_plan` (channels, labels, strides, kernels, filters).
        model_config: The ``model`` section of the run config (name, deep supervision, norm).
    """
    from monai.networks.nets import DynUNet  # the only network (model.name is checked when the config loads)

    strides = plan.strides
    levels = int(model_config.get("deep_supervision_levels", 2))
    deep = bool(model_config.get("deep_supervision", True)) and len(strides) > 2
    return DynUNet(
        spatial_dims=3,
        in_channels=plan.in_channels,
        out_channels=len(plan.labels),
        kernel_size=plan.kernel_sizes,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=plan.filters,
        norm_name=_norm(model_config.get("norm", "instance")),
        deep_supervision=deep,
        deep_supr_num=min(levels, len(strides) - 2) if deep else 1,
        res_block=False,
    )


def _norm(name: str) -> str | tuple:
    """MONAI's norm argument for the config's ``model.norm``: ``instance_affine`` is nnU-Net's instance norm
    with a learned scale and shift per channel (MONAI DynUNet's own default); ``instance`` has none, so after
    each norm every channel is zero-mean, unit-variance into the leaky ReLU (models trained before
    ``instance_affine`` existed keep it)."""
    return ("INSTANCE", {"affine": True}) if name == "instance_affine" else name


def network_key(plan: Plan) -> str:
    """Text identifying the network's shape and input patch (for caches of per-network measurements)."""
    keys = ("strides", "kernel_sizes", "filters", "patch_size")
    shape = {k: getattr(plan, k) for k in keys} | {"channels": len(plan.channels), "classes": len(plan.labels)}
    return json.dumps(shape, sort_keys=True)
