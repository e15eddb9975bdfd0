"""Time to Dice of a ``medseg train`` run from its weight snapshots (``train.snapshot_every``).

Each snapshot (:mod:`medseg.train.snapshots`) goes through the validation path of ``medseg train`` (the inference
path on original grids, the config's own post-processing rules, none chosen on validation, no mirroring) on the
run's validation fold, or its first ``--cases`` cases; then the run's final figure (``validation.json``: the final
weights with the post-processing chosen on the fold) closes the table. For runs whose validation pass does not fit
between epochs (OpenKBP on 2 cores), which therefore have no curve in ``log.jsonl``. No bar: a curve, exit code 0
(1 when the run has no snapshots).

    medseg train data_manifests/openkbp.yaml --config configs/openkbp-cpu-60min.yaml --set train.snapshot_every=6m \
        --out runs/openkbp
    python benchmarks/time_to_dice.py runs/openkbp data_manifests/openkbp.yaml --cases 12
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _machine import machine_line


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path, help="a finished `medseg train` run folder with snapshots/")
    parser.add_argument("dataset", help="the dataset (or manifest) the run was trained on")
    parser.add_argument("--cases", type=int, default=0, help="score the first N cases of the fold (0: all)")
    args = parser.parse_args()
    load = os.getloadavg()[0]

    from medseg.data import load_dataset
    from medseg.model.device import autocast_dtype, precision_for, resolve_device
    from medseg.model.folder import ModelFolder
    from medseg.model.networks import build_network
    from medseg.train.finish import validation_ids
    from medseg.train.snapshots import load_snapshots
    from medseg.train.validation import inference_settings, load_validation, summarise, validate

    snapshots = load_snapshots(args.run)
    if not snapshots:
        print(f"{args.run}: no snapshots (train with --set train.snapshot_every=10m)", file=sys.stderr)
        return 1
    folder = ModelFolder(args.run)
    plan, config = folder.load_plan(), folder.load_config()
    ids = validation_ids(folder.path)
    val_set = load_validation(load_dataset(args.dataset), ids)
    if args.cases:
        val_set = val_set.first(args.cases)
    dev = resolve_device("auto")
    dtype = autocast_dtype(precision_for(plan, config, dev).precision)
    settings = inference_settings(config, plan, mirror=False)
    net = build_network(plan, config.model).to(dev)
    names = plan.foreground_names
    print(machine_line(load))
    print(f"time to Dice, {args.run}: {len(val_set.ids)} of the {len(ids)} validation cases, no mirroring, "
          f"the config's post-processing only, precision {dtype or 'fp32'}")
    print("| epoch | steps | minutes | " + " | ".join(names) + " | mean | s to score |")
    print("| --- " * (len(names) + 5) + "|")
    for snap in snapshots:
        net.load_state_dict(snap["model"])
        t0 = time.perf_counter()
        summary = summarise(validate([net], val_set, plan, settings, dev, dtype), names)
        per_class = " | ".join(f"{summary['per_class'].get(n, float('nan')):.3f}" for n in names)
        print(f"| {snap['epoch']} | {snap['step']} | {snap['elapsed'] / 60:.1f} | {per_class} | "
              f"{summary['mean']:.4f} | {time.perf_counter() - t0:.0f} |", flush=True)
    final = json.loads((args.run / "validation.json").read_text())
    last = [json.loads(line) for line in (args.run / "log.jsonl").read_text().splitlines() if line.strip()][-1]
    print(f"final weights (epoch {last['epoch']}, {last['step']} steps, {last['elapsed'] / 60:.1f} min), the whole "
          f"fold ({len(ids)} cases) with the post-processing chosen on it: mean {final['mean']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
