"""medseg vs nnU-Net v2's ``nnUNetPredictor``: files read to files written, same weights, start-up timed apart.

A medseg model (``--model``; for the hippocampus task, by default a short run of ``medseg train`` on the real MSD
Hippocampus data) is turned into an nnU-Net v2 model folder: its DynUNet's weights are copied into nnU-Net's
``PlainConvUNet`` of the same topology (same stages, kernels, strides, widths, instance norm, leaky ReLU; checked
to give the same logits), with a plan of the same spacing, patch and normalisation (z-score for MR; for CT
nnU-Net's ``CTNormalization`` with the plan's clip and foreground mean/std, which is medseg's), reading through
``NibabelIOWithReorient`` so both see the volume in closest-RAS axis order. Both segment the same cases with the
same window (the plan's patch), overlap 0.5, Gaussian blending and mirroring along the plan's axes (hippocampus:
8 flips; CT: none, as the OpenKBP config predicts), each in its own process, alternating (``--repeats`` times):

- ``--task hippocampus``: the first ``--cases`` fold-0 validation cases of the model's split;
- ``--task openkbp`` (CT, 7 organs): the first ``--cases`` test-split cases of ``data_manifests/openkbp.yaml``
  (Dice over the organs contoured in each case);
- medseg: ``run_batch`` in fp32 and at ``precision="auto"`` (bf16 where measured faster);
- nnU-Net: ``nnUNetPredictor(...).predict_from_files_sequential`` on the CPU (fp32, nnU-Net's only CPU precision;
  one process, no preprocessing or export workers, so both use the same 2 cores the same way).

Start-up (process start, imports, nnU-Net's model initialisation) is timed apart from the per-case time (medseg's
per-case time includes loading its model once). Dice against the ground truth is the mean over cases and labels.
Bar: medseg's per-case time at least 2x faster than nnU-Net's at equal precision (fp32) and at its fastest, mean
Dice within 0.005. Exit code 1 below it.

nnU-Net is not a dependency: ``pip install --no-deps nnunetv2 acvl-utils dynamic-network-architectures
batchgenerators batchgeneratorsv2 threadpoolctl blosc2 numexpr msgpack ndindex httpx pandas seaborn scikit-learn
joblib narwhals`` (plain ``pip install nnunetv2`` would replace the CPU torch with a CUDA build). Without it the
script says so and exits 2.

    python benchmarks/vs_nnunet.py [--task openkbp --model runs/openkbp] [--cases 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _machine import ROOT, data_dir, machine_line

SPEED_BAR, DICE_BAR = 2.0, 0.005

_NNUNET = """
import json, os, sys, time
start = time.perf_counter()
os.makedirs(sys.argv[3], exist_ok=True)
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
torch.set_num_threads(int(sys.argv[4]))
p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=sys.argv[5] == "1",
                    device=torch.device("cpu"), verbose=False, allow_tqdm=False)
p.initialize_from_trained_model_folder(sys.argv[1], use_folds=(0,))
ready = time.perf_counter()
p.predict_from_files_sequential(sys.argv[2], sys.argv[3], save_probabilities=False, overwrite=True,
                                folder_with_segs_from_prev_stage=None)
print(json.dumps({"cases_s": time.perf_counter() - ready}))
"""

_MEDSEG = """
import json, sys, time
start = time.perf_counter()
from medseg.infer.batch import InferOptions, run_batch
ready = time.perf_counter()
run_batch(sys.argv[1], sys.argv[2], sys.argv[3], InferOptions(overwrite=True, mirror=sys.argv[5] == "1",
          overlap=0.5, dicom_seg=False), device="cpu", precision=sys.argv[4])
print(json.dumps({"cases_s": time.perf_counter() - ready}))
"""


def train_model(out: Path) -> Path:
    """A short ``medseg train`` run on the hippocampus data (30-minute CPU config, 4-minute budget)."""
    subprocess.run([sys.executable, "-m", "medseg.cli", "train", str(data_dir("hippocampus")), "--config",
                    str(ROOT / "configs" / "cpu-30min.yaml"), "--set", "train.time_budget=4m", "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    return out


def nnunet_network(plan, classes: int) -> torch.nn.Module:
    """nnU-Net's ``PlainConvUNet`` with the plan's topology (no conv bias, affine instance norm, leaky ReLU)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(**_arch_kwargs(plan, live=True), input_channels=plan.in_channels, num_classes=classes,
                         deep_supervision=False)


def _arch_kwargs(plan, live: bool) -> dict:
    """``PlainConvUNet`` arguments; ``live``: classes as objects, else as the dotted names nnU-Net's plans hold."""
    ops = {"conv_op": torch.nn.Conv3d, "norm_op": torch.nn.InstanceNorm3d, "dropout_op": None,
           "nonlin": torch.nn.LeakyReLU}
    if not live:  # nnU-Net's plans name them; it imports them with pydoc.locate
        ops = {k: v and f"{v.__module__}.{v.__name__}" for k, v in ops.items()}
    n = len(plan.filters)
    return {"n_stages": n, "features_per_stage": list(plan.filters), "kernel_sizes": plan.kernel_sizes,
            "strides": plan.strides, "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1),
            "conv_bias": False, "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op_kwargs": None,
            "nonlin_kwargs": {"negative_slope": 0.01, "inplace": True}, **ops}


