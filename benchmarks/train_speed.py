"""Training speed: medseg's training steps vs a plain MONAI loop at its best, same network, patches, batch, loss
and precision.

On real data (``--dataset hippocampus`` with ``configs/cpu-30min.yaml``, or ``openkbp`` with
``configs/openkbp-cpu-60min.yaml``: 7 organs, partial annotations), planned and preprocessed by medseg:

- medseg: :func:`medseg.train.loop.train_steps` fed by its real :class:`~medseg.train.loop.BatchStream` (patch
  sampler, augmentation, one DataLoader worker), marginal DiceCE (an organ not contoured in a case is not
  taught as background) with deep supervision where the config has it, gradient clipping; eager and with the
  network under ``torch.compile``;
- MONAI: what a MONAI user writes: a ``CacheDataset`` of the same preprocessed cases, ``RandCropByPosNegLabeld``
  (one third foreground-centred, as medseg samples) then the same augmentation transforms, a DataLoader with one
  worker, ``DiceCELoss(to_onehot_y=True, softmax=True, batch=True)`` over the deep-supervision heads, AdamW;
  eager and with ``torch.compile`` of the network.

All use the same ``build_network`` DynUNet from the same seed and the precision ``train.precision: auto`` chooses on
this machine (bf16 autocast where measured faster). After warm-up steps (compilation included), the loops run in
rounds (every loop ``--steps`` steps per round, in turn), so a change of load hits all of them; the per-round
ratio of medseg's faster loop to MONAI's faster loop is printed as a median and IQR. Bar (issue 21): that median at
least 1.2x on hippocampus, 1.0x on OpenKBP. Exit code 1 below it.

    python benchmarks/train_speed.py [--dataset openkbp] [--steps 10] [--rounds 10] [--cases 40] [--run RUN]

``--run`` also prints the time-to-Dice curve of a finished ``medseg train`` run (its ``log.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from _machine import ROOT, data_dir, machine_line

BARS = {"hippocampus": 1.2, "openkbp": 1.0}
CONFIGS = {"hippocampus": "cpu-30min.yaml", "openkbp": "openkbp-cpu-60min.yaml"}


def prepare(config, cases: int, tmp: Path, name: str = "hippocampus"):
    """Plan and the first ``cases`` training cases of fold 0 (``(images, labels, contoured)``), planned and
    preprocessed as ``medseg train`` does with ``config``."""
    from medseg.data import load_dataset
    from medseg.train.data import load_or_plan, prepare_cases
    from medseg.train.splits import split_cases

    dataset = load_dataset(data_dir(name))
    plan, _ = load_or_plan(dataset, config, tmp)
    ids = split_cases(dataset, config.train.folds, config.train.seed, tmp / "splits.json")[0]["train"][:cases]
    return plan, prepare_cases(dataset, ids, plan, tmp / "cache")


def medseg_loop(config, plan, data, device, dtype, compiled: bool = False):
    """The network and a function running ``n`` of medseg's training steps on it (its own batch stream, loss,
    step function and, for fp16 on CUDA, gradient scaler, as ``medseg train`` sets them up); the function
    returns the seconds they took."""
    from medseg.model import build_network
    from medseg.train.augment import source_size
    from medseg.train.loop import BatchStream, train_steps
    from medseg.train.losses import training_loss
    from medseg.train.sampling import PatchSampler

    tc = config.train
    torch.manual_seed(tc.seed)
    net = build_network(plan, config.model).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    loss_fn = training_loss(tc.dice_weight, tc.ce_weight, tc.batch_dice, tc.min_steps)  # as a long run has it
    images, labels, contoured = data
    sampler = PatchSampler(images, labels, plan.patch_size, list(range(1, len(plan.labels))),
                           tc.foreground_fraction, tc.seed, contoured, source_size(plan.patch_size, config.augment))
    stream = BatchStream(sampler, config.augment, plan.batch_size, tc.seed, plan.mirror_axes, plan.patch_size)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=tc.num_workers,
                                         persistent_workers=tc.num_workers > 0)
    batches = iter(loader)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 and device.type == "cuda" else None
    model = torch.compile(net) if compiled else net
    return net, lambda n: train_steps(model, batches, optimizer, loss_fn, device, dtype, n, scaler)["seconds"]


def monai_loop(config, plan, data, device, dtype, compiled: bool = False):
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
    model = torch.compile(net) if compiled else net

    def run(n: int) -> float:
        net.train()
        start = time.perf_counter()
        for _ in range(n):
            batch = next(batches)
            x, y = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, dtype):
                out = model(x)
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
    parser.add_argument("--dataset", choices=sorted(CONFIGS), default="hippocampus")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per loop per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per loop first (compilation included)")
    parser.add_argument("--cases", type=int, default=40, help="training cases to preprocess and sample from")
    parser.add_argument("--run", type=Path, default=None, help="a finished run: print its time to Dice")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    import numpy as np

    from medseg.config import load_config
    from medseg.model.device import autocast_dtype, precision_for

    device = torch.device("cpu")
    config = load_config(ROOT / "configs" / CONFIGS[args.dataset])
    with tempfile.TemporaryDirectory() as tmp_name:
        plan, data = prepare(config, args.cases, Path(tmp_name), args.dataset)
    choice = precision_for(plan, config, device)
    dtype = autocast_dtype(choice.precision)
    loops = {}
    for compiled in (False, True):
        tag = ", torch.compile" if compiled else ""
        loops[f"medseg train_steps{tag}"] = medseg_loop(config, plan, data, device, dtype, compiled)[1]
        loops[f"MONAI loop{tag}"] = monai_loop(config, plan, data, device, dtype, compiled)
    warm = {}
    for name, run in loops.items():
        start = time.perf_counter()
        try:
            run(args.warmup)
        except Exception as exc:  # noqa: BLE001 - a loop torch.compile cannot build is left out, with the reason
            print(f"{name} left out: {str(exc).splitlines()[0][:200]}")
            continue
        warm[name] = time.perf_counter() - start
    loops = {name: run for name, run in loops.items() if name in warm}
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(args.rounds):
        for name, run in loops.items():
            seconds[name].append(run(args.steps) / args.steps)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{v[-1]:.3f}" for v in seconds.values()), flush=True)
    median = {name: float(np.median(v)) for name, v in seconds.items()}
    ours = min((n for n in median if n.startswith("medseg")), key=median.get)
    anchor = min((n for n in median if n.startswith("MONAI")), key=median.get)
    ratios = np.array(seconds[anchor]) / np.array(seconds[ours])
    print(machine_line(load))
    print(f"{args.dataset}, {len(data[0])} training cases, patch {plan.patch_size}, batch {plan.batch_size}, DynUNet "
          f"{plan.filters[0]}-{plan.filters[-1]}, deep supervision {config.model.deep_supervision}, precision auto "
          f"-> {choice.precision}, {args.rounds} rounds of {args.steps} steps")
    print(f"{'loop':34} {'s/step median':>13} {'IQR':>13} {'steps/s':>8} {'warm-up s':>9}")
    for name, values in seconds.items():
        q1, q3 = np.percentile(values, [25, 75])
        print(f"{name:34} {median[name]:13.3f} {q1:6.3f}-{q3:6.3f} {1 / median[name]:8.3f} {warm[name]:9.1f}")
    q1, med, q3 = np.percentile(ratios, [25, 50, 75])
    bar = BARS[args.dataset]
    print(f"{ours} / {anchor}, steps per second per round: median {med:.3f}x (IQR {q1:.3f}-{q3:.3f}); bar {bar}x")
    if args.run:
        time_to_dice(args.run)
    return 0 if med >= bar else 1


if __name__ == "__main__":
    sys.exit(main())
