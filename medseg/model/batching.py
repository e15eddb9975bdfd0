"""How many windows go through the network per call on a CPU: measured on this machine, not assumed.

The best batch differs by CPU by a factor of five. Eval-mode DynUNet 16-128 on 32x32x40 windows, fp32, torch
2.13, 2 cores, ms per window with 1 / 2 / 4 / 8 windows per call: AMD EPYC Zen 3 (AVX2, no AVX-512, idle,
2026-12-07) 201 / 40 / 41 / 49; on a Zen 5 EPYC (AVX512-BF16) one window per call was the faster (DynUNet
32-256, 40x56x40, fp32 122 vs 130 ms, 2026-11-26). So :func:`windows_per_call` times the network at 1, 2 and 4
windows on the first prediction, keeps the fastest per window (a larger batch only when at least
:data:`MIN_GAIN` faster: it holds more memory) and caches it per CPU, torch version, precision, architecture
and window shape. On CUDA the config's ``sw_batch_size`` applies.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable

import torch

from medseg.errors import MedsegError
from medseg.io.atomic import write_text_atomic
from medseg.model.device import _cache_path, _read_cache, autocast, cpu_model

log = logging.getLogger(__name__)

CANDIDATES = (1, 2, 4)
# A larger batch is kept only when it is at least this much faster per window.
MIN_GAIN = 1.1
_CACHE_NAME = "window_batch.json"
_memo: dict[str, dict] = {}


def choose_batch(ms_per_window: dict[int, float]) -> int:
    """The batch to use from measured ms per window: the smallest within :data:`MIN_GAIN` of the fastest."""
    best = min(ms_per_window.values())
    return min(b for b, ms in ms_per_window.items() if ms <= best * MIN_GAIN)


def windows_per_call(net: torch.nn.Module, device: torch.device, dtype: torch.dtype | None,
                     window: tuple[int, ...], sw_batch_size: int) -> int:
    """Windows per network call for ``net`` on ``window`` ``(C, x, y, z)`` voxels: ``sw_batch_size`` on CUDA; on
    CPU the measured best of :data:`CANDIDATES` (timed once, then cached in ``window_batch.json`` beside the
    precision cache)."""
    if device.type != "cpu":
        return sw_batch_size

    def measure_batch() -> dict:
        timed = _measure_in_eval(net, device, dtype, window)
        log.info("windows per network call on %s: %d (ms per window %s); cached in %s", cpu_model(),
                 choose_batch(timed), ", ".join(f"{b}: {ms:.0f}" for b, ms in timed.items()), _CACHE_NAME)
        return {"batch": choose_batch(timed), "ms_per_window": timed}

    return int(cached_record(_CACHE_NAME, speed_key(net, dtype, window), _memo, measure_batch)["batch"])


def cached_record(name: str, key: str, memo: dict[str, dict], measure: Callable[[], dict | None]) -> dict | None:
    """Record ``key`` of the JSON cache ``name`` beside the precision cache, remembered in ``memo`` for the process;
    ``measure()`` makes it and it is stored when absent (None: nothing stored, None returned). A read-only cache
    directory only costs a measurement next time."""
    if key in memo:
        return memo[key]
    path = _cache_path().with_name(name)
    cache = _read_cache(path)
    if key not in cache:
        record = measure()
        if record is None:
            return None
        cache[key] = record
        with contextlib.suppress(OSError, MedsegError):
            write_text_atomic(path, json.dumps(cache, indent=1))
    memo[key] = cache[key]
    return memo[key]


def _measure_in_eval(net: torch.nn.Module, device: torch.device, dtype: torch.dtype | None,
                     window: tuple[int, ...]) -> dict[int, float]:
    """:func:`measure` on a shallow copy of ``net`` (the same weights and layers) in eval mode: the caller's module
    object, and anything it counts, sees no call (a deep copy fails on a network that keeps tensors of its last
    training forward: DynUNet's deep-supervision heads), and every layer's train/eval mode is restored after (the
    copy shares them)."""
    modes = [(module, module.training) for module in net.modules()]
    try:
        return measure(copy.copy(net).eval(), device, dtype, window)
    finally:
        for module, training in modes:
            module.training = training


@torch.no_grad()
def measure(forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device, dtype: torch.dtype | None,
            window: tuple[int, ...], repeats: int = 2) -> dict[int, float]:
    """Milliseconds per window of ``forward`` at each of :data:`CANDIDATES` windows per call: one untimed call
    per batch first (kernel choice), then the fastest of ``repeats`` timed calls (others can only slow one)."""
    x = torch.zeros((max(CANDIDATES), *window), device=device)
    timed = {}
    for batch in CANDIDATES:
        with autocast(device, dtype):
            forward(x[:batch])
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                forward(x[:batch])
                times.append(time.perf_counter() - t0)
        timed[batch] = 1000 * min(times) / batch
    return timed


def speed_key(net: torch.nn.Module, dtype: torch.dtype | None, window: tuple[int, ...]) -> str:
    """What a network's speed depends on, for caching a measurement of it: the architecture (class, parameter
    names and shapes: not the weights), precision, window (or batch) shape, and the machine: CPU name and
    instruction set (cloud CPUs of different generations can share a name), threads, torch."""
    shapes = [(name, tuple(p.shape)) for name, p in net.named_parameters()]
    text = json.dumps([type(net).__name__, shapes, str(dtype), list(window), cpu_model(),
                       torch.backends.cpu.get_cpu_capability(), torch.get_num_threads(), torch.__version__])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
