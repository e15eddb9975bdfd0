"""medseg vs a plain MONAI training loop on OpenKBP: same plan, split, patch, batch, lr and wall-clock budget.

For scale: what a MONAI user writes from the tutorials, given what a ``medseg train`` run folder (``RUN_DIR``)
planned (``plan.json``: spacing, patch, batch, strides, kernels, filters, CT normalisation, labels), split
(``splits.json``, fold ``--fold``) and configured (``config.yaml``: lr, optimizer, weight decay, seed, threads):

- data: ``LoadImaged``, ``EnsureChannelFirstd``, ``Orientationd("RAS")``, ``Spacingd`` to the plan's spacing
  (bilinear image, nearest label), optional ``CropForegroundd`` to what is above the CT window's floor
  (``--crop-foreground``), ``ScaleIntensityRanged`` from the plan's CT window to (HU - mean) / std with clipping
  (= clip, then z-score), ``SpatialPadd`` to the patch, all cached in a ``CacheDataset``; then
  ``RandCropByPosNegLabeld`` at the plan's patch (pos=1, neg=2: one third foreground-centred, as nnU-Net),
  ``RandFlipd`` (p=0.5) on the RAS axes of ``--flip-axes`` (default 1,2: no left/right flip, which would swap
  RightParotid and LeftParotid), ``RandScaleIntensityd`` and ``RandShiftIntensityd`` (0.1, p=0.15); a
  ``DataLoader`` with ``train.num_workers`` workers, ``shuffle=True``;
- network: ``monai.networks.nets.DynUNet`` with the plan's strides, kernels and filters, MONAI's defaults
  otherwise (instance norm, leaky ReLU), no deep supervision;
- loss: ``DiceCELoss(to_onehot_y=True, softmax=True)``. Plain: an organ a case did not contour
  (``annotated_labels.json``) is trained as background there. That naivety is the baseline's, on purpose;
- optimiser: the config's (AdamW or SGD) at its lr, poly decay (power 0.9) over the wall-clock budget; fp32, or
  bf16 autocast with ``--precision bf16``;
- budget: the clock starts with the script (loading and caching count); training stops when elapsed time plus
  the final validation's reserve reaches ``--budget``. The reserve is medseg's (``medseg train`` with a time
  budget): the first 4 validation cases timed through the whole validation path before training, scaled to
  all cases by their voxels, x 1.2;
- validation: fold ``--fold``'s validation cases, ``sliding_window_inference`` (plan patch, overlap 0.5,
  Gaussian blending, no mirroring, no post-processing), logits taken back to each case's original grid with
  ``Invertd`` (bilinear), argmax; Dice by ``monai.metrics.compute_dice`` (``ignore_empty=False``) per case and
  only for the labels the case contoured; class means over the cases that scored them, mean over classes.

medseg's figures are its run's ``validation.json`` (its final validation, with its own mirroring and
post-processing settings), recomputed from its per-case scores over the same cases the loop validated; a run
without ``validation.json`` yet is compared through its best epoch in ``log.jsonl`` (no mirroring, all its cases).
Its post-processing was chosen on these same cases, so its Dice before post-processing (``validation.json``'s
raw figure per label) is printed too, and decides the exit code where there is one (the whole fold).

    python benchmarks/monai_loop.py RUN_DIR [--budget 60m] [--fold 0] [--data ../shared/data/openkbp]
        [--out DIR] [--precision fp32|bf16] [--threads N] [--cases N] [--crop-foreground] [--flip-axes 1,2]

``--budget`` defaults to the run's ``train.time_budget``; ``--cases N`` keeps the first N training and N
validation cases (smoke tests only; medseg's figures are then recomputed over those N validation cases).
Writes ``DIR/result.json`` (default: ``RUN_DIR``'s sibling ``<name>-monai-loop``).

Exit code 0 when medseg's mean Dice (before post-processing, where known) is above the loop's, 1 when it is
not, 2 on usage errors (missing run files, bad arguments, labels that are not 0..K-1, a run with no medseg
figures to compare with).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from _machine import data_dir, machine_line


def usage(message: str) -> int:
    print(f"monai_loop.py: {message}", file=sys.stderr)
    return 2


def read_run(run: Path) -> tuple[dict, list, dict]:
    """``plan.json``, ``splits.json`` and ``config.yaml`` of a ``medseg train`` run folder."""
    return (json.loads((run / "plan.json").read_text()), json.loads((run / "splits.json").read_text()),
            yaml.safe_load((run / "config.yaml").read_text()) or {})


def transforms(plan: dict, crop_foreground: bool, flip_axes: list[int]):
    """(training transforms, validation transforms: the image preprocessed, the label as read)."""
    from monai import transforms as T

    keys, patch = ["image", "label"], plan["patch_size"]
    norms = plan["normalization"]
    ct = len(norms) == 1 and norms[0]["scheme"] == "ct"
    if ct:
        n = norms[0]
        scale = T.ScaleIntensityRanged("image", n["lower"], n["upper"], (n["lower"] - n["mean"]) / n["std"],
                                       (n["upper"] - n["mean"]) / n["std"], clip=True)
    else:  # not a single CT channel: per-image z-score, as MONAI tutorials do for MR
        scale = T.NormalizeIntensityd("image", nonzero=True, channel_wise=True)
    body = norms[0]["lower"] if ct else 0.0  # CT: crop to what is above the window's floor (air is below it)

    def prep(keys: list[str]) -> list:
        crop = [T.CropForegroundd(keys, "image", select_fn=lambda x: x > body, allow_smaller=True)]
        return [T.Orientationd(keys, axcodes="RAS"),
                T.Spacingd(keys, plan["target_spacing"], mode=("bilinear", "nearest")[:len(keys)]),
                *(crop if crop_foreground else []), scale]

    # CacheDataset caches everything before the first random transform (RandCropByPosNegLabeld)
    train = T.Compose([T.LoadImaged(keys), T.EnsureChannelFirstd(keys), *prep(keys), T.SpatialPadd(keys, patch),
                       T.RandCropByPosNegLabeld(keys, "label", patch, pos=1, neg=2, num_samples=1),
                       *[T.RandFlipd(keys, prob=0.5, spatial_axis=a) for a in flip_axes],
                       T.RandScaleIntensityd("image", factors=0.1, prob=0.15),
                       T.RandShiftIntensityd("image", offsets=0.1, prob=0.15)])
    # validation: the label stays on the original grid; only the image is preprocessed (and later inverted)
    val = T.Compose([T.LoadImaged(keys), T.EnsureChannelFirstd(keys), *prep(["image"])])
    return train, val


def case_lists(data: Path, ids: list[str]) -> list[dict]:
    """``{"id", "image", "label"}`` per case id, from the dataset's ``dataset.json`` (MSD layout)."""
    entries = json.loads((data / "dataset.json").read_text())["training"]
    by_id = {Path(e["image"]).name.removesuffix(".nii.gz"): e for e in entries}
    return [{"id": i, "image": str(data / by_id[i]["image"]), "label": str(data / by_id[i]["label"])} for i in ids]


