"""medseg vs nnU-Net v2's ``nnUNetPredictor``: whole path (files read to files written), same weights.

A medseg hippocampus model (``--model``, or a short run of ``medseg train`` on the real MSD Hippocampus data,
``$MEDSEG_DATA/hippocampus``) is turned into an nnU-Net v2 model folder: its DynUNet's weights are copied into
nnU-Net's ``PlainConvUNet`` of the same topology (same stages, kernels, strides, widths, instance norm, leaky
ReLU; checked to give the same logits), with a plan of the same spacing, patch and z-score normalisation,
reading through ``NibabelIOWithReorient`` so both see the volume in closest-RAS axis order. Both then segment
the same held-out cases (fold 0 validation, read from the shared data through an nnU-Net style folder of
links) with the same window (the plan's patch), overlap 0.5, Gaussian blending and 8-flip mirroring, each in
its own process on the same machine, alternating (``--repeats`` times each, best time kept):

- medseg: ``medseg infer MODEL INPUT OUT`` (precision auto: bf16 where measured faster);
- nnU-Net: ``nnUNetPredictor(tile_step_size=0.5, use_mirroring=True).predict_from_files`` on the CPU (fp32,
  nnU-Net's only CPU precision), 2 preprocessing and 2 export processes.

Dice of each against the ground truth is the mean over cases and foreground labels.
Bar: medseg at least 2x faster, mean Dice within 0.005 of nnU-Net's. Exit code 1 below it.

nnU-Net is not a dependency: ``pip install --no-deps nnunetv2 acvl-utils dynamic-network-architectures
batchgenerators batchgeneratorsv2 threadpoolctl blosc2 numexpr msgpack ndindex httpx pandas seaborn scikit-learn
joblib narwhals`` (plain ``pip install nnunetv2`` would replace the CPU torch with a CUDA build). Without it the
script says so and exits 2.

    python benchmarks/vs_nnunet.py [--model runs/hippocampus] [--cases 20] [--repeats 2]
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
import sys, torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
torch.set_num_threads(int(sys.argv[4]))
p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=torch.device("cpu"),
                    verbose=False, allow_tqdm=False)
p.initialize_from_trained_model_folder(sys.argv[1], use_folds=(0,))
p.predict_from_files(sys.argv[2], sys.argv[3], save_probabilities=False, overwrite=True,
                     num_processes_preprocessing=2, num_processes_segmentation_export=2)
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
    config = {"data_identifier": "medseg", "preprocessor_name": "DefaultPreprocessor", "batch_size": plan.batch_size,
              "patch_size": list(plan.patch_size), "median_image_size_in_voxels": plan.median_shape_resampled,
              "spacing": spacing, "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
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
    plans = {"dataset_name": "Dataset004_Hippocampus", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": spacing,
             "original_median_shape_after_transp": [int(s) for s in plan.median_shape_resampled],
             "image_reader_writer": "NibabelIOWithReorient", "transpose_forward": [2, 1, 0],
             "transpose_backward": [2, 1, 0], "configurations": {"3d_fullres": config},
             "experiment_planner_used": "medseg", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {"0": {"mean": 0.0, "std": 1.0}}}
    dataset = {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 0, "file_ending": ".nii.gz"}
    (out / "fold_0").mkdir(parents=True)
    (out / "plans.json").write_text(json.dumps(plans, indent=1))
    (out / "dataset.json").write_text(json.dumps(dataset, indent=1))
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               out / "fold_0" / "checkpoint_final.pth")
    return out


def held_out_cases(model: Path, count: int) -> list[str]:
    """The first ``count`` fold-0 validation cases of the model's own split."""
    return json.loads((model / "splits.json").read_text())[0]["val"][:count]


def link_inputs(ids: list[str], folder: Path) -> Path:
    """An nnU-Net style input folder (``ID_0000.nii.gz``) of links to the shared data's images."""
    folder.mkdir(parents=True)
    for case in ids:
        (folder / f"{case}_0000.nii.gz").symlink_to(data_dir("hippocampus") / "imagesTr" / f"{case}.nii.gz")
    return folder


def mean_dice(out: Path, ids: list[str], labels: list[int]) -> float:
    """Mean over cases and foreground labels of the Dice between ``out/ID.nii.gz`` and the ground truth."""
    import nibabel as nib

    scores = []
    for case in ids:
        pred = np.asarray(nib.load(out / f"{case}.nii.gz").dataobj)
        truth = np.asarray(nib.load(data_dir("hippocampus") / "labelsTr" / f"{case}.nii.gz").dataobj)
        for v in labels:
            a, b = pred == v, truth == v
            scores.append(2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1))
    return float(np.mean(scores))


def timed(command: list[str]) -> float:
    """Seconds ``command`` took; exits with its last error lines when it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"{command[:4]} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=None, help="a medseg hippocampus model folder")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        print("nnU-Net v2 is not installed (see this script's docstring for the --no-deps install)")
        return 2
    from medseg.infer.predictor import Predictor

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = args.model or train_model(tmp / "medseg_model")
        predictor = Predictor.from_dir(model, device="cpu")
        nnunet = write_nnunet_model(predictor, tmp / "nnunet_model")
        ids = held_out_cases(model, args.cases)
        inputs = link_inputs(ids, tmp / "in")
        runs = {"medseg infer": [sys.executable, "-m", "medseg.cli", "infer", str(model), str(inputs),
                                 str(tmp / "out_medseg"), "--mirror", "--overlap", "0.5", "--overwrite"],
                "nnU-Net v2": [sys.executable, "-c", _NNUNET, str(nnunet), str(inputs), str(tmp / "out_nnunet"),
                               str(threads)]}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):  # alternating, so a change of load hits both
            for name, cmd in runs.items():
                times[name].append(timed(cmd))
        seconds = {name: min(values) for name, values in times.items()}
        foreground = [v for v in predictor.plan.labels if v]
        dice = {"medseg infer": mean_dice(tmp / "out_medseg", ids, foreground),
                "nnU-Net v2": mean_dice(tmp / "out_nnunet", ids, foreground)}
    precision = "fp32" if predictor.dtype is None else str(predictor.dtype).replace("torch.", "")
    print(machine_line(load))
    print(f"hippocampus, {len(ids)} held-out cases, patch {predictor.plan.patch_size}, DynUNet/PlainConvUNet "
          f"{predictor.plan.filters[0]}-{predictor.plan.filters[-1]} (same weights), overlap 0.5, mirroring")
    print(f"{'path (files in to files out)':30} {'precision':>9} {'seconds':>8} {'mean Dice':>9}")
    for name in runs:
        print(f"{name:30} {precision if name == 'medseg infer' else 'fp32':>9} {seconds[name]:8.1f} "
              f"{dice[name]:9.4f}")
    ratio = seconds["nnU-Net v2"] / seconds["medseg infer"]
    gap = abs(dice["medseg infer"] - dice["nnU-Net v2"])
    print(f"medseg {ratio:.2f}x faster (bar {SPEED_BAR}x), Dice difference {gap:.4f} (bar {DICE_BAR})")
    return 0 if ratio >= SPEED_BAR and gap <= DICE_BAR else 1


if __name__ == "__main__":
    sys.exit(main())
