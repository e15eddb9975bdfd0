"""float16 probability maps, cast and scanned by torch rather than numpy.

numpy casts float32 to float16 by a slow path for values below float16's normal range, and softmax probabilities
are full of them: 8x153x153x154 probabilities (10^-9 to 1) took numpy 1.15 s and torch 0.025 s to cast, the same
bits (AMD EPYC Zen 4, 2 threads, 2026-12-08); float16 -> float32 0.22 s against 0.035 s. On a 512x512x307 CT these
casts were 3.4 s of `medseg infer`'s 17 s.
"""

from __future__ import annotations

import numpy as np
import torch


def to_float16(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """``values`` as a float16 numpy array (a copy), cast by torch."""
    tensor = values if isinstance(values, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(values))
    return tensor.detach().to("cpu", torch.float16).numpy()


def as_float32(values: np.ndarray) -> torch.Tensor:
    """``values`` as a float32 CPU tensor, cast by torch (no copy when they are float32 and contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(values)).float()


def not_background(scores: np.ndarray) -> np.ndarray:
    """Where ``argmax(scores, axis=0) != 0`` for class scores ``(K, ...)``: some class beats class 0 strictly (ties
    go to class 0, as argmax gives them). 0.007 s against numpy's float16 argmax 0.14 s on the maps above."""
    tensor = torch.from_numpy(np.ascontiguousarray(scores))
    if tensor.shape[0] < 2:
        return np.zeros(tensor.shape[1:], dtype=bool)
    return (tensor[1:].amax(dim=0) > tensor[0]).numpy()
