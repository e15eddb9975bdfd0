"""Networks by name: a registry of entries that build a MONAI network from the plan and the ``model`` config.

As in nnU-Net, the config names the network (``model.name``) and the plan gives its arguments. Each
:class:`NetworkEntry` says which plan fields it reads and what it costs relative to plain DynUNet, which
planning (:func:`medseg.preprocess.plan.make_plan`, activation memory) and the time budget
(:mod:`medseg.train.budget`, step overhead) were measured on. Adding a network is one entry in
:data:`NETWORKS` plus its test. Only MONAI networks; no code of our own in the layers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from medseg.config import ModelConfig
from medseg.errors import MedsegError
from medseg.preprocess.plan import Plan

# The plan fields a DynUNet is built from (sizes of ``channels`` and ``labels``, the topology lists).
DYNUNET_FIELDS = ("channels", "labels", "strides", "kernel_sizes", "filters")


@dataclass(frozen=True)
class NetworkEntry:
    """One network of the registry.

    Attributes:
        build: ``build(plan, model_config)`` -> the untrained network; input ``(B, C, X, Y, Z)``, output
            ``(B, K, X, Y, Z)`` logits, or ``(B, 1 + levels, K, X, Y, Z)`` in training mode with deep supervision.
        plan_fields: The :class:`Plan` fields ``build`` reads (they also key cached per-network measurements).
        memory: Training activation memory per voxel relative to plain DynUNet at the same filters.
        compute: Seconds per forward/backward step relative to plain DynUNet on the same plan.
    """

    build: Callable[[Plan, ModelConfig], torch.nn.Module]
    plan_fields: tuple[str, ...]
    memory: float = 1.0
    compute: float = 1.0


def _dynunet(plan: Plan, model: ModelConfig, res_block: bool = False) -> torch.nn.Module:
    """MONAI's DynUNet with the planned topology; deep supervision needs more than two levels."""
    # MONAI is imported when a network is built: medseg.model's package imports this module, and commands such
    # as `medseg export` need no network (MONAI takes seconds to import).
    from monai.networks.nets import DynUNet

    strides = plan.strides
    deep = model.deep_supervision and len(strides) > 2
    return DynUNet(
        spatial_dims=3,
        in_channels=plan.in_channels,
        out_channels=len(plan.labels),
        kernel_size=plan.kernel_sizes,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=plan.filters,
        norm_name=_norm(model.norm),
        deep_supervision=deep,
        deep_supr_num=min(model.deep_supervision_levels, len(strides) - 2) if deep else 1,
        res_block=res_block,
    )


NETWORKS: dict[str, NetworkEntry] = {
    "dynunet": NetworkEntry(_dynunet, DYNUNET_FIELDS),
    # residual blocks (MONAI's UnetResBlock). Hippocampus plan (40x56x40 x4, 16-128, bf16, AMD EPYC 2 cores,
    # 2026-12-03): 238 vs 209 MiB saved for backward, 0.555 vs 0.531 s per training step
    "dynunet_res": NetworkEntry(lambda plan, model: _dynunet(plan, model, res_block=True), DYNUNET_FIELDS,
                                memory=1.14, compute=1.05),
}


def network_entry(name: str, where: str | Path | None = None) -> NetworkEntry:
    """The registry entry for ``model.name`` (checked when a run starts and when a model folder's config is
    read: the config module, an earlier stage, cannot import the registry).

    Raises:
        MedsegError: for a name the registry does not hold, listing those it does (``where``: the config file).
    """
    if name not in NETWORKS:
        raise MedsegError(f"'model.name' is '{name}' (allowed: {', '.join(NETWORKS)})", where)
    return NETWORKS[name]


def build_network(plan: Plan, model: ModelConfig) -> torch.nn.Module:
    """Build the network ``model.name`` names, as the plan describes it.

    Args:
        plan: From :func:`medseg.preprocess.plan.make_plan` (channels, labels, strides, kernels, filters).
        model: The ``model`` section of the run config (name, deep supervision, norm).
    """
    return network_entry(model.name).build(plan, model)


def _norm(name: str) -> str | tuple:
    """MONAI's norm argument for the config's ``model.norm``: ``instance_affine`` is nnU-Net's instance norm
    with a learned scale and shift per channel (MONAI DynUNet's own default); ``instance`` has none, so after
    each norm every channel is zero-mean, unit-variance into the leaky ReLU (models trained before
    ``instance_affine`` existed keep it)."""
    return ("INSTANCE", {"affine": True}) if name == "instance_affine" else name


def network_key(plan: Plan, model: ModelConfig) -> str:
    """Text identifying the network and its input patch (for caches of per-network measurements): the
    ``model`` section, the plan fields the network is built from (mappings by their size) and the patch."""
    fields = (*network_entry(model.name).plan_fields, "patch_size")
    values = {k: getattr(plan, k) for k in fields}
    shape = {k: len(v) if isinstance(v, dict) else v for k, v in values.items()}
    return json.dumps({"model": vars(model), **shape}, sort_keys=True)


__all__ = ["NETWORKS", "NetworkEntry", "build_network", "network_entry", "network_key"]