def dice_by_label(pred: torch.Tensor, truth: torch.Tensor, labels: dict[int, str]) -> dict[str, float]:
    """Dice of each foreground label in ``labels`` (value -> name) of two label maps on one grid."""
    from monai.metrics import compute_dice

    values = sorted(v for v in labels if v != 0)
    if not values:
        return {}
    onehot = [torch.stack([a == v for v in values])[None] for a in (pred, truth)]
    dice = compute_dice(onehot[0], onehot[1], include_background=True, ignore_empty=False)[0]
    return {labels[v]: float(d) for v, d in zip(values, dice.tolist(), strict=True)}


def summarise(cases: dict[str, dict[str, float]], names: list[str]) -> tuple[dict[str, float], float]:
    """Class means over the cases that scored each class, and their mean (as medseg's ``validation.json``)."""
    per_class = {n: float(np.mean(s)) for n in names if (s := [c[n] for c in cases.values() if n in c])}
    return per_class, float(np.mean(list(per_class.values()))) if per_class else 0.0


def medseg_figures(run: Path, ids: list[str], names: list[str]) -> tuple[dict[str, float], float, str] | None:
    """medseg's per-class and mean Dice over ``ids`` (``validation.json``; else its best ``log.jsonl`` epoch)."""
    if (run / "validation.json").exists():
        result = json.loads((run / "validation.json").read_text())
        cases = {i: result["cases"][i] for i in ids if i in result["cases"]}
        if not cases:  # another split: nothing to compare
            return None
        return (*summarise(cases, names), f"validation.json, {len(cases)} cases, mirror {result.get('mirror')}, "
                f"post-processing {result.get('postprocess')}")
    log = run / "log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    records = [r for r in records if "val_mean_dice" in r]  # epochs between sparse validations have none
    if not records:
        return None
    best = max(records, key=lambda r: r["val_mean_dice"])
    return best["val_dice"], best["val_mean_dice"], f"log.jsonl epoch {best['epoch']} (in progress, no mirroring)"


