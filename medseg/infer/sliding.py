"""Sliding-window prediction of class probabilities with Gaussian blending (MONAI's inferer)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 (AVX512-BF16 or AMX), where bf16 convolutions are faster."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """dtype for autocast (None: fp32). ``auto``: bf16 on bf16 CPUs and bf16-capable GPUs, fp16 on
    older GPUs, fp32 elsewhere."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def predict_probabilities(
    net: torch.nn.Module,
    image: np.ndarray,
    patch_size,
    device: torch.device,
    dtype: torch.dtype | None = None,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    mirror: bool = False,
) -> np.ndarray:
    """Softmax probabilities ``(K, x, y, z)`` float32 for a preprocessed ``(C, x, y, z)`` image.

    Args:
        mirror: Average over the 8 axis flips (test-time augmentation; 8x slower).
    """
    from monai.inferers import sliding_window_inference

    net.eval()
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
    flips = [()] + ([(2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)] if mirror else [])
    total = None
    for axes in flips:
        inp = torch.flip(x, axes) if axes else x
        with autocast(device, dtype):
            logits = sliding_window_inference(inp, list(patch_size), sw_batch_size, net, overlap=overlap,
                                              mode="gaussian")
        probs = torch.softmax(logits.float(), dim=1)
        probs = torch.flip(probs, axes) if axes else probs
        total = probs if total is None else total + probs
    return (total / len(flips))[0].cpu().numpy()
