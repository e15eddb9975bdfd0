"""Inference on a full-size CT: medseg's whole path against MONAI's sliding window at its best.

    python benchmarks/infer_ct.py --model runs/openkbp [--case pt_10] [--rounds 5]

The volume: a real OpenKBP head-and-neck CT (``--case``; its body is surrounded by air) resampled trilinearly to
512x512 in-plane and 1.25 mm slices (pt_10: 512x512x307 at 1.17x1.17x1.25 mm), int16 HU, one NIfTI file. The model:
a trained OpenKBP model folder (7 organs; ``medseg train ../shared/data/openkbp --config
configs/openkbp-cpu-60min.yaml --out runs/openkbp``, or any OpenKBP run), with its plan's window and overlap.

Rows, timed in rounds (every row once per round; median and IQR):
- MONAI (see ``_anchors.py``): network only, on the tensor medseg's preprocessing makes of the CT (so both see the
  same voxels); fp32 and bf16 autocast with 1 and 2 windows per call, bf16 with ``torch.compile``;
- medseg infer: the whole path, NIfTI in to NIfTI out (read, preprocess, predict at ``precision="auto"``, restore to
  the CT's grid, post-process, write, case JSON), eager (``MEDSEG_COMPILE=0``) and with the network compiled once
  beforehand (AOTInductor, cached; the compile time is printed); focused (only the windows that can reach an organ,
  the default) and with every window (``--full-pass``, eager).
Dice per organ: medseg's label file against MONAI's prediction at medseg's precision (1 window per call) and in
fp32, each restored to the CT's grid (softmax, trilinear over the whole grid, argmax) and post-processed with the
model's own rules (``postprocess.json``), so only the prediction path differs; and the focused labels against
medseg's own full pass.

Bars (issue 21): medseg's faster whole path >= 2x the fastest MONAI row; Dice >= 0.998 against MONAI at the same
precision for every organ either predicts. Exit code 1 below either.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _anchors import fastest, medseg_rows, monai_rows, precision_name, print_table, timed_rounds
from _machine import data_dir, machine_line


def write_ct(case: str, out: Path) -> tuple[int, ...]:
    """The OpenKBP CT ``case`` resampled to 512x512 in-plane and 1.25 mm slices, written to ``out``."""
    import nibabel as nib

    image = nib.load(data_dir("openkbp") / "imagesTr" / f"{case}.nii.gz")
    array = np.asarray(image.dataobj, dtype=np.float32)
    fov = np.array(array.shape) * np.abs(np.diag(image.affine)[:3])
    shape = (512, 512, int(round(fov[2] / 1.25)))
    big = torch.nn.functional.interpolate(torch.from_numpy(array)[None, None], size=shape, mode="trilinear",
                                          align_corners=False)[0, 0].numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(big.round().astype(np.int16), np.diag([*(fov / np.array(shape)), 1.0])), out)
    return shape


def reference_labels(logits: torch.Tensor, trace, predictor) -> np.ndarray:
    """MONAI's logits -> label values on the CT's grid: softmax, whole-grid trilinear, argmax, the model's rules."""
    from medseg.postprocess import postprocess
    from medseg.preprocess import restore_probabilities

    probs = torch.softmax(logits.float(), dim=1)[0].numpy()
    label = np.asarray(sorted(predictor.labels))[restore_probabilities(probs, trace).argmax(axis=0)]
    spacing = np.abs(np.diag(np.asarray(trace.original_affine))[:3])
    return postprocess(label, predictor.rules, spacing)[0] if predictor.rules else label


def dice_per_label(a: np.ndarray, b: np.ndarray, labels) -> dict[int, float]:
    out = {}
    for value in labels:
        x, y = a == value, b == value
        if x.any() or y.any():
            out[value] = 2.0 * float((x & y).sum()) / float(x.sum() + y.sum())
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="a trained OpenKBP model folder")
    parser.add_argument("--case", default="pt_10")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    from medseg.infer.predictor import Predictor
    from medseg.io import read_volume
    from medseg.model.sliding import window_count
    from medseg.preprocess import preprocess

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MEDSEG_CACHE_DIR"] = str(tmp / "cache")  # a cold start: precision and compilation measured
        shape = write_ct(args.case, tmp / "in" / "ct.nii.gz")
        predictor = Predictor.from_dir(args.model, device="cpu", precision="auto")
        plan, net, overlap = predictor.plan, predictor.nets[0], float(predictor.config.infer.overlap)
        precision = precision_name(predictor.dtype)
        data, _, trace = preprocess(read_volume(tmp / "in" / "ct.nii.gz"), None, plan)
        x = torch.from_numpy(data)[None]
        rows = monai_rows(net, x, plan.patch_size, overlap)
        same = "MONAI bf16 autocast, 1 window/call" if precision == "bf16" else "MONAI fp32, 1 window/call"
        outputs = {"fp32": rows["MONAI fp32, 1 window/call"](), precision: rows[same]()}
        ours, compile_s = medseg_rows(predictor, Path(args.model), tmp / "in", tmp / "out", fp32=False)
        times = timed_rounds({**rows, **ours}, args.rounds)
        label = np.asarray(read_volume(tmp / "out" / "eager" / "ct.nii.gz").array)
        values = sorted(predictor.labels)[1:]
        dice = {f"MONAI {name}": dice_per_label(label, reference_labels(logits, trace, predictor), values)
                for name, logits in outputs.items()}
        full = np.asarray(read_volume(tmp / "out" / "full" / "ct.nii.gz").array)
        dice["medseg --full-pass"] = dice_per_label(label, full, values)
    anchor = fastest(times, "MONAI")
    best = fastest(times, "medseg")
    ratio = float(np.median(times[anchor]) / np.median(times[best]))
    print(machine_line(load))
    print(f"CT {args.case} resampled to {shape} -> plan grid {tuple(data.shape[1:])} at {plan.target_spacing} mm, "
          f"window {plan.patch_size}, overlap {overlap}, {window_count(data.shape[1:], plan.patch_size, overlap)} "
          f"windows; medseg precision auto -> {precision}; {args.rounds} rounds")
    print_table(times, anchor)
    print("compiling medseg's network once (cached per model and machine): "
          + (f"{compile_s:.1f} s" if compile_s is not None else "failed: no compiled row"))
    names = {int(k): v for k, v in predictor.labels.items()}
    for ref, per_label in dice.items():
        print(f"Dice of medseg's labels vs {ref}: "
              + ", ".join(f"{names[v]} {d:.4f}" for v, d in per_label.items()))
    worst = min(dice[f"MONAI {precision}"].values(), default=1.0)
    print(f"medseg whole path {ratio:.2f}x the fastest MONAI row ({anchor}); bar 2.0x; "
          f"lowest Dice vs MONAI {precision} {worst:.4f}, bar 0.998")
    return 0 if ratio >= 2.0 and worst >= 0.998 else 1


if __name__ == "__main__":
    sys.exit(main())