def medseg_before(run: Path, ids: list[str], names: list[str]) -> tuple[dict[str, float], float] | None:
    """medseg's per-class and mean Dice before its post-processing (the raw Dice ``validation.json`` records for
    each label its rules were chosen on), when ``ids`` are all the cases it scored; else None."""
    path = run / "validation.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    choice = result.get("postprocess_choice") or {}
    if sorted(result.get("cases", {})) != sorted(ids) or not all(n in choice for n in names):
        return None
    per_class = {n: float(choice[n]["dice_before"]) for n in names if choice[n]["cases"]}
    return per_class, float(np.mean(list(per_class.values()))) if per_class else 0.0


def time_validation(validate_case, items: list[dict]) -> float:
    """Seconds the final validation will take, x 1.2, timed as ``medseg train`` times its own: the first
    ``TIMING_CASES`` validation cases through the whole validation path (sliding window, inversion, Dice) with the
    network as it is, scaled to all cases by their preprocessed voxels."""
    from medseg.train.schedule import TIMING_CASES

    timed = items[:TIMING_CASES]
    t0 = time.perf_counter()
    for item in timed:
        validate_case(item)
    seconds = time.perf_counter() - t0
    voxels = [math.prod(item["image"].shape[1:]) for item in items]
    return 1.2 * seconds * sum(voxels) / sum(voxels[:len(timed)])


