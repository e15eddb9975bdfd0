"""Paired comparison of two evaluations of the same cases (``medseg evaluate`` outputs of two runs).

"B is better than A" is a claim about the cases both scored: per label, the mean over cases of ``B - A`` with a
bootstrap confidence interval that resamples cases (SciPy's BCa bootstrap of the mean difference), and how many
cases went each way. The ``mean`` row compares, per case, the mean over the labels both scored in that case.
Cases or labels scored by one side only are counted and named, never silently dropped.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from medseg.errors import MedsegError

log = logging.getLogger(__name__)

MEAN_ROW = "mean"


@dataclass(frozen=True)
class PairedDifference:
    """One label's paired comparison (``label == "mean"``: the per-case mean over labels).

    Attributes:
        n: Cases scored by both sides with a finite value.
        mean_a, mean_b: Means over those cases.
        difference: Mean of ``B - A`` (the metric's unit: Dice is unitless, distances are mm).
        low, high: Its confidence interval (nan with fewer than 2 cases).
        b_higher, b_lower: Cases where B's value is above / below A's.
    """

    label: str
    metric: str
    n: int
    mean_a: float
    mean_b: float
    difference: float
    low: float
    high: float
    b_higher: int
    b_lower: int


def read_metrics(folder: Path) -> dict[tuple[str, str], dict]:
    """``(case, label) -> row`` from ``folder/metrics.csv`` or ``folder/evaluation/metrics.csv``.

    Raises:
        MedsegError: when neither exists or a row lacks ``case``/``label``.
    """
    folder = Path(folder)
    path = next((p for p in (folder / "metrics.csv", folder / "evaluation" / "metrics.csv") if p.is_file()), None)
    if path is None:
        raise MedsegError("no metrics.csv here or in evaluation/ (run medseg evaluate first)", folder)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"case", "label"} <= rows[0].keys():
        raise MedsegError("metrics.csv has no case/label columns", path)
    return {(r["case"], r["label"]): r for r in rows}


def paired_differences(a: dict[tuple[str, str], dict], b: dict[tuple[str, str], dict], metric: str = "dice",
                       level: float = 0.95, n_resamples: int = 10_000, seed: int = 0,
                       ) -> tuple[list[PairedDifference], dict[str, list[str]]]:
    """Per label (in A's order) and for the per-case mean: :class:`PairedDifference` of ``metric``.

    Returns:
        The rows, and ``{"only_a": [...], "only_b": [...], "not_finite": [...]}`` naming the ``case/label``
        pairs left out.
    """
    values = {key: (_value(a[key], metric), _value(b[key], metric)) for key in a.keys() & b.keys()}
    left_out = {"only_a": sorted(f"{c}/{lab}" for c, lab in a.keys() - b.keys()),
                "only_b": sorted(f"{c}/{lab}" for c, lab in b.keys() - a.keys()),
                "not_finite": sorted(f"{c}/{lab}" for (c, lab), v in values.items() if not np.isfinite(v).all())}
    values = {key: v for key, v in values.items() if np.isfinite(v).all()}
    rng = np.random.default_rng(seed)
    rows = []
    for label in dict.fromkeys(lab for _, lab in a):
        pairs = np.array([v for (_, lab), v in sorted(values.items()) if lab == label]).reshape(-1, 2)
        rows.append(_paired(label, metric, pairs, level, n_resamples, rng))
    per_case: dict[str, list] = {}
    for (case, _), v in sorted(values.items()):
        per_case.setdefault(case, []).append(v)
    means = np.array([np.mean(v, axis=0) for v in per_case.values()]).reshape(-1, 2)
    rows.append(_paired(MEAN_ROW, metric, means, level, n_resamples, rng))
    return rows, left_out


def _value(row: dict, metric: str) -> float:
    if metric not in row:
        raise MedsegError(f"metrics.csv has no column {metric!r}")
    try:
        return float(row[metric])
    except ValueError:
        return float("nan")


def _paired(label: str, metric: str, pairs: np.ndarray, level: float, n_resamples: int,
            rng: np.random.Generator) -> PairedDifference:
    """``pairs``: ``(n, 2)`` values of A and B for the same cases."""
    diff = pairs[:, 1] - pairs[:, 0]
    low = high = float("nan")
    if len(diff) >= 2 and np.ptp(diff) == 0:
        low = high = float(diff[0])  # every case moved by the same amount: no spread to resample
    elif len(diff) >= 2:
        ci = stats.bootstrap((diff,), np.mean, confidence_level=level, n_resamples=n_resamples,
                             method="BCa", random_state=rng).confidence_interval
        low, high = float(ci.low), float(ci.high)
    return PairedDifference(label, metric, len(diff), _mean(pairs[:, 0]), _mean(pairs[:, 1]), _mean(diff), low, high,
                            int((diff > 0).sum()), int((diff < 0).sum()))


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")


def compare_folders(a: Path, b: Path, metric: str = "dice", level: float = 0.95) -> dict:
    """Read both evaluations and compare them: ``{"rows": [...], "left_out": {...}, "level": level}`` (JSON-ready).

    Raises:
        MedsegError: when an evaluation is missing or the two share no scored case and label.
    """
    rows, left_out = paired_differences(read_metrics(a), read_metrics(b), metric, level)
    if not rows[-1].n:
        raise MedsegError("the two evaluations share no scored case and label", b)
    for side, keys in left_out.items():
        if keys:
            log.warning(f"{len(keys)} case/label pairs left out ({side.replace('_', ' ')}): {', '.join(keys[:5])}"
                        + (" ..." if len(keys) > 5 else ""))
    return {"metric": metric, "level": level, "rows": [asdict(r) for r in rows], "left_out": left_out}


def comparison_markdown(result: dict) -> str:
    """The comparison as a Markdown table, B - A with its interval."""
    pct = f"{100 * result['level']:g} %"
    lines = [f"| label | cases | A | B | B - A | {pct} CI (bootstrap over cases) | B higher / lower |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['label']} | {r['n']} | {r['mean_a']:.4f} | {r['mean_b']:.4f} | {r['difference']:+.4f} "
                     f"| [{r['low']:+.4f}, {r['high']:+.4f}] | {r['b_higher']} / {r['b_lower']} |")
    return f"Paired {result['metric']}: B - A per case.\n\n" + "\n".join(lines) + "\n"
