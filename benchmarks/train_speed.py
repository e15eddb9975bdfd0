"""Training speed: medseg's training steps vs a plain MONAI loop, same network, patches, batch, loss and precision.

On the real MSD Hippocampus data (``$MEDSEG_DATA/hippocampus``, default ``../shared/data/hippocampus``), planned
and preprocessed by medseg with the 30-minute CPU config (DynUNet 16-128, the plan's patch and batch):

- medseg: :func:`medseg.train.loop.train_steps` fed by its real :class:`~medseg.train.loop.BatchStream` (patch
  sampler, augmentation, one DataLoader worker), marginal DiceCE with deep supervision, gradient clipping;
- MONAI: what a MONAI user writes: a ``CacheDataset`` of the same preprocessed cases, ``RandCropByPosNegLabeld``
  (one third foreground-centred, as medseg samples) then the same augmentation transforms, a DataLoader with one
  worker, ``DiceCELoss(to_onehot_y=True, softmax=True, batch=True)`` over the deep-supervision heads, AdamW.

Both use the same ``build_network`` DynUNet from the same seed and the precision ``train.precision: auto``
chooses on this machine. The two loops alternate in rounds (after untimed warm-up steps), so a change of load on
a shared machine hits both. Bar: medseg at least 0.95x the MONAI loop's steps per second. Exit code 1 below it.

    python benchmarks/train_speed.py [--steps 20] [--rounds 3] [--cases 40] [--run runs/hippocampus]

``--run`` also prints the time-to-Dice curve of a finished ``medseg train`` run (its ``log.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from _machine import ROOT, data_dir, machine_line

BAR = 0.95


def prepare(config, cases: int, tmp: Path):
    """Plan and the first ``cases`` training cases of fold 0 (``(images, labels, contoured)``), planned and
    preprocessed as ``medseg train`` does with ``config``."""
    from medseg.data import load_dataset
    from medseg.train.data import load_or_plan, prepare_cases
    from medseg.train.splits import split_cases

    dataset = load_dataset(data_dir("hippocampus"))
    plan, _ = load_or_plan(dataset, config, tmp)
    ids = split_cases(dataset, config.train.folds, config.train.seed, tmp / "splits.json")[0]["train"][:cases]
    return plan, prepare_cases(dataset, ids, plan, tmp / "cache")


def medseg_loop(config, plan, data, device, dtype):
    """The network and a function running ``n`` of medseg's training steps on it (its own batch stream, loss,
    step function and, for fp16 on CUDA, gradient scaler, as ``medseg train`` sets them up); the function
    returns the seconds they took."""
    from medseg.model import build_network
    from medseg.train.loop import BatchStream, train_steps
    from medseg.train.losses import marginal_dice_ce
    from medseg.train.sampling import PatchSampler

    tc = config.train
    torch.manual_seed(tc.seed)
    net = build_network(plan, config.model).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    loss_fn = partial(marginal_dice_ce, lambda_dice=tc.dice_weight, lambda_ce=tc.ce_weight)
    images, labels, contoured = data
    sampler = PatchSampler(images, labels, plan.patch_size, list(range(1, len(plan.labels))),
                           tc.foreground_fraction, tc.seed, contoured)
    stream = BatchStream(sampler, config.augment, plan.batch_size, tc.seed, plan.mirror_axes)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=tc.num_workers,
                                         persistent_workers=tc.num_workers > 0)
    batches = iter(loader)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 and device.type == "cuda" else None
    return net, lambda n: train_steps(net, batches, optimizer, loss_fn, device, dtype, n, scaler)["seconds"]


def monai_loop(config, plan, data, device, dtype):
    """A function running ``n`` steps of a plain MONAI training loop on the same cases, network and precision."""
    from monai import transforms as T
    from monai.data import CacheDataset, DataLoader, set_track_meta
    from monai.losses import DiceCELoss

    from medseg.model import build_network
    from medseg.model.device import autocast
    from medseg.train.augment import build_augmentation

    set_track_meta(False)  # plain tensors, as medseg's stream gives: no MetaTensor overhead in the network
    tc = config.train
    torch.manual_seed(tc.seed)
    net = build_network(plan, config.model).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    images, labels, _ = data
    items = [{"image": img, "label": lab[None].astype("float32")} for img, lab in zip(images, labels, strict=True)]
    crop = T.Compose([T.SpatialPadd(["image", "label"], plan.patch_size),
                      T.RandCropByPosNegLabeld(["image", "label"], "label", plan.patch_size, pos=1, neg=2,
                                               num_samples=1)])
    dataset = CacheDataset(items, T.Compose([crop, build_augmentation(config.augment, tc.seed)]), progress=False)
    loader = DataLoader(dataset, batch_size=plan.batch_size, shuffle=True, num_workers=tc.num_workers,
                        persistent_workers=tc.num_workers > 0)

    def endless():
        while True:
            yield from loader

    batches = endless()

    def run(n: int) -> float:
        net.train()
        start = time.perf_counter()
        for _ in range(n):
            batch = next(batches)
            x, y = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, dtype):
                out = net(x)
            heads = torch.unbind(out.float(), 1) if out.dim() == 6 else [out.float()]
            weights = [0.5**i for i in range(len(heads))]
            loss = sum(w * loss_fn(h, y) for w, h in zip(weights, heads, strict=True)) / sum(weights)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start

    return run


def time_to_dice(run: Path) -> None:
    """Print a ``medseg train`` run's validation mean Dice against wall-clock minutes (its ``log.jsonl``)."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in records if "val_mean_dice" in r]  # epochs between sparse validations have none
    print(f"time to Dice, {run} (held-out fold, no mirroring)")
    print(f"{'epoch':>5} {'minutes':>8} {'mean Dice':>9} {'best so far':>11}")
    best = -1.0
    for r in records:
        best = max(best, r["val_mean_dice"])
        print(f"{r['epoch']:5d} {r['elapsed'] / 60:8.1f} {r['val_mean_dice']:9.4f} {best:11.4f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loop per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cases", type=int, default=40, help="training cases to preprocess and sample from")
    parser.add_argument("--run", type=Path, default=None, help="a finished hippocampus run: print its time to Dice")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    from medseg.config import load_config
    from medseg.model.device import autocast_dtype, precision_for

    device = torch.device("cpu")
    config = load_config(ROOT / "configs" / "cpu-30min.yaml")
    with tempfile.TemporaryDirectory() as tmp_name:
        plan, data = prepare(config, args.cases, Path(tmp_name))
    choice = precision_for(plan, config, device)
    dtype = autocast_dtype(choice.precision)
    loops = {"medseg train_steps": medseg_loop(config, plan, data, device, dtype)[1],
             "plain MONAI loop": monai_loop(config, plan, data, device, dtype)}
    seconds = dict.fromkeys(loops, 0.0)
    for run in loops.values():
        run(args.warmup)
    for _ in range(args.rounds):
        for name, run in loops.items():
            seconds[name] += run(args.steps)
    steps = args.steps * args.rounds
    print(machine_line(load))
    print(f"hippocampus, {len(data[0])} training cases, patch {plan.patch_size}, batch {plan.batch_size}, DynUNet "
          f"{plan.filters[0]}-{plan.filters[-1]}, precision auto -> {choice.precision}, {steps} steps each")
    print(f"{'loop':20} {'steps/s':>8} {'s/step':>7}")
    for name, total in seconds.items():
        print(f"{name:20} {steps / total:8.3f} {total / steps:7.3f}")
    ratio = seconds["plain MONAI loop"] / seconds["medseg train_steps"]
    print(f"medseg / MONAI steps per second: {ratio:.3f}x (bar: {BAR}x)")
    if args.run:
        time_to_dice(args.run)
    return 0 if ratio >= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
