"""Inference speed: medseg's whole path vs MONAI's network-only sliding window at its best.

Same network (DynUNet 32-256 planned and briefly trained on phantoms of hippocampus-crop size, 40x56x40, unless
--model gives a trained model folder), same volume (a synthetic MR-like 160 x 192 x 160 volume at 1 mm), same
windows (patch from the plan, overlap 0.5).

    python benchmarks/infer_speed.py [--model runs/hippocampus] [--rounds 5]

Rows, timed in rounds (every row once per round, in turn; median and IQR printed; ``_anchors.py``):
- MONAI: ``sliding_window_inference(x, patch, n, net, overlap=0.5, mode="gaussian")`` on the already-normalised
  tensor, network only, fp32 and bf16 autocast with 1 and 2 windows per call (bf16 left out where a CPU runs it
  over 4x slower than fp32), and ``torch.compile`` at the faster precision with 1 and 2;
- medseg infer: the whole path on the NIfTI file (read, preprocess, predict, resample back, post-process, write) in
  fp32 and at ``precision="auto"`` (bf16 where :func:`medseg.model.device.precision_for` measures it faster), eager
  (``MEDSEG_COMPILE=0``) and compiled (AOTInductor, once, before the rounds; the first run that compiles, from a
  cold cache, and the compile time are printed apart).
GFLOP/s counts the network's forward multiply-adds (x2) over every window (conv FLOPs from forward hooks).
Bar (issue 21): medseg's faster whole path at least 1.5x the fastest MONAI row. Exit code 1 below it.
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
from _anchors import fastest, medseg_row, medseg_rows, monai_rows, precision_name, print_table, timed_rounds
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
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    from medseg.infer.predictor import Predictor
    from medseg.io import write_volume
    from medseg.model.sliding import call_batches
    from medseg.types import Volume

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MEDSEG_CACHE_DIR"] = str(tmp / "cache")  # a cold start: precision and compilation measured
        model_dir = make_model(tmp, args.model)
        predictor = Predictor.from_dir(model_dir, device="cpu", precision="auto")
        net, patch = predictor.nets[0], predictor.plan.patch_size
        precision = precision_name(predictor.dtype)
        rng = np.random.default_rng(0)
        image = (rng.normal(100, 20, SHAPE)).astype(np.float32)
        write_volume(Volume(image, np.eye(4)), tmp / "in" / "scan.nii.gz")
        x = torch.from_numpy((image - image.mean()) / image.std())[None, None]
        rows = monai_rows(net, x, patch, 0.5)
        first = seconds(medseg_row(model_dir, tmp / "in", tmp / "first", compiled=True))
        ours, compile_s = medseg_rows(predictor, model_dir, tmp / "in", tmp / "out", fp32=True)
        times = timed_rounds({**rows, **ours}, args.rounds)
    n = windows(SHAPE, patch, 0.5)
    flops = conv_flops(net, patch) * n
    anchor, ours = fastest(times, "MONAI"), fastest(times, "medseg")
    ratio = float(np.median(times[anchor]) / np.median(times[ours]))
    print(machine_line(load))
    print(f"volume {SHAPE}, patch {patch}, {n} windows, {flops / 1e9:.0f} GFLOP per pass, medseg precision "
          f"auto -> {precision}, medseg windows per call "
          f"{call_batches(net, torch.device('cpu'), predictor.dtype, (1, *patch), 2)[0]}, {args.rounds} rounds")
    gflops = {name: f"{flops / 1e9 / float(np.median(v)):.1f} GFLOP/s" for name, v in times.items()}
    print_table(times, anchor, gflops)
    print(f"medseg's first run from a cold cache (compiles when the job is large enough): {first:.1f} s; "
          "compiling the network (AOTInductor, cached per model and machine): "
          + (f"{compile_s:.1f} s" if compile_s is not None else "failed: no compiled row"))
    print(f"medseg's faster whole path ({ours}) {ratio:.2f}x the fastest MONAI row ({anchor}); bar 1.5x")
    return 0 if ratio >= 1.5 else 1


def seconds(run) -> float:
    """Seconds ``run()`` took."""
    t = time.perf_counter()
    run()
    return time.perf_counter() - t


if __name__ == "__main__":
    sys.exit(main())
