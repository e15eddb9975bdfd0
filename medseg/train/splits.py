"""Cross-validation splits: fixed by seed, saved beside the model, manifest folds respected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.data.dataset import Dataset
from medseg.io.atomic import write_text_atomic


def split_cases(dataset: Dataset, folds: int, seed: int, path: Path | None = None) -> list[dict[str, list[str]]]:
    """``folds`` train/val splits of the labelled case ids.

    Uses the manifest's ``fold`` values when every labelled case has one; otherwise a seeded shuffle
    dealt round-robin. An existing ``path`` is reused as is (so a resumed run keeps its split).
    """
    if path is not None and path.exists():
        return json.loads(path.read_text())
    cases = dataset.labelled
    if cases and all(c.fold is not None for c in cases):
        assign = {c.id: int(c.fold) for c in cases}  # type: ignore[arg-type]
        folds = max(assign.values()) + 1
    else:
        ids = sorted(c.id for c in cases)
        order = np.random.default_rng(seed).permutation(len(ids))
        assign = {ids[i]: rank % folds for rank, i in enumerate(order)}
    splits = [{"train": sorted(k for k, f in assign.items() if f != n), "val": sorted(k for k, f in assign.items()
               if f == n)} for n in range(folds)]
    if path is not None:
        write_text_atomic(path, json.dumps(splits, indent=1))
    return splits
