"""The network under ``torch.compile`` for the training steps, with the eager network as the fallback.

Inductor fuses the instance norms, activations and bf16 casts around DynUNet's convolutions. Measured with
``benchmarks/train_speed.py`` (hippocampus, 40x56x40 x4, DynUNet 16-128 with deep supervision, bf16, 2 cores):
on an Intel Xeon with AMX (2026-12-07, medians of 10 alternating rounds) medseg's step took 0.351 s eagerly and
0.329 s with the network compiled (MONAI's loop 0.348 and 0.315 s); on an AMD EPYC Zen 5 without AMX (2026-12-03)
compiling gave 4-6 % on this plan and ~10 % on OpenKBP's. Compiling costs ~20-45 s at the start of a run (less
from inductor's on-disk cache), so only runs of :data:`~medseg.train.losses.COMPILE_MIN_STEPS` steps or more compile,
and only on CPU, where it was measured, in one process (not under torchrun's DistributedDataParallel).
Validation, checkpoints and ``weights.pt`` use the plain network: the compiled one shares its parameters.
"""

from __future__ import annotations

import logging

import torch

from medseg.model.device import compile_allowed
from medseg.train.losses import COMPILE_MIN_STEPS

log = logging.getLogger(__name__)


class CompiledNetwork(torch.nn.Module):
    """``net``'s forward under ``torch.compile``; on the first failure to compile (no C++ compiler, a backend
    error) the eager ``net`` from then on, with a warning. ``train()``/``eval()`` and the parameters are
    ``net``'s own (it is the one registered submodule)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self._compiled = (torch.compile(net),)  # a tuple: not registered, so its parameters are not listed twice
        self.failed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.failed:
            try:
                return self._compiled[0](x)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: the same network, eagerly
                log.warning("compiled network unavailable, training eagerly (%s)", str(exc).splitlines()[0][:200])
                self.failed = True
        return self.net(x)


def training_network(net: torch.nn.Module, device: torch.device, steps: int) -> torch.nn.Module:
    """What a single process's training steps call: :class:`CompiledNetwork` for a CPU run expected to take
    ``steps`` >= :data:`~medseg.train.losses.COMPILE_MIN_STEPS` while ``MEDSEG_COMPILE`` is not ``0``; ``net``
    itself otherwise."""
    if device.type != "cpu" or steps < COMPILE_MIN_STEPS or not compile_allowed():
        return net
    return CompiledNetwork(net)
