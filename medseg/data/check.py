"""Dataset quality check: read every case once and list every problem, not just the first."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medseg.data.dataset import Case, Dataset
from medseg.errors import MedsegError
from medseg.io.geometry import grid_mismatch
from medseg.io.volume_io import non_finite_warning, read_volume


@dataclass(frozen=True)
class Problem:
    """One finding. ``severity`` is ``error`` (blocks training) or ``warning``."""

    severity: str
    case_id: str | None
    message: str
    path: Path | None = None

    @property
    def detail(self) -> str:
        """The finding without its severity: ``case: path: message``."""
        where = f"{self.case_id}: " if self.case_id else ""
        file = f"{self.path}: " if self.path else ""
        return f"{where}{file}{self.message}"

    def __str__(self) -> str:
        return f"{self.severity.upper()} {self.detail}"


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`.

    Attributes:
        label_values: Every value found in the label maps that could be read (declared or not).
    """

    dataset: Dataset
    problems: list[Problem] = field(default_factory=list)
    label_values: set[int] = field(default_factory=set)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One line, followed by one line per foreground label with its count of contoured cases when the
        dataset says which labels each case contoured (``Case.annotated``)."""
        d = self.dataset
        test = sum(c.split == "test" for c in d.labelled)
        line = (f"{d.name} ({d.source}): {len(d.cases)} cases, {len(d.labelled)} labelled"
                f"{f' ({test} test)' if test else ''}, {len(d.channels)} channel(s), "
                f"labels declared {sorted(d.labels)}, found {sorted(self.label_values)}: "
                f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        if not d.partially_annotated:
            return line
        counts = [f"  {d.labels[v]}: contoured in {n} of {len(d.labelled)} cases"
                  for v, n in d.contoured_counts().items()]
        return "\n".join([line, *counts])


def check_dataset(dataset: Dataset, workers: int = 2) -> CheckReport:
    """Check every case of ``dataset``: files, grids, label values, NaNs, ids, splits.

    Args:
        dataset: From :func:`medseg.data.load_dataset`.
        workers: Threads reading cases (decompression releases the GIL).
    """
    report = CheckReport(dataset)
    report.problems += [Problem("error", None, text) for text in dataset.problems]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        checked = pool.map(lambda c: check_case(c, dataset), dataset.cases)
        # disable=None: the bar (on stderr) shows only when stderr is a terminal
        for found, values in tqdm(checked, total=len(dataset.cases), desc="checking", unit="case", disable=None):
            report.problems += found
            report.label_values |= values
    unused = sorted(set(dataset.foreground_labels) - report.label_values)
    if unused and report.label_values:
        report.problems.append(Problem("warning", None, f"declared label(s) {unused} found in no label map"))
    return report


def check_case(case: Case, dataset: Dataset) -> tuple[list[Problem], set[int]]:
    """All problems of one case (empty list when it is fine) and the values in its label map."""
    problems: list[Problem] = []

    def err(message: str, path: Path | None = None, severity: str = "error") -> None:
        problems.append(Problem(severity, case.id, message, path))

    reference = None
    channels = 0
    for path in case.images:
        try:
            image = read_volume(path)
        except MedsegError as exc:
            err(exc.problem, path)
            continue
        channels += image.num_channels
        bad = int((~np.isfinite(image.array)).sum())
        for text in image.meta.get("warnings", []):
            if text != non_finite_warning(bad):  # reported once, below, as the error it is for training data
                err(text, path, "warning")
        if bad:
            err(f"{bad} NaN or infinite voxel(s): training data must be finite", path)
        if reference is None:
            reference = image
        elif mismatch := grid_mismatch(reference.spatial_shape, reference.affine, image.spatial_shape, image.affine):
            err(f"channel grid differs from {case.images[0].name}: {'; '.join(mismatch)}", path)
    if channels and dataset.channels and channels != len(dataset.channels):
        err(f"{channels} channel(s) but the dataset declares {len(dataset.channels)}", case.images[0])
    if case.label is None:
        err("no label (the case cannot be used for training)", severity="warning")
        return problems, set()
    try:
        label = read_volume(case.label, label=True)
    except MedsegError as exc:
        err(exc.problem, case.label)
        return problems, set()
    if reference is not None:
        mismatch = grid_mismatch(reference.spatial_shape, reference.affine, label.spatial_shape, label.affine)
        if mismatch:
            err(f"label grid does not match the image: {'; '.join(mismatch)}", case.label)
    values = set(np.unique(label.array).tolist())
    if extra := values - set(dataset.labels):
        err(f"label value(s) {sorted(extra)} not among the declared labels {sorted(dataset.labels)}", case.label)
    elif values <= {0}:
        err("label map is empty (background only)", case.label, "warning")
    if uncontoured := sorted(v for v in values & set(dataset.labels) if not case.contoured(v)):
        err(f"label map holds label value(s) {uncontoured} that the case's annotated list {list(case.annotated)} "
            "does not name as contoured", case.label)
    return problems, {int(v) for v in values}
