"""What the QA flags and the predicted quality are worth: hit rates on a model's validation fold and on
deliberately out-of-distribution versions of the same scans.

For every validation case of RUN (its ``splits.json``, fold 0) the model segments the scan as it is and four
altered copies: mirrored along the first array axis (left-right for the shared CT and MR), the middle third of
the slices only (a cropped field of view), heavy Gaussian noise (standard deviation = the scan's own over its
non-zero voxels) and, with ``--other``, a scan of another dataset (no truth: always a failure). Each result
gets the flags `medseg infer` records (input: spacing, field of view, intensity; result: label volume, missing
label), the flags `medseg qa` adds (empty mask, border contact, low confidence) and the predicted quality
(expected Dice from the calibrated probabilities, :mod:`medseg.model.calibration`).

A case **fails** when any label it contoured scores Dice below ``--threshold`` (0.5, stated before looking at
any result) against the equally altered truth. Per flag: how many cases it raised, sensitivity (failures it
caught / failures) and false-alarm rate (non-failures it raised / non-failures); for the predicted quality, the
AUROC of "quality ranks failures first" and Spearman's rho with the case's lowest label Dice.
Prints a markdown table and writes JSON with ``--json``. Exit code 0 (a measurement, not a bar); 2 without
the data.

    python benchmarks/qa_flags.py RUN DATASET [--other DATASET] [--cases N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
from _machine import machine_line
from scipy.stats import mannwhitneyu, spearmanr

from medseg.data import load_dataset
from medseg.infer.plausibility import input_flags, quality_flags, result_flags
from medseg.infer.predictor import Predictor
from medseg.preprocess.io import load_case
from medseg.qa.flags import case_flags
from medseg.train.validation import dice_by_label
from medseg.types import Volume

# Flag kinds, by the start of their text (medseg/infer/plausibility.py and medseg/qa/flags.py).
KINDS = [("spacing", r"^spacing "), ("field of view", r"^field of view "), ("intensity", r"^channel \d+: only "),
         ("label volume", r": volume \d+ mm3 outside"), ("missing label", r": missing \(present in"),
         ("empty mask", r"^empty mask"), ("border contact", r"touches the scan border"),
         ("low confidence", r"^low confidence"), ("low predicted quality", r"^low predicted quality")]
VARIANTS = ("as is", "mirrored", "cropped", "noise", "other dataset")


def variants(image: Volume, truth: Volume, rng: np.random.Generator):
    """``(name, image, truth or None)`` for the scan as it is and its altered copies."""
    yield "as is", image, truth
    yield "mirrored", image.with_array(image.array[..., ::-1, :, :].copy()), \
        truth.with_array(truth.array[::-1].copy())
    z = image.spatial_shape[2]
    keep = slice(z // 3, max(2 * z // 3, z // 3 + 1))
    shift = np.eye(4)
    shift[:3, 3] = image.affine[:3, :3] @ np.array([0, 0, keep.start])
    yield "cropped", Volume(image.array[..., keep].copy(), shift @ image.affine, dict(image.meta)), \
        Volume(truth.array[..., keep].copy(), shift @ truth.affine, dict(truth.meta))
    values = image.array[image.array != 0]
    sigma = float(values.std()) if values.size else 1.0
    noisy = image.array + rng.normal(0.0, sigma, image.array.shape).astype(np.float32)
    yield "noise", image.with_array(noisy.astype(np.float32)), truth


def flag_kinds(flags: list[str]) -> set[str]:
    return {kind for kind, pattern in KINDS for text in flags if re.search(pattern, text)}


def assess(predictor: Predictor, image: Volume, truth: Volume | None, contoured: dict[int, str]) -> dict:
    prediction = predictor.predict(image, probabilities=True)
    label = prediction.label
    flags = input_flags(image, predictor.plan, predictor.fingerprint)
    flags += result_flags(label, predictor.labels, predictor.fingerprint)
    flags += quality_flags(prediction.quality, predictor.labels)
    training = predictor.fingerprint or {}
    flags += case_flags(label.array, label.spacing, predictor.labels, training.get("label_volume_mm3"),
                        prediction.probabilities, training_border=training.get("label_border_fraction"))
    dice = dice_by_label(label.array, truth.array, contoured) if truth is not None else {}
    return {"flags": flags, "kinds": sorted(flag_kinds(flags)), "dice": dice, "quality": prediction.quality}


def table(rows: list[dict], threshold: float) -> tuple[str, dict]:
    failed = np.array([r["failed"] for r in rows])
    n_fail, n_ok = int(failed.sum()), int((~failed).sum())
    lines = [f"{len(rows)} cases, {n_fail} failures (a contoured label with Dice < {threshold}, or another "
             "dataset's scan)", "", "| flag | raised | failures caught | sensitivity | false alarms | "
             "false-alarm rate |", "|---|---|---|---|---|---|"]
    result = {"cases": len(rows), "failures": n_fail, "flags": {}}
    for kind, _ in KINDS:
        raised = np.array([kind in r["kinds"] for r in rows])
        caught, alarms = int((raised & failed).sum()), int((raised & ~failed).sum())
        sens = caught / n_fail if n_fail else float("nan")
        far = alarms / n_ok if n_ok else float("nan")
        result["flags"][kind] = {"raised": int(raised.sum()), "caught": caught, "sensitivity": sens,
                                 "false_alarms": alarms, "false_alarm_rate": far}
        lines.append(f"| {kind} | {int(raised.sum())} | {caught} | {sens:.2f} | {alarms} | {far:.2f} |")
    quality = np.array([r["quality_min"] for r in rows])
    if 0 < n_fail < len(rows):
        u = mannwhitneyu(quality[~failed], quality[failed]).statistic  # high quality should mean no failure
        result["auroc"] = float(u / (n_fail * n_ok))
    scored = [r for r in rows if r["dice_min"] is not None]
    if len(scored) > 2:
        result["spearman"] = float(spearmanr([r["quality_min"] for r in scored],
                                             [r["dice_min"] for r in scored]).statistic)
    lines += ["", f"predicted quality: AUROC for failure {result.get('auroc', float('nan')):.3f}, Spearman rho "
              f"with the lowest label Dice {result.get('spearman', float('nan')):.3f}"]
    return "\n".join(lines), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--other", type=Path, help="another dataset whose scans the model should not be given")
    parser.add_argument("--cases", type=int, default=0, help="at most this many validation cases (0: all)")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    if not args.dataset.exists():
        print(f"dataset not found: {args.dataset}", file=sys.stderr)
        return 2
    predictor = Predictor.from_dir(args.run)
    dataset = load_dataset(args.dataset)
    val = json.loads((args.run / "splits.json").read_text())[0]["val"]
    by_id = {c.id: c for c in dataset.cases}
    val = val[: args.cases] if args.cases else val
    others = [c for c in load_dataset(args.other).cases if c.images][: len(val)] if args.other else []
    rng, rows, t0 = np.random.default_rng(0), [], time.perf_counter()
    for i, case_id in enumerate(val):
        case = by_id[case_id]
        image, truth = load_case(case)
        contoured = {v: n for v, n in predictor.labels.items() if v and case.contoured(v)}
        for name, img, tru in variants(image, truth, rng):
            rows.append({"case": case_id, "variant": name, **assess(predictor, img, tru, contoured)})
        if i < len(others):
            other_image, _ = load_case(others[i])
            rows.append({"case": others[i].id, "variant": "other dataset",
                         **assess(predictor, other_image, None, contoured)})
        print(f"{i + 1}/{len(val)} cases, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    for row in rows:
        row["dice_min"] = min(row["dice"].values()) if row["dice"] else None
        row["failed"] = row["dice_min"] is None or row["dice_min"] < args.threshold
        row["quality_min"] = min(row["quality"].values()) if row["quality"] else 1.0
    print(machine_line(load))
    print(f"model {predictor.model_id} ({args.run}), dataset {args.dataset.name}, temperature "
          f"{predictor.temperature:.3f}")
    text, result = table(rows, args.threshold)
    print(text)
    for variant in VARIANTS:
        part = [r for r in rows if r["variant"] == variant]
        if part:
            print(f"- {variant}: {len(part)} cases, {sum(r['failed'] for r in part)} failures, "
                  f"{sum(bool(r['kinds']) for r in part)} flagged")
    if args.json:
        args.json.write_text(json.dumps({"summary": result, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
