"""Train/validation splits: fixed by seed or declared by the dataset, saved beside the model.

Which labelled cases train and validate, in order of precedence:

1. Cases with ``split: test`` (manifest) never do, whatever else is declared.
2. An nnU-Net v2 ``splits_final.json`` in the dataset folder: its folds, as they are.
3. Cases with ``split: val``: one fixed fold; those cases validate, every other labelled case trains
   (``split: train`` says the same as no split). ``--fold`` can then only be 0.
4. A ``fold`` on every labelled case (manifest or MSD ``dataset.json`` entry): fold ``n`` validates on
   the cases with ``fold: n`` and trains on the others.
5. Otherwise ``folds`` seeded folds over the cases, dealt round-robin after a seeded shuffle. With
   ``train.split_group`` (a regular expression; its first group, or the whole match, names the subject)
   cases of one subject stay in one fold, so several lesions or scans of a patient never sit on both
   sides of a split (LIDC: ``^(LIDC-IDRI-\\d+)``); a case id it does not match is its own subject.

Mixing these (folds and ``split: val``, or either with a ``splits_final.json``) is a dataset problem
(:func:`medseg.data.check_dataset` reports it and training refuses the dataset). Whatever the source,
a split naming a case that is not a labelled non-test case is refused, including a ``splits.json``
reused from an earlier run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from medseg.data.dataset import Dataset
from medseg.errors import MedsegError
from medseg.io.atomic import write_text_atomic

Splits = list[dict[str, list[str]]]


def split_cases(dataset: Dataset, folds: int, seed: int, path: Path | None = None,
                group: str | None = None) -> Splits:
    """Train/val splits of the dataset's labelled non-test case ids (see the module docstring).

    An existing ``path`` is reused as is (so a resumed run keeps its split); a new split is saved there.
    ``group`` is ``train.split_group`` (module docstring); it applies to seeded folds only.

    Raises:
        MedsegError: when a split names a test case or a case that is not a labelled case.
    """
    allowed = {c.id for c in dataset.trainable}
    if path is not None and path.exists():
        splits = json.loads(path.read_text())
        _require_trainable(splits, allowed, path)
        return splits
    splits = _declared_splits(dataset) or _seeded_splits(sorted(allowed), folds, seed, group)
    _require_trainable(splits, allowed, path)
    if path is not None:
        write_text_atomic(path, json.dumps(splits, indent=1))
    return splits


def _declared_splits(dataset: Dataset) -> Splits | None:
    """The dataset's own splits (``splits_final.json``, ``split: val`` or folds), None when it has none."""
    if dataset.splits is not None:
        return [{"train": sorted(f["train"]), "val": sorted(f["val"])} for f in dataset.splits]
    cases = dataset.trainable
    if any(c.split == "val" for c in cases):
        return [{"train": sorted(c.id for c in cases if c.split != "val"),
                 "val": sorted(c.id for c in cases if c.split == "val")}]
    if cases and all(c.fold is not None for c in cases):
        assign = {c.id: int(c.fold) for c in cases}  # type: ignore[arg-type]
        return _from_assignment(assign, max(assign.values()) + 1)
    return None


def _seeded_splits(ids: list[str], folds: int, seed: int, group: str | None = None) -> Splits:
    if group is None:
        order = np.random.default_rng(seed).permutation(len(ids))
        return _from_assignment({ids[i]: rank % folds for rank, i in enumerate(order)}, folds)
    subjects: dict[str, list[str]] = {}
    for case_id in ids:
        subjects.setdefault(subject(case_id, group), []).append(case_id)
    names = sorted(subjects)
    sizes, assign = [0] * folds, {}
    for i in np.random.default_rng(seed).permutation(len(names)):  # each subject to the smallest fold so far
        fold = int(np.argmin(sizes))
        sizes[fold] += len(subjects[names[i]])
        assign.update(dict.fromkeys(subjects[names[i]], fold))
    return _from_assignment(assign, folds)


def subject(case_id: str, group: str) -> str:
    """The subject a case belongs to under the ``train.split_group`` pattern (the id itself when unmatched)."""
    match = re.search(group, case_id)
    if match is None:
        return case_id
    return match.group(1) if match.re.groups else match.group(0)


def _from_assignment(assign: dict[str, int], folds: int) -> Splits:
    return [{"train": sorted(k for k, f in assign.items() if f != n),
             "val": sorted(k for k, f in assign.items() if f == n)} for n in range(folds)]


def _require_trainable(splits: Splits, allowed: set[str], where: Path | None) -> None:
    named = {case_id for fold in splits for key in ("train", "val") for case_id in fold[key]}
    if stray := sorted(named - allowed):
        raise MedsegError(f"split uses {len(stray)} test or unlabelled case(s) ({', '.join(stray[:5])}); "
                          "those never train or validate", where)
