"""MONAI's sliding window at its best, as the anchor of the inference benchmarks, and how rows are timed.

A MONAI user on a CPU writes ``sliding_window_inference(x, patch, sw_batch_size, net, overlap, mode="gaussian")``
and turns on bf16 autocast and ``torch.compile`` where they are faster; every one of those settings is a row, and
a bar is set against the fastest of them. Rows are timed in rounds (every row once per round, in turn), so a
change of load on the machine hits all of them; the median and interquartile range over the rounds are printed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def monai_rows(net: torch.nn.Module, x: torch.Tensor, patch, overlap: float) -> dict[str, Callable[[], torch.Tensor]]:
    """Row name -> a call of MONAI's Gaussian sliding window on the already-preprocessed ``x`` (network only):
    fp32 and bf16 autocast with 1 and 2 windows per call, and ``torch.compile`` at the faster precision with 1 and 2
    (compiled here, before any timing; left out, with a line saying so, where compiling fails). Where a bf16
    window takes over ``GIVE_UP_FACTOR`` fp32 windows (a CPU without native bf16: 0.02x on a Zen 3 EPYC), no MONAI
    user would turn it on: the bf16 rows are left out, with a line saying so."""
    from monai.inferers import sliding_window_inference

    from medseg.model.device import GIVE_UP_FACTOR

    net = net.eval()

    def row(model, batch: int, dtype) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                return sliding_window_inference(x, list(patch), batch, model, overlap=overlap, mode="gaussian")

        return run

    rows = {"MONAI fp32, 1 window/call": row(net, 1, None), "MONAI fp32, 2 windows/call": row(net, 2, None)}
    slowdown = _bf16_slowdown(net, x.shape[1], patch)
    best = torch.bfloat16 if slowdown <= GIVE_UP_FACTOR else None
    if best is None:
        print(f"MONAI bf16 rows left out: one bf16 window takes {slowdown:.0f}x an fp32 window on this CPU")
    else:
        rows.update({"MONAI bf16 autocast, 1 window/call": row(net, 1, torch.bfloat16),
                     "MONAI bf16 autocast, 2 windows/call": row(net, 2, torch.bfloat16)})
    name = "bf16" if best is not None else "fp32"
    compiled_net = torch.compile(net)
    for batch in (1, 2):
        compiled = row(compiled_net, batch, best)
        t = time.perf_counter()
        try:
            compiled()
        except Exception as exc:  # noqa: BLE001 - "where it works": the row is left out, and the reason printed
            print(f"MONAI {name} + torch.compile left out: {str(exc).splitlines()[0][:200]}")
            break
        print(f"MONAI {name} + torch.compile, {batch}/call: compiling and the first pass took "
              f"{time.perf_counter() - t:.1f} s")
        rows[f"MONAI {name} + torch.compile, {batch} window{'s' if batch > 1 else ''}/call"] = compiled
    return rows


def _bf16_slowdown(net: torch.nn.Module, channels: int, patch) -> float:
    """Seconds of one bf16-autocast window over one fp32 window (each after an untimed call)."""
    window = torch.zeros(1, channels, *patch)

    def once(dtype) -> float:
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            net(window)
            t = time.perf_counter()
            net(window)
            return time.perf_counter() - t

    return once(torch.bfloat16) / once(None)


def medseg_row(model: Path, inputs: Path, out: Path, compiled: bool, precision: str = "auto",
               focus: bool = True) -> Callable[[], None]:
    """``medseg infer``'s whole path (files in, files out) as a row: eager (``MEDSEG_COMPILE=0``) or taking the
    compiled network when one is cached (``MEDSEG_COMPILE=1``); the focused pass (the default) or every window
    (``--full-pass``)."""
    from medseg.infer.batch import InferOptions, run_batch

    def run() -> None:
        os.environ["MEDSEG_COMPILE"] = "1" if compiled else "0"
        run_batch(model, inputs, out, InferOptions(overwrite=True, focus=focus), device="cpu", precision=precision)

    return run


def medseg_rows(predictor, model: Path, inputs: Path, out: Path,
                fp32: bool) -> tuple[dict[str, Callable[[], None]], float | None]:
    """medseg's whole-path rows for ``predictor`` (loaded from ``model``): fp32 eager (with ``fp32``), eager with
    every window (``--full-pass``), eager and compiled at its precision (focused, the default); the network is
    compiled once here, before any timing (its seconds are returned, None where compiling failed or the eager
    network was measured faster than every package, and the compiled row is left out). Outputs go to
    ``out/<fp32|full|eager|compiled>``."""
    from medseg.model.compiled import compiled_forward
    from medseg.model.sliding import call_batches

    cpu = torch.device("cpu")
    precision = precision_name(predictor.dtype)
    plan = predictor.plan
    window = (plan.in_channels, *plan.patch_size)
    batch, _ = call_batches(predictor.nets[0], cpu, predictor.dtype, window, predictor.config.infer.sw_batch_size)
    shape = (batch, *window)
    start = time.perf_counter()
    compiled = compiled_forward(predictor.nets[0], cpu, predictor.dtype, shape, 10**9)
    compile_s = time.perf_counter() - start if compiled is not None else None
    rows = {}
    if fp32 and precision != "fp32":  # at fp32 the eager row below is this row
        rows["medseg infer whole path, fp32, eager"] = medseg_row(model, inputs, out / "fp32", False, "fp32")
    rows[f"medseg infer whole path, {precision}, eager, full pass"] = medseg_row(model, inputs, out / "full", False,
                                                                                focus=False)
    rows[f"medseg infer whole path, {precision}, eager"] = medseg_row(model, inputs, out / "eager", False)
    if compiled is not None:
        rows[f"medseg infer whole path, {precision}, compiled"] = medseg_row(model, inputs, out / "compiled", True)
    return rows, compile_s


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for an autocast dtype (None: fp32)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def timed_rounds(rows: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each row in each round (every row once per round, rows in turn)."""
    times: dict[str, list[float]] = {name: [] for name in rows}
    for r in range(rounds):
        for name, run in rows.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{v[-1]:.1f}" for v in times.values()), flush=True)
    return times


def print_table(times: dict[str, list[float]], anchor: str, extra: dict[str, str] | None = None) -> None:
    """Median and IQR of every row, and its speed-up over the ``anchor`` row's median."""
    base = float(np.median(times[anchor]))
    print(f"{'row':48} {'median s':>9} {'IQR s':>11} {'vs ' + anchor[:24]:>30}  note")
    for name, values in times.items():
        q1, med, q3 = np.percentile(values, [25, 50, 75])
        print(f"{name:48} {med:9.2f} {q1:5.2f}-{q3:5.2f} {base / med:29.2f}x  {(extra or {}).get(name, '')}")


def fastest(times: dict[str, list[float]], prefix: str) -> str:
    """The row starting with ``prefix`` with the lowest median."""
    return min((n for n in times if n.startswith(prefix)), key=lambda n: float(np.median(times[n])))
