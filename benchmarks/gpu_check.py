"""GPU check (issue 12): one short script for a CUDA machine, under 8 minutes on an H100. Not part of CI.

1. Matmul peak: the device's measured dense matmul rate in the training precision (and fp32), the yardstick.
2. Training: 300 of medseg's training steps (:func:`medseg.train.loop.train_steps`, its real batch stream) on the
   real MSD Hippocampus data (``$MEDSEG_DATA/hippocampus``, default ``../shared/data/hippocampus``), default config
   (DynUNet 32-320, deep supervision), ``precision: auto`` (bf16 or fp16, measured); steps/s and GFLOP/s, where a
   step counts 3x the forward convolution FLOPs of its batch (forward + backward).
3. Agreement: the trained network segments real held-out cases on CUDA (auto precision) and on the CPU (fp32);
   Dice of each label between the two label maps, pooled over the cases. Bar 0.998.
4. Large volume: ``medseg infer --device cuda`` in a child process on a synthetic 512 x 512 x 600 CT predicted at
   full resolution by a small CT model; peak host RAM (ru_maxrss, bar 8 GB) and peak GPU memory reserved by torch
   (bar :data:`GPU_BAR_GB`).

    python benchmarks/gpu_check.py            # exit 1 when a bar is missed, 2 when torch sees no CUDA device
    python benchmarks/gpu_check.py --device cpu --steps 3 --cases 6 --ct-shape 96 96 64   # smoke test, no bars

Each stage prints its line as soon as it is done, so a run cut short still reports what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _machine import data_dir
from infer_speed import conv_flops
from train_speed import medseg_loop, prepare

STEPS = 300
AGREEMENT_BAR = 0.998
RAM_BAR_GB = 8.0
GPU_BAR_GB = 4.0  # the rolling pass keeps float32 sums for only patch + step slices: well under this
TIME_BAR_S = 480.0
CT_SHAPE = (512, 512, 600)


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 8192, seconds: float = 2.0) -> float:
    """Measured dense ``n x n`` matmul rate (TFLOP/s) in ``dtype`` on ``device``."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda _: None)
    torch.matmul(a, b)
    sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            torch.matmul(a, b)
        sync(device)
        count += 10
    return 2.0 * n**3 * count / (time.perf_counter() - start) / 1e12


def agreement(net, plan, config, device, dtype, cases) -> dict[str, float]:
    """Per label: Dice between CUDA (``dtype``) and CPU fp32 label maps of ``cases``, pooled over the cases."""
    import copy

    from medseg.model.inference import InferenceSettings, predict_volume
    from medseg.preprocess.io import load_case

    settings = InferenceSettings(overlap=config.infer.overlap, sw_batch_size=config.infer.sw_batch_size)
    cpu_net = copy.deepcopy(net).cpu().eval()
    inter, total = {}, {}
    for case in cases:
        volume, _ = load_case(case)
        gpu = predict_volume([net.eval()], volume, plan, settings, device, dtype).label.array
        cpu = predict_volume([cpu_net], volume, plan, settings, torch.device("cpu"), None).label.array
        for value, name in plan.labels.items():
            if value:
                a, b = gpu == value, cpu == value
                inter[name] = inter.get(name, 0) + int((a & b).sum())
                total[name] = total.get(name, 0) + int(a.sum() + b.sum())
    return {name: 2.0 * inter[name] / max(total[name], 1) for name in inter}


def write_ct_model_and_scan(tmp: Path, device: str, shape: tuple[int, int, int]) -> tuple[Path, Path]:
    """A small 3-class CT model trained briefly on CUDA (planned at the scan's spacing, so the scan is predicted at
    full resolution) and a synthetic 512 x 512 x 600 CT (int16 HU, 0.8 x 0.8 x 1 mm, uncompressed NIfTI)."""
    from medseg.config import load_config
    from medseg.data.phantom import write_phantom_dataset
    from medseg.io import write_volume
    from medseg.train import train
    from medseg.types import Volume

    data = write_phantom_dataset(tmp / "ct_data", cases=3, shape=(64, 64, 48), spacing=(0.8, 0.8, 1.0),
                                 rotation_deg=(0, 0, 0), modality="CT")
    config = load_config(None, ["train.epochs=1", "train.iterations_per_epoch=2", "train.num_workers=0",
                                "model.base_filters=8", "model.max_filters=64", "train.patch_size=[96, 96, 64]",
                                "train.batch_size=2", "train.final_mirror=false", "infer.overlap=0.25",
                                "infer.sw_batch_size=4"])
    train(data, tmp / "ct_model", config, device=device)
    cx, cy = shape[0] / 2, shape[1] / 2
    x, y = np.ogrid[:shape[0], :shape[1]]
    body = ((x - cx) ** 2 / (0.9 * cx) ** 2 + (y - cy) ** 2 / (0.66 * cy) ** 2) < 1
    rng = np.random.default_rng(0)
    image = np.empty(shape, np.int16)
    for k in range(shape[2]):
        image[:, :, k] = np.where(body, 40, -1000) + rng.normal(0, 15, shape[:2])
    write_volume(Volume(image, np.diag([0.8, 0.8, 1.0, 1.0])), tmp / "ct_in" / "ct.nii")
    return tmp / "ct_model", tmp / "ct_in"


