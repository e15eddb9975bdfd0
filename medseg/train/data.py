"""Training data: refuse bad datasets, plan once per run folder, preprocess with an on-disk cache."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medseg.config import RunConfig
from medseg.data.dataset import Dataset
from medseg.errors import MedsegError
from medseg.io.atomic import write_bytes_atomic, write_text_atomic


def refuse_bad_dataset(dataset: Dataset, echo: Callable[[str], None]) -> None:
    """Run ``medseg check``; print every error and refuse to train when there is any."""
    from medseg.data.check import check_dataset

    report = check_dataset(dataset)
    if not report.ok:
        for problem in report.errors:
            echo(str(problem))
        raise MedsegError(f"dataset has {len(report.errors)} error(s) (listed above); training not started",
                          dataset.root)
    if not dataset.labelled:
        raise MedsegError("dataset has no labelled cases", dataset.root)


def load_or_plan(dataset: Dataset, config: RunConfig, out: Path, echo) -> tuple[dict, dict]:
    """Plan and fingerprint of the run folder, computed and saved on the first call."""
    from medseg.preprocess import fingerprint, make_plan

    plan_path, fp_path = out / "plan.json", out / "fingerprint.json"
    if plan_path.exists() and fp_path.exists():
        return _int_labels(json.loads(plan_path.read_text())), json.loads(fp_path.read_text())
    fp = fingerprint(dataset)
    plan = make_plan(fp, dataset.channels, dataset.labels, config)
    write_text_atomic(fp_path, json.dumps(fp, indent=1))
    write_text_atomic(plan_path, json.dumps(plan, indent=1))
    echo(f"plan: spacing {plan['target_spacing']} mm, patch {plan['patch_size']}, batch {plan['batch_size']}, "
         f"{len(plan['strides'])} levels, separate-z axis {plan['separate_z_axis']}")
    return _int_labels(plan), fp


def load_plan(path: Path) -> dict:
    return _int_labels(json.loads(Path(path).read_text()))


def _int_labels(plan: dict) -> dict:
    plan["labels"] = {int(k): v for k, v in plan["labels"].items()}
    plan["channels"] = {int(k): v for k, v in plan["channels"].items()}
    return plan


def prepare_cases(dataset: Dataset, ids, plan: dict, cache: Path, echo) -> tuple[list, list]:
    """Preprocessed ``(images, labels)`` for ``ids``, from ``cache`` when already done."""
    from medseg.preprocess import preprocess
    from medseg.preprocess.io import load_case

    by_id = {c.id: c for c in dataset.cases}
    images, labels = [], []
    for case_id in ids:
        path = cache / f"{case_id}.npz"
        if path.exists():
            with np.load(path) as data:
                images.append(data["image"])
                labels.append(data["label"])
            continue
        image, label = load_case(by_id[case_id])
        data, lab, _ = preprocess(image, label, plan)
        buffer = io.BytesIO()
        np.savez(buffer, image=data, label=lab)
        write_bytes_atomic(path, buffer.getvalue())
        images.append(data)
        labels.append(lab)
    return images, labels
