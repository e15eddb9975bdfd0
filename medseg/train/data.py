"""Training data: refuse bad datasets, plan once per run folder, preprocess with an on-disk cache.

Label maps are cached as *class indices*: label value ``sorted(plan.labels)[i]`` becomes ``i``, so the
network's ``K`` output channels, the loss, patch sampling and validation all work on ``0..K-1`` whatever
the label values are (``0, 5, 7`` trains as ``0, 1, 2``). Inference maps indices back to values
(:func:`medseg.preprocess.restore_labels`). For labels ``0..K-1`` indices and values are the same.
Next to each label map the cache keeps which class indices the case contoured (``Case.annotated``), the
mask the patch sampler hands to the marginal loss (:mod:`medseg.train.losses`) with every patch.
Test cases (``split: test``) are left out of planning as well as training.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from medseg.config import RunConfig
from medseg.data.check import check_dataset
from medseg.data.dataset import Case, Dataset
from medseg.errors import MedsegError
from medseg.io.atomic import write_bytes_atomic, write_text_atomic
from medseg.preprocess import fingerprint, preprocess
from medseg.preprocess.io import load_case
from medseg.preprocess.plan import Plan
from medseg.train.budget import plan_for_budget

log = logging.getLogger(__name__)


def refuse_bad_dataset(dataset: Dataset) -> None:
    """Run ``medseg check``; print every error and refuse to train when there is any."""
    report = check_dataset(dataset)
    if not report.ok:
        for problem in report.errors:
            log.error(problem.detail)
        raise MedsegError(f"dataset has {len(report.errors)} error(s) (listed above); training not started",
                          dataset.root)
    if not dataset.trainable:
        raise MedsegError("dataset has no labelled cases to train on (test cases are never trained on)",
                          dataset.root)


def load_or_plan(dataset: Dataset, config: RunConfig, out: Path, device: torch.device | None = None,
                 seconds_left: float | None = None) -> tuple[Plan, dict]:
    """Plan and fingerprint of the run folder, computed (without test cases) and saved on the first call.

    With ``seconds_left`` (what remains of ``train.time_budget``) on a CPU the plan is chosen to fit the
    budget (:mod:`medseg.train.budget`); the candidates and the reason are logged.
    """
    plan_path, fp_path = out / "plan.json", out / "fingerprint.json"
    if plan_path.exists() and fp_path.exists():
        return Plan.read(plan_path), json.loads(fp_path.read_text())
    fp = fingerprint(dataset.without_test())
    choice = plan_for_budget(fp, dataset.channels, dataset.labels, config, device or torch.device("cpu"),
                             seconds_left)
    for candidate in choice.candidates:
        log.info(f"  candidate: {candidate.line()}")
    log.info(f"plan chosen: {choice.reason}")
    plan = choice.plan
    write_text_atomic(fp_path, json.dumps(fp, indent=1))
    plan.write(plan_path)
    lateral = ", ".join(str(a) for a in range(3) if a not in plan.mirror_axes)
    log.info(f"plan: spacing {plan.target_spacing} mm, patch {plan.patch_size}, batch {plan.batch_size}, "
             f"{len(plan.strides)} levels, separate-z axis {plan.separate_z_axis}, mirroring axes {plan.mirror_axes}"
             + (f" (left/right labels along axis {lateral})" if lateral else ""))
    return plan, fp


def prepare_cases(dataset: Dataset, ids, plan: Plan, cache: Path) -> tuple[list, list, list]:
    """Preprocessed ``(images, labels, contoured)`` for ``ids``, from ``cache`` when already done.

    Labels are int16 class indices (see the module docstring); ``contoured[i]`` is a ``(K,)`` bool array of
    the class indices case ``i`` contoured (:func:`contoured_classes`). Each cache file records the label
    values its indices stand for and the contoured mask; one that does not match the plan and the dataset
    (or predates indices) is redone.
    """
    by_id = {c.id: c for c in dataset.cases}
    values = np.asarray(sorted(int(v) for v in plan.labels))
    images, labels, masks = [], [], []
    for case_id in tqdm(ids, desc="preprocessing", unit="case", disable=None):  # stderr, TTY only
        path = cache / f"{case_id}.npz"
        contoured = contoured_classes(by_id[case_id], values)
        cached = _read_cache(path, values, contoured)
        if cached is None:
            image, label = load_case(by_id[case_id])
            data, lab, _ = preprocess(image, label, plan)
            cached = data, label_classes(lab, values, by_id[case_id].label)
            buffer = io.BytesIO()
            np.savez(buffer, image=cached[0], label=cached[1], label_values=values, contoured=contoured)
            write_bytes_atomic(path, buffer.getvalue())
        images.append(cached[0])
        labels.append(cached[1])
        masks.append(contoured)
    return images, labels, masks


def contoured_classes(case: Case, values) -> np.ndarray:
    """``(K,)`` bool: whether ``case`` contoured each class index (label ``sorted(values)[i]``); background does."""
    return np.asarray([case.contoured(int(v)) for v in sorted(values)], bool)


def _read_cache(path: Path, values: np.ndarray, contoured: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached image and label when the file matches ``values`` and ``contoured`` (a file written before
    the mask was cached matches a fully contoured case)."""
    if not path.exists():
        return None
    with np.load(path) as data:
        if "label_values" not in data.files or not np.array_equal(data["label_values"], values):
            return None
        cached = data["contoured"] if "contoured" in data.files else np.ones(len(values), bool)
        if not np.array_equal(cached, contoured):
            return None
        return data["image"], data["label"]


def label_classes(label: np.ndarray, values, where: Path | None = None) -> np.ndarray:
    """Label values -> int16 class indices: each value's position in ``sorted(values)``.

    Raises:
        MedsegError: when ``label`` holds a value that is not among ``values``.
    """
    table = np.asarray(sorted(int(v) for v in values))
    index = np.searchsorted(table, label).clip(0, len(table) - 1)
    if not np.array_equal(table[index], label):
        unknown = sorted(set(np.unique(label).tolist()) - set(table.tolist()))
        raise MedsegError(f"label value(s) {unknown} not among the declared labels {table.tolist()}", where)
    return index.astype(np.int16)
