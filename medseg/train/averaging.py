"""Weight averaging: an exponential moving average (EMA) of the network's weights over the training steps.

With ``train.ema`` = ``d`` (0 < d < 1) every optimisation step updates ``avg = d * avg + (1 - d) * weights``
(PyTorch's :class:`torch.optim.swa_utils.AveragedModel` with its EMA function); the average is what validation
scores, ``weights.pt`` keeps and inference uses, so the last steps' noise is smoothed out for free (a copy of the
weights and one fused update per step). ``d`` = 0.99 averages over about the last 100 steps.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """The running average of ``net``'s weights (buffers too: instance norm keeps none, batch norm would).

    Attributes:
        model: The averaged copy of the network (``AveragedModel``; ``model.module`` is a plain network).
    """

    def __init__(self, net: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.model = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @property
    def net(self) -> torch.nn.Module:
        """The averaged network, a module of the same class and state-dict keys as the trained one."""
        return self.model.module

    def update(self, net: torch.nn.Module) -> None:
        """Fold ``net``'s current weights into the average (the first call copies them)."""
        self.model.update_parameters(net)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
