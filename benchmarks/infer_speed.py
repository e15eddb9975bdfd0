"""Inference speed: medseg's whole path vs MONAI's network-only sliding window in fp32.

Same network (DynUNet 32-256 planned and briefly trained on phantoms of hippocampus-crop size, 40x56x40, unless
--model gives a trained model folder),
same volume (a synthetic MR-like 160 x 192 x 160 volume at 1 mm), same windows (patch from the plan, overlap 0.5).

    python benchmarks/infer_speed.py [--model runs/hippocampus] [--repeats 2]

Rows:
- MONAI fp32: `sliding_window_inference(x, patch, 2, net, overlap=0.5, mode="gaussian")` on the
  already-normalised tensor, network only (what a MONAI user writes);
- medseg infer: the whole path on the NIfTI file: read, preprocess, predict with ``precision="auto"`` (bf16 when
  :func:`medseg.model.device.precision_for` measures it faster than fp32 on this machine), resample back,
  post-process, write; three ways, from a cold cache (the benchmark uses its own ``MEDSEG_CACHE_DIR``):
  eager (``MEDSEG_COMPILE=0``), first run (compiles only when the job is large enough to pay for it, see
  :mod:`medseg.model.compiled`) and compiled (after the network was compiled once; that time is printed too:
  what every later run on this machine gets).
Rows are the best of ``--repeats`` runs; MONAI's runs alternate with medseg's (2 x repeats in all), so a change
of load on a shared machine hits both.
GFLOP/s counts the network's forward multiply-adds (x2) over every window, from a fvcore-free estimate of conv
FLOPs. Bar (issue 12): medseg's best whole path at least 3x faster than the MONAI fp32 network-only call where bf16 is
measured faster (AMX, Zen 4 and later), 1.5x where it is not. Exit code 1 below it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _machine import machine_line

SHAPE = (160, 192, 160)


def conv_flops(net: torch.nn.Module, patch) -> float:
    """Forward FLOPs of one window: 2 * multiply-adds of every convolution (hooks on Conv3d/ConvTranspose3d)."""
    total = 0.0

    def hook(module, inputs, output):
        nonlocal total
        kernel = float(np.prod(module.kernel_size))
        cin = module.in_channels / module.groups
        total += 2.0 * kernel * cin * float(output.numel())

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, 1, *patch))
    for h in handles:
        h.remove()
    return total


def windows(shape, patch, overlap) -> int:
    from monai.inferers.utils import _get_scan_interval, dense_patch_slices

    interval = _get_scan_interval(shape, patch, 3, (overlap,) * 3)
    return len(dense_patch_slices(shape, patch, interval))


def make_model(tmp: Path, model: str | None) -> Path:
    if model:
        return Path(model)
    from medseg.config import load_config
    from medseg.data.phantom import write_phantom_dataset
    from medseg.train import train

    data = write_phantom_dataset(tmp / "data", cases=3, shape=(40, 56, 40), spacing=(1.0, 1.0, 1.0),
                                 rotation_deg=(0, 0, 0))
    config = load_config(None, ["train.epochs=1", "train.iterations_per_epoch=1", "train.num_workers=0",
                                "train.patch_size=[40, 56, 40]", "train.batch_size=2"])
    train(data, tmp / "model", config)
    return tmp / "model"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    from monai.inferers import sliding_window_inference

    from medseg.infer.batch import InferOptions, run_batch
    from medseg.infer.predictor import Predictor
    from medseg.io import write_volume
    from medseg.model.compiled import MIN_COMPILE_WINDOWS, compiled_forward
    from medseg.model.sliding import window_batch
    from medseg.types import Volume

    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MEDSEG_CACHE_DIR"] = str(tmp / "cache")  # a cold start: precision and compilation measured
        model_dir = make_model(tmp, args.model)
        predictor = Predictor.from_dir(model_dir, device="cpu", precision="auto")
        net, patch = predictor.nets[0], predictor.plan.patch_size
        precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[predictor.dtype]
        rng = np.random.default_rng(0)
        image = (rng.normal(100, 20, SHAPE)).astype(np.float32)
        write_volume(Volume(image, np.eye(4)), tmp / "in" / "scan.nii.gz")
        x = torch.from_numpy((image - image.mean()) / image.std())[None, None]

        def monai() -> None:
            with torch.no_grad():
                sliding_window_inference(x, patch, 2, net.eval(), overlap=0.5, mode="gaussian")

        def medseg() -> None:
            run_batch(model_dir, tmp / "in", tmp / "out", InferOptions(overwrite=True), device="cpu",
                      precision="auto")

        # MONAI's row runs beside each medseg row in alternation, so load from other work hits both; best kept.
        monai_row, eager_row = "MONAI sliding window, fp32 (net)", f"medseg infer, eager ({precision})"
        first_row, compiled_row = f"medseg infer, first run ({precision})", f"medseg infer, compiled ({precision})"
        times: dict[str, list[float]] = {monai_row: [], eager_row: [], first_row: [], compiled_row: []}
        os.environ["MEDSEG_COMPILE"] = "0"
        for _ in range(args.repeats):
            times[monai_row].append(seconds(monai))
            times[eager_row].append(seconds(medseg))
        os.environ["MEDSEG_COMPILE"] = "1"
        times[first_row].append(seconds(medseg))
        t = time.perf_counter()
        shape = (window_batch(cpu, predictor.config.infer.sw_batch_size), predictor.plan.in_channels, *patch)
        compiled = compiled_forward(net, cpu, predictor.dtype, shape, MIN_COMPILE_WINDOWS)
        compile_s = time.perf_counter() - t
        for _ in range(args.repeats):
            times[monai_row].append(seconds(monai))
            times[compiled_row].append(seconds(medseg))
        rows = {name: min(values) for name, values in times.items()}
    n = windows(SHAPE, patch, 0.5)
    flops = conv_flops(net, patch) * n
    bar = 3.0 if predictor.dtype is not None else 1.5
    print(machine_line(load))
    print(f"volume {SHAPE}, patch {patch}, {n} windows, {flops / 1e9:.0f} GFLOP per pass, medseg precision "
          f"auto -> {precision}, medseg window batch {shape[0]}")
    print(f"{'path':40} {'seconds':>8} {'GFLOP/s':>8} {'speed-up':>8}")
    monai_s = rows[monai_row]
    for name, best in rows.items():
        print(f"{name:40} {best:8.2f} {flops / 1e9 / best:8.1f} {monai_s / best:7.2f}x")
    print(f"compiling the network once (AOTInductor, cached per model and machine): {compile_s:.1f} s"
          + ("" if compiled else " (failed: predictions stay eager)"))
    ratio = monai_s / min(v for k, v in rows.items() if k.startswith("medseg"))
    print(f"best medseg speed-up {ratio:.2f}x (bar: {bar}x, {'bf16 measured faster' if bar == 3.0 else 'fp32 kept'})")
    return 0 if ratio >= bar else 1


def seconds(run) -> float:
    """Seconds ``run()`` took."""
    t = time.perf_counter()
    run()
    return time.perf_counter() - t


if __name__ == "__main__":
    sys.exit(main())