def main() -> int:
    start, load = time.perf_counter(), os.getloadavg()[0]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a medseg train run folder (plan.json, splits.json, config.yaml)")
    parser.add_argument("--budget", default=None, help="wall clock, e.g. 60m (default: the run's time_budget)")
    parser.add_argument("--data", type=Path, default=None, help="OpenKBP in MSD layout (default $MEDSEG_DATA)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the run's, else all)")
    parser.add_argument("--cases", type=int, default=None, help="first N train and N val cases (smoke tests)")
    parser.add_argument("--crop-foreground", action="store_true")
    parser.add_argument("--flip-axes", default="1,2", help="RAS axes RandFlipd flips (0 = left/right); '' none")
    args = parser.parse_args()
    from monai.data import CacheDataset, DataLoader
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import DynUNet
    from monai.transforms import Invertd
    from monai.utils import set_determinism

    from medseg.config import parse_duration
    from medseg.errors import MedsegError

    if not all((args.run / f).exists() for f in ("plan.json", "splits.json", "config.yaml")):
        return usage(f"{args.run} lacks plan.json, splits.json or config.yaml (not a medseg train run folder)")
    plan, splits, config = read_run(args.run)
    tc = config.get("train", {})
    try:
        budget = parse_duration(args.budget or tc.get("time_budget"))
        flip_axes = [int(a) for a in args.flip_axes.split(",") if a.strip()]
    except (MedsegError, ValueError) as exc:
        return usage(str(exc))
    if budget is None or not 0 <= args.fold < len(splits) or any(a not in (0, 1, 2) for a in flip_axes):
        return usage("need a --budget (the run has none), a --fold in the split and --flip-axes among 0,1,2")
    labels = {int(v): name for v, name in plan["labels"].items()}
    if sorted(labels) != list(range(len(labels))):
        return usage(f"labels {sorted(labels)} are not 0..K-1 (DiceCELoss(to_onehot_y=True) needs class indices)")
    names = [labels[v] for v in sorted(labels) if v != 0]
    data = args.data or data_dir("openkbp")
    annotated_path = data / "annotated_labels.json"
    annotated = json.loads(annotated_path.read_text()) if annotated_path.exists() else {}
    train_ids, val_ids = splits[args.fold]["train"][:args.cases], splits[args.fold]["val"][:args.cases]
    if args.threads or tc.get("threads"):
        torch.set_num_threads(int(args.threads or tc["threads"]))
    seed = int(tc.get("seed", 0))
    set_determinism(seed=seed)
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    if not train_ids or not val_ids:
        return usage(f"fold {args.fold} has {len(train_ids)} training and {len(val_ids)} validation cases")
    train_tf, val_tf = transforms(plan, args.crop_foreground, flip_axes)
    train_ds = CacheDataset(case_lists(data, train_ids), train_tf, progress=False)
    val_ds = CacheDataset(case_lists(data, val_ids), val_tf, progress=False)
    workers = int(tc.get("num_workers", 1))
    loader = DataLoader(train_ds, batch_size=plan["batch_size"], shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, drop_last=len(train_ds) >= plan["batch_size"])
    strides, kernels = plan["strides"], plan["kernel_sizes"]
    net = DynUNet(3, len(plan.get("channels", {"0": ""})), len(labels), kernels, strides, strides[1:],
                  filters=plan["filters"], deep_supervision=False)
    lr = float(tc.get("lr", 3e-3))
    decay = float(tc.get("weight_decay", 3e-5))
    optimizer = (torch.optim.SGD(net.parameters(), lr=lr, momentum=0.99, nesterov=True, weight_decay=decay)
                 if tc.get("optimizer") == "sgd" else torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=decay))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    invert = Invertd("pred", val_tf, orig_keys="image", nearest_interp=False)
    overlap, sw_batch = 0.5, int(config.get("infer", {}).get("sw_batch_size", 2))

    def validate_case(item: dict) -> dict[str, float]:
        net.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype or torch.float32, enabled=dtype is not None):
            logits = sliding_window_inference(item["image"][None], plan["patch_size"], sw_batch, net, overlap,
                                              mode="gaussian")[0].float()
        pred = invert({"image": item["image"], "pred": logits})["pred"].argmax(0)
        truth = item["label"][0].round().to(torch.int64)
        if pred.shape != truth.shape:
            raise RuntimeError(f"{item['id']}: prediction {tuple(pred.shape)} vs label {tuple(truth.shape)}")
        contoured = {v: n for v, n in labels.items() if v in annotated.get(item["id"], labels)}
        return dice_by_label(pred.as_tensor(), truth.as_tensor(), contoured)

    reserve = time_validation(validate_case, [val_ds[i] for i in range(len(val_ds))])
    usable = budget - reserve
    print(f"data cached in {time.perf_counter() - start:.0f} s ({len(train_ds)} train, {len(val_ds)} val cases); "
          f"final validation estimated {reserve:.0f} s; training until {max(usable, 0):.0f} s of {budget:.0f} s")

    steps, train_seconds, losses = 0, 0.0, []
    net.train()
    while time.perf_counter() - start < usable:
        for batch in loader:
            progress = (time.perf_counter() - start) / usable
            if progress >= 1.0:
                break
            t1 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr * (1 - progress) ** 0.9
            x, y = batch["image"].as_tensor(), batch["label"].as_tensor()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype or torch.float32, enabled=dtype is not None):
                out = net(x)
            loss = loss_fn(out.float(), y)
            loss.backward()
            optimizer.step()
            steps, train_seconds = steps + 1, train_seconds + time.perf_counter() - t1
            losses.append(loss.item())
    print(f"trained {steps} steps in {time.perf_counter() - start:.0f} s; validating {len(val_ds)} cases")
    v0 = time.perf_counter()
    cases = {item["id"]: validate_case(item) for item in (val_ds[i] for i in range(len(val_ds)))}
    val_seconds, wall = time.perf_counter() - v0, time.perf_counter() - start
    per_class, mean = summarise(cases, names)
    medseg = medseg_figures(args.run, val_ids, names)

    print(machine_line(load))
    print(f"OpenKBP fold {args.fold}, {len(train_ds)} training / {len(val_ds)} validation cases, patch "
          f"{plan['patch_size']}, batch {plan['batch_size']}, spacing {plan['target_spacing']}, DynUNet "
          f"{plan['filters'][0]}-{plan['filters'][-1]}, {type(optimizer).__name__} lr {lr}, precision "
          f"{args.precision}, flips on axes {flip_axes or 'none'}, crop foreground {args.crop_foreground}")
    before = medseg_before(args.run, val_ids, names)
    nan = float("nan")
    print(f"{'label':14} {'MONAI loop':>10} {'medseg raw':>10} {'raw-loop':>8} {'medseg':>8} {'medseg-loop':>11} "
          f"{'cases':>5}")
    for name in names:
        ours, theirs = per_class.get(name, nan), (medseg[0].get(name, nan) if medseg else nan)
        raw = before[0].get(name, nan) if before else nan
        print(f"{name:14} {ours:10.4f} {raw:10.4f} {raw - ours:+8.4f} {theirs:8.4f} {theirs - ours:+11.4f} "
              f"{sum(name in c for c in cases.values()):5d}")
    medseg_mean, raw_mean = (medseg[1] if medseg else nan), (before[1] if before else nan)
    print(f"{'mean':14} {mean:10.4f} {raw_mean:10.4f} {raw_mean - mean:+8.4f} {medseg_mean:8.4f} "
          f"{medseg_mean - mean:+11.4f}")
    print("medseg raw: before its post-processing (rules chosen on these same cases); the verdict uses it"
          if before else "medseg raw: not available (not the whole fold of a finished run); the verdict uses medseg")
    rate = steps / train_seconds if train_seconds else 0.0
    print(f"MONAI loop: {steps} steps, {rate:.3f} steps/s, final loss {np.mean(losses[-20:]) if losses else 0:.4f}, "
          f"validation {val_seconds:.0f} s (estimated {reserve:.0f} s), wall clock {wall:.0f} s of {budget:.0f} s")
    print(f"medseg figures: {medseg[2] if medseg else 'none (no validation.json of these cases, no log.jsonl)'}")
    result = {"run": str(args.run), "fold": args.fold, "budget_s": budget, "wall_s": wall, "steps": steps,
              "steps_per_s": rate, "train_s": train_seconds, "validation_s": val_seconds,
              "validation_estimate_s": reserve, "precision": args.precision, "threads": torch.get_num_threads(),
              "machine": machine_line(load), "flip_axes": flip_axes, "crop_foreground": args.crop_foreground,
              "train_cases": len(train_ds), "loop": {"per_class": per_class, "mean": mean, "cases": cases},
              "medseg": medseg and {"per_class": medseg[0], "mean": medseg[1], "source": medseg[2]},
              "medseg_before_postprocess": before and {"per_class": before[0], "mean": before[1]}}
    out = args.out or args.run.parent / f"{args.run.name}-monai-loop"
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"written {out / 'result.json'}")
    if medseg is None:
        return usage("no medseg figures to compare with (no validation.json scoring these cases, no log.jsonl)")
    return 0 if (raw_mean if before else medseg_mean) > mean else 1


if __name__ == "__main__":
    sys.exit(main())
