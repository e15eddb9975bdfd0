"""Device and precision in one place: which device, which autocast dtype, and ``auto`` precision by measurement.

``precision: auto`` does not guess from CPU flags (AVX512-BF16 without AMX runs bf16 convolutions slower
than fp32 on some Xeons, 3-5x faster on AMX or Zen 4): it times a few forward/backward steps of the
planned network in each candidate precision, keeps a candidate only when its logits stay within
:data:`MAX_RELATIVE_ERROR` of fp32's, picks the fastest (fp32 unless a candidate is at least
:data:`MIN_SPEEDUP` faster) and caches the decision per machine, torch version and network shape.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from medseg.config import CHOICES, RunConfig
from medseg.errors import MedsegError
from medseg.io.atomic import write_text_atomic
from medseg.model.networks import build_network, network_key
from medseg.preprocess.plan import Plan

log = logging.getLogger(__name__)

PRECISIONS = CHOICES[("train", "precision")]
DEVICES = ("auto", "cpu", "cuda")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# A candidate must beat fp32 by this factor, so timing noise never flips the choice.
MIN_SPEEDUP = 1.1
# Relative L2 error of the logits against fp32 above which a precision is not trusted. bf16 autocast on
# DynUNet stays near 1e-2; at that level validation Dice moved by <= 0.0001 (hippocampus, fold 0).
MAX_RELATIVE_ERROR = 0.05
# A candidate whose untimed first step takes over this many fp32 steps is not timed further (nor its logits
# compared): bf16 on a 2-core AMD EPYC without AVX-512 (Zen 3) took 36 s per hippocampus step against fp32's
# 0.56 s, and timing it in full cost about two minutes of a 30-minute budget (2026-12-07).
GIVE_UP_FACTOR = 4.0


def check_choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    """``value`` lower-cased when it is one of ``allowed``, else a one-line error listing them."""
    text = str(value).strip().lower()
    if text not in allowed:
        raise MedsegError(f"unknown {what} '{value}' (allowed: {', '.join(allowed)})")
    return text


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU. ``cuda:1`` style indices are accepted."""
    name = str(device).strip().lower()
    check_choice(name.split(":")[0], DEVICES, "device")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MedsegError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """dtype for autocast of a resolved precision (``fp32`` -> None)."""
    return _DTYPES[check_choice(precision, tuple(_DTYPES), "precision")]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast context for ``dtype`` on ``device`` (a no-op for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def compile_allowed() -> bool:
    """False when ``MEDSEG_COMPILE`` is ``0``, ``off`` or ``false``: every compilation (training network and
    loss, inference packages) is then left out."""
    return os.environ.get("MEDSEG_COMPILE", "1").strip().lower() not in ("0", "off", "false")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for figures and cache keys."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def candidates(device: torch.device) -> list[str]:
    """Precisions worth timing against fp32 on ``device``."""
    if device.type == "cuda":
        return ["bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp16"]
    return ["bf16"]


@dataclass(frozen=True)
class PrecisionChoice:
    """Outcome of :func:`choose_precision`.

    Attributes:
        precision: ``fp32``, ``bf16`` or ``fp16``.
        seconds: Measured seconds per forward/backward step for each precision tried.
        errors: Relative L2 error of each precision's logits against fp32.
        reason: One line saying why.
    """

    precision: str
    seconds: dict[str, float]
    errors: dict[str, float]
    reason: str


def decide(seconds: dict[str, float], errors: dict[str, float]) -> PrecisionChoice:
    """Pick a precision from measured step times and logit errors (fp32 must be among ``seconds``; a candidate
    without an error was too slow to compare)."""
    base = seconds["fp32"]
    fast = {p: s for p, s in seconds.items() if p != "fp32" and base / s >= MIN_SPEEDUP}
    trusted = {p: s for p, s in fast.items() if errors.get(p, 1.0) <= MAX_RELATIVE_ERROR}
    if trusted:
        best = min(trusted, key=trusted.get)  # type: ignore[arg-type]
        reason = f"{best} {base / trusted[best]:.2f}x faster than fp32 (logit error {errors[best]:.3g})"
        return PrecisionChoice(best, seconds, errors, reason)
    others = {p: s for p, s in seconds.items() if p != "fp32"}
    quickest = min(others, key=others.get, default=None)  # type: ignore[arg-type]
    why = (f"{', '.join(fast)} logits deviate over {MAX_RELATIVE_ERROR:g}" if fast
           else "no faster precision" if quickest is None
           else f"{quickest} only {base / others[quickest]:.2f}x the speed of fp32")
    return PrecisionChoice("fp32", seconds, errors, f"fp32 kept: {why}")


def choose_precision(precision: str, device: torch.device, make_net: Callable[[], torch.nn.Module],
                     input_shape: tuple[int, ...], key: str = "", budget_s: float = 1.5) -> PrecisionChoice:
    """Resolve ``precision``; ``auto`` is measured on ``device`` (or read from the cache) and logged once.

    Args:
        make_net: Builds the planned network (fresh weights are fine: only speed and numerics matter).
        input_shape: ``(batch, channels, *patch)`` of one training step.
        key: What identifies the network shape in the cache (e.g. the plan's topology as text).
        budget_s: Seconds of timed steps per precision (at least two steps each).
    """
    precision = check_choice(precision, PRECISIONS, "precision")
    if precision != "auto":
        return PrecisionChoice(precision, {}, {}, "asked for")
    cache_key = hashlib.sha256(json.dumps([device_name(device), torch.__version__, str(input_shape), key])
                               .encode()).hexdigest()[:16]
    cache = _cache_path()
    cached = _read_cache(cache).get(cache_key)
    if cached:
        return PrecisionChoice(**cached)
    choice = measure(device, make_net, input_shape, budget_s)
    _write_cache(cache, cache_key, choice)
    times = ", ".join(f"{p} {s:.3f} s" for p, s in choice.seconds.items())
    log.info("precision auto -> %s on %s (%s per step; %s); cached in %s", choice.precision,
             device_name(device), times, choice.reason, cache)
    return choice


def precision_for(plan: Plan, config: RunConfig, device: torch.device, asked: str = "auto") -> PrecisionChoice:
    """The precision of ``config``'s network on ``plan``: ``asked`` unless it is ``auto``, else
    ``train.precision``; ``auto`` is timed at the plan's training batch ``(batch_size, C, *patch_size)``.

    Training, the budget planner, its final validation, ``tune-postprocess`` and inference all ask here, so one
    model gets one cached decision per machine (timing inference at batch 1 could decide otherwise: batch 1 is
    launch-bound on a GPU).
    """
    wanted = asked if check_choice(asked, PRECISIONS, "precision") != "auto" else config.train.precision
    return choose_precision(wanted, device, lambda: build_network(plan, config.model),
                            (plan.batch_size, plan.in_channels, *plan.patch_size), key=network_key(plan, config.model))


def measure(device: torch.device, make_net: Callable[[], torch.nn.Module], input_shape: tuple[int, ...],
            budget_s: float = 1.5) -> PrecisionChoice:
    """Time forward/backward steps in fp32 and each candidate, and compare each candidate's logits to fp32's
    (a candidate given up as too slow, see :data:`GIVE_UP_FACTOR`, has no logit error)."""
    torch.manual_seed(0)
    net = make_net().to(device)
    x = torch.randn(*input_shape, device=device)
    seconds = {"fp32": time_steps(net, x, device, None, budget_s)}
    reference = _logits(net, x, device, None)
    errors = {}
    for precision in candidates(device):
        dtype = autocast_dtype(precision)
        seconds[precision] = time_steps(net, x, device, dtype, budget_s, give_up_s=GIVE_UP_FACTOR * seconds["fp32"])
        if seconds[precision] <= GIVE_UP_FACTOR * seconds["fp32"]:
            out = _logits(net, x, device, dtype)
            errors[precision] = float(torch.linalg.vector_norm(out - reference) /
                                      torch.linalg.vector_norm(reference).clamp_min(1e-12))
    return decide(seconds, errors)


def _logits(net, x, device, dtype) -> torch.Tensor:
    with torch.no_grad(), autocast(device, dtype):
        net.eval()
        out = _first(net(x)).float()
        net.train()
    return out


def time_steps(net, x, device, dtype, budget_s: float, give_up_s: float | None = None) -> float:
    """Seconds of a forward/backward step of ``net`` on ``x`` (the fastest timed one), after one untimed warm-up step
    (allocations, kernel choice); at least two timed steps, more while ``budget_s`` lasts. When the warm-up
    step alone takes over ``give_up_s``, its time is returned at once (an over-estimate: too slow anyway)."""
    t0 = time.perf_counter()
    _step(net, x, device, dtype)
    if give_up_s is not None and time.perf_counter() - t0 > give_up_s:
        return time.perf_counter() - t0
    times: list[float] = []
    while len(times) < 2 or (sum(times) < budget_s and len(times) < 50):
        t0 = time.perf_counter()
        _step(net, x, device, dtype)
        times.append(time.perf_counter() - t0)
    return min(times)  # other processes can only slow a step down: the fastest is the machine's speed


def _step(net, x, device, dtype) -> None:
    with autocast(device, dtype):
        loss = _first(net(x)).float().square().mean()
    loss.backward()
    net.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _first(output):
    return output[0] if isinstance(output, (list, tuple)) else output


def _cache_path() -> Path:
    base = os.environ.get("MEDSEG_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "medseg")
    return Path(base) / "precision.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, key: str, choice: PrecisionChoice) -> None:
    data = _read_cache(path)
    data[key] = asdict(choice)
    with contextlib.suppress(OSError, MedsegError):  # a read-only home must not stop training
        write_text_atomic(path, json.dumps(data, indent=1))
