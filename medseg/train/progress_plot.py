"""``progress.png`` in the run folder: loss, validation Dice per class and learning rate against epoch,
redrawn from ``log.jsonl`` after every epoch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from medseg.io.atomic import atomic_path

log = logging.getLogger(__name__)


def read_log(log_path: str | Path) -> list[dict]:
    """The epoch records of a ``log.jsonl`` (one JSON object per line; blank lines skipped)."""
    return [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]


def write_progress_png(log_path: str | Path, out_png: str | Path) -> Path:
    """Draw the training curves of ``log_path`` to ``out_png`` (written atomically).

    Three panels against epoch: training loss; validation Dice per class with their mean (dashed);
    learning rate.
    """
    # imported here: matplotlib takes a second to import, and `medseg plan` and `medseg tune-postprocess` load this
    # module (through medseg.train) without drawing. Agg canvas, no pyplot state: safe in any process.
    from matplotlib.figure import Figure

    records = read_log(log_path)
    epochs = [r["epoch"] for r in records]
    classes = list(dict.fromkeys(name for r in records for name in r.get("val_dice", {})))
    fig = Figure(figsize=(12, 3.6), dpi=80, layout="constrained")
    loss, dice, lr = fig.subplots(1, 3)
    loss.plot(epochs, [r["loss"] for r in records], marker=".", color="#4363d8")
    loss.set(title="training loss", xlabel="epoch")
    for name in classes:
        dice.plot(epochs, [r.get("val_dice", {}).get(name, float("nan")) for r in records], marker=".", label=name)
    dice.plot(epochs, [r.get("val_mean_dice", float("nan")) for r in records], "k--", label="mean")
    dice.set(title="validation Dice", xlabel="epoch", ylim=(0.0, 1.0))
    dice.legend(fontsize=7, loc="lower right", ncol=1 if len(classes) < 12 else 3)
    lr.plot(epochs, [r["lr"] for r in records], marker=".", color="#3cb44b")
    lr.set(title="learning rate", xlabel="epoch")
    if records:
        fig.suptitle(f"epoch {epochs[-1]}, step {records[-1]['step']}, {records[-1]['elapsed'] / 60:.1f} min",
                     fontsize=9)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    return Path(out_png)


def update_progress_png(log_path: str | Path, out_png: str | Path) -> None:
    """:func:`write_progress_png`, but a failure only logs a warning: a picture never stops training."""
    try:
        write_progress_png(log_path, out_png)
    except Exception as exc:  # any plotting failure (fonts, disk, a bad record) is only a warning
        log.warning("progress.png not updated: %s", exc)