def copy_weights(src: torch.nn.Module, dst: torch.nn.Module, patch) -> float:
    """Copy a DynUNet's weights into a ``PlainConvUNet`` of the same topology, layer by layer in execution order
    (a norm without affine parameters becomes weight 1, bias 0; DynUNet's deep-supervision heads, which it runs
    but does not return in eval mode, are left out); returns the largest logit difference."""
    kinds = (torch.nn.Conv3d, torch.nn.ConvTranspose3d, torch.nn.InstanceNorm3d)
    x = torch.randn(1, 1, *patch)
    src_layers, dst_layers = _run_order(src, x, kinds), _run_order(dst, x, kinds)
    src_layers = [m for i, m in enumerate(src_layers)
                  if i == len(src_layers) - 1 or getattr(m, "kernel_size", None) != (1, 1, 1)]
    if [type(m) for m in src_layers] != [type(m) for m in dst_layers]:
        raise SystemExit("the two networks' layers differ; cannot share weights")
    with torch.no_grad():
        for a, b in zip(src_layers, dst_layers, strict=True):
            if isinstance(a, torch.nn.InstanceNorm3d):
                b.weight.copy_(a.weight if a.affine else torch.ones_like(b.weight))
                b.bias.copy_(a.bias if a.affine else torch.zeros_like(b.bias))
                continue
            b.weight.copy_(a.weight)
            if b.bias is not None:
                b.bias.copy_(a.bias if a.bias is not None else torch.zeros_like(b.bias))
        return float((src.eval()(x) - dst.eval()(x)).abs().max())


def _run_order(net: torch.nn.Module, x: torch.Tensor, kinds) -> list[torch.nn.Module]:
    order: list[torch.nn.Module] = []
    handles = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in net.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        net.eval()(x)
    for h in handles:
        h.remove()
    return order


def write_nnunet_model(predictor, out: Path) -> Path:
    """An nnU-Net v2 model folder (``dataset.json``, ``plans.json``, ``fold_0/checkpoint_final.pth``) holding the
    medseg model's weights in a ``PlainConvUNet``."""
    plan = predictor.plan
    labels = {name: int(v) for v, name in sorted(plan.labels.items())}
    net = nnunet_network(plan, len(labels))
    difference = copy_weights(predictor.nets[0].cpu().float(), net, plan.patch_size)
    if difference > 1e-3:
        raise SystemExit(f"copied weights give different logits (max difference {difference:.2g})")
    spacing = list(plan.target_spacing)
    norm = plan.normalization[0]
    ct = norm["scheme"] == "ct"
    intensities = ({"mean": norm["mean"], "std": norm["std"], "percentile_00_5": norm["lower"],
                    "percentile_99_5": norm["upper"]} if ct else {"mean": 0.0, "std": 1.0})
    config = {"data_identifier": "medseg", "preprocessor_name": "DefaultPreprocessor", "batch_size": plan.batch_size,
              "patch_size": list(plan.patch_size), "median_image_size_in_voxels": plan.median_shape_resampled,
              "spacing": spacing, "normalization_schemes": ["CTNormalization" if ct else "ZScoreNormalization"],
              "use_mask_for_norm": [False],
              "resampling_fn_data": "resample_data_or_seg_to_shape",
              "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
              "resampling_fn_seg": "resample_data_or_seg_to_shape",
              "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
              "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
              "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                     "force_separate_z": None},
              "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                               "arch_kwargs": _arch_kwargs(plan, live=False),
                               "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
              "batch_dice": True}
    plans = {"dataset_name": "Dataset999_medseg", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": spacing,
             "original_median_shape_after_transp": [int(s) for s in plan.median_shape_resampled],
             "image_reader_writer": "NibabelIOWithReorient", "transpose_forward": [2, 1, 0],
             "transpose_backward": [2, 1, 0], "configurations": {"3d_fullres": config},
             "experiment_planner_used": "medseg", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {"0": intensities}}
    dataset = {"channel_names": {"0": "CT" if ct else "MRI"}, "labels": labels, "numTraining": 0,
               "file_ending": ".nii.gz"}
    (out / "fold_0").mkdir(parents=True)
    (out / "plans.json").write_text(json.dumps(plans, indent=1))
    (out / "dataset.json").write_text(json.dumps(dataset, indent=1))
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"},
                "inference_allowed_mirroring_axes": tuple(plan.mirror_axes)},
               out / "fold_0" / "checkpoint_final.pth")
    return out


def task_cases(task: str, model: Path, count: int) -> tuple[list[str], dict[str, list[int]] | None]:
    """Case ids and, for OpenKBP, the labels contoured in each: hippocampus, the model's first fold-0 validation
    cases; OpenKBP, the first test-split cases of ``data_manifests/openkbp.yaml``."""
    if task == "hippocampus":
        return json.loads((model / "splits.json").read_text())[0]["val"][:count], None
    import yaml

    cases = [c for c in yaml.safe_load((ROOT / "data_manifests" / "openkbp.yaml").read_text())["cases"]
             if c.get("split") == "test"][:count]
    return [c["id"] for c in cases], {c["id"]: c["annotated"] for c in cases}