def infer_child(model: str, inputs: str, out: str, device: str) -> None:
    """Run inside the child process: ``medseg infer`` on ``device``, then print seconds and peak memory as JSON."""
    from medseg.infer.batch import InferOptions, run_batch

    t0 = time.perf_counter()
    summary = run_batch(model, inputs, out, InferOptions(dicom_seg=False), device=device)
    seconds = time.perf_counter() - t0
    gpu = torch.cuda.max_memory_reserved() / 2**30 if device == "cuda" else 0.0
    print(json.dumps({"seconds": seconds, "counts": summary["counts"], "gpu_peak_gb": gpu,
                      "ram_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def large_volume(tmp: Path, device: str, shape: tuple[int, int, int]) -> dict:
    """``medseg infer --device DEVICE`` on the synthetic CT in a child process: its seconds and peaks."""
    model, inputs = write_ct_model_and_scan(tmp, device, shape)
    proc = subprocess.run([sys.executable, __file__, "--infer-child", str(model), str(inputs), str(tmp / "ct_out"),
                           device], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"medseg infer on the large CT failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--cases", type=int, default=60, help="training cases to preprocess and sample from")
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a smoke test: bars not applied)")
    parser.add_argument("--precision", default="auto", help="auto (measured) or a forced precision: fp32, bf16, fp16")
    parser.add_argument("--ct-shape", type=int, nargs=3, default=CT_SHAPE, help="synthetic CT shape (voxels)")
    parser.add_argument("--infer-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.infer_child:
        infer_child(*args.infer_child)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; this check is for a GPU machine (it is not part of CI)")
        return 2
    start = time.perf_counter()
    from medseg.config import load_config
    from medseg.data import load_dataset
    from medseg.model.device import autocast_dtype, precision_for
    from medseg.train.splits import split_cases

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke test)"
    config = load_config(None, [f"train.num_workers={max(1, min(8, (os.cpu_count() or 2) - 2))}"])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        plan, data = prepare(config, args.cases, tmp)
        choice = precision_for(plan, config, device, args.precision)
        dtype = autocast_dtype(choice.precision) or torch.float32
        amp = None if dtype == torch.float32 else dtype
        print(f"{name}, torch {torch.__version__}, precision {args.precision} -> {choice.precision} ({choice.reason})",
              flush=True)
        peak = {"fp32": matmul_tflops(device, torch.float32)}
        peak[choice.precision] = matmul_tflops(device, dtype)
        print("matmul peak " + ", ".join(f"{p} {t:.1f} TFLOP/s" for p, t in peak.items()), flush=True)
        net, run = medseg_loop(config, plan, data, device, amp)
        heads = net.deep_supr_num if getattr(net, "deep_supervision", False) else 0
        run(5)  # warm-up: DataLoader workers, cuDNN algorithm choice
        step_s = run(args.steps) / args.steps
        train_tflops = 3.0 * conv_flops(net.cpu(), plan.patch_size) * plan.batch_size / step_s / 1e12
        print(f"training: hippocampus, patch {plan.patch_size}, batch {plan.batch_size}, DynUNet "
              f"{plan.filters[0]}-{plan.filters[-1]}, deep supervision heads {heads}, {args.steps} steps: "
              f"{1 / step_s:.2f} steps/s, {train_tflops * 1e3:.0f} GFLOP/s = "
              f"{100 * train_tflops / peak[choice.precision]:.1f} % of the {choice.precision} matmul peak", flush=True)
        net.to(device)
        dataset = load_dataset(data_dir("hippocampus"))
        val_ids = set(split_cases(dataset, config.train.folds, config.train.seed, tmp / "splits.json")[0]["val"])
        cases = [c for c in dataset.cases if c.id in val_ids][:5]
        dice = agreement(net, plan, config, device, amp, cases)
        labels = ", ".join(f"{label} {d:.4f}" for label, d in dice.items())
        print(f"{device.type} ({choice.precision}) vs CPU (fp32) labels on {len(cases)} real held-out cases: Dice "
              f"{labels} (bar {AGREEMENT_BAR})", flush=True)
        big = large_volume(tmp, args.device, tuple(args.ct_shape))
        print(f"{'x'.join(map(str, args.ct_shape))} CT at full resolution: {big['seconds']:.0f} s, host RAM peak "
              f"{big['ram_peak_gb']:.2f} GB (bar {RAM_BAR_GB}), GPU memory peak {big['gpu_peak_gb']:.2f} GB "
              f"(bar {GPU_BAR_GB}), {big['counts']}", flush=True)
    seconds = time.perf_counter() - start
    print(f"total {seconds:.0f} s (bar {TIME_BAR_S:.0f} s)")
    failures = [what for what, bad in [
        ("agreement", min(dice.values()) < AGREEMENT_BAR), ("host RAM", big["ram_peak_gb"] > RAM_BAR_GB),
        ("GPU memory", big["gpu_peak_gb"] > GPU_BAR_GB), ("time", seconds > TIME_BAR_S),
        ("large CT not done", big["counts"].get("done") != 1)] if bad]
    if device.type != "cuda":
        print("smoke test on the CPU: bars not applied")
        return 0
    print("PASS" if not failures else "FAIL: " + ", ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