def link_inputs(task: str, ids: list[str], folder: Path) -> Path:
    """An nnU-Net style input folder (``ID_0000.nii.gz``) of links to the shared data's images."""
    folder.mkdir(parents=True)
    for case in ids:
        (folder / f"{case}_0000.nii.gz").symlink_to(data_dir(task) / "imagesTr" / f"{case}.nii.gz")
    return folder


def mean_dice(task: str, out: Path, ids: list[str], labels: list[int], contoured: dict | None) -> float:
    """Mean over cases and foreground labels (contoured ones, where a case says) of the Dice between
    ``out/ID.nii.gz`` and the ground truth."""
    import nibabel as nib

    scores = []
    for case in ids:
        pred = np.asarray(nib.load(out / f"{case}.nii.gz").dataobj)
        truth = np.asarray(nib.load(data_dir(task) / "labelsTr" / f"{case}.nii.gz").dataobj)
        for v in labels if contoured is None else contoured[case]:
            a, b = pred == v, truth == v
            scores.append(2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1))
    return float(np.mean(scores))


def timed(command: list[str]) -> tuple[float, float]:
    """``(start-up s, cases s)`` of ``command`` (a child printing ``{"cases_s": ...}`` last): start-up is the rest of
    its wall time. Exits with its last error lines when it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{command[:4]} failed:\n{proc.stderr[-3000:]}")
    cases = json.loads(proc.stdout.strip().splitlines()[-1])["cases_s"]
    return wall - cases, cases


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=["hippocampus", "openkbp"], default="hippocampus")
    parser.add_argument("--model", type=Path, default=None, help="a medseg model folder trained on the task")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        print("nnU-Net v2 is not installed (see this script's docstring for the --no-deps install)")
        return 2
    if args.task == "openkbp" and args.model is None:
        parser.error("--task openkbp needs --model (a medseg OpenKBP model folder)")
    from medseg.infer.predictor import Predictor

    threads, mirror = torch.get_num_threads(), "1" if args.task == "hippocampus" else "0"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = args.model or train_model(tmp / "medseg_model")
        predictor = Predictor.from_dir(model, device="cpu")
        nnunet = write_nnunet_model(predictor, tmp / "nnunet_model")
        ids, contoured = task_cases(args.task, model, args.cases)
        inputs = link_inputs(args.task, ids, tmp / "in")
        precision = "fp32" if predictor.dtype is None else str(predictor.dtype).replace("torch.", "")
        runs = {"nnU-Net v2 (fp32)": [sys.executable, "-c", _NNUNET, str(nnunet), str(inputs), str(tmp / "nnunet"),
                                      str(threads), mirror],
                "medseg (fp32)": [sys.executable, "-c", _MEDSEG, str(model), str(inputs), str(tmp / "fp32"), "fp32",
                                  mirror],
                f"medseg (auto: {precision})": [sys.executable, "-c", _MEDSEG, str(model), str(inputs),
                                                str(tmp / "auto"), "auto", mirror]}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        for _ in range(args.repeats):  # alternating, so a change of load hits all
            for name, cmd in runs.items():
                times[name].append(timed(cmd))
        foreground = [v for v in predictor.plan.labels if v]
        dice = {name: mean_dice(args.task, tmp / folder, ids, foreground, contoured)
                for name, folder in zip(runs, ["nnunet", "fp32", "auto"], strict=True)}
    best = {name: min(values, key=lambda v: v[1]) for name, values in times.items()}
    print(machine_line(load))
    print(f"{args.task}, {len(ids)} cases, patch {predictor.plan.patch_size}, DynUNet/PlainConvUNet "
          f"{predictor.plan.filters[0]}-{predictor.plan.filters[-1]} (same weights), overlap 0.5, "
          f"mirroring {'on' if mirror == '1' else 'off'}, best of {args.repeats} alternating runs")
    print(f"{'path (files in to files out)':28} {'start-up s':>10} {'s per case':>10} {'all runs, s per case':>22} "
          f"{'mean Dice':>9}")
    for name, (startup, cases) in best.items():
        every = ", ".join(f"{c / len(ids):.2f}" for _, c in times[name])
        print(f"{name:28} {startup:10.1f} {cases / len(ids):10.2f} {every:>22} {dice[name]:9.4f}")
    reference = best["nnU-Net v2 (fp32)"][1]
    ratios = {name: reference / cases for name, (_, cases) in best.items() if name.startswith("medseg")}
    gap = max(abs(dice[name] - dice["nnU-Net v2 (fp32)"]) for name in ratios)
    print("per case vs nnU-Net: " + ", ".join(f"{name} {r:.2f}x" for name, r in ratios.items())
          + f" (bar {SPEED_BAR}x each); largest Dice difference {gap:.4f} (bar {DICE_BAR})")
    return 0 if min(ratios.values()) >= SPEED_BAR and gap <= DICE_BAR else 1


if __name__ == "__main__":
    sys.exit(main())
