"""Weight snapshots at fixed wall-clock intervals (``train.snapshot_every``), for time-to-Dice curves.

A run whose validation pass does not fit between epochs (a 36-CT OpenKBP fold takes ~4 minutes on 2 cores,
more than the 10 % share validation may take) has no Dice-over-time record in ``log.jsonl``. With
``train.snapshot_every: 10m`` the network's weights (the weight average's, when there is one: what
validation scores) are kept after the first epoch that ends past each multiple of the interval, in
``snapshots/epoch_NNNN.pt`` of the run folder, and ``benchmarks/time_to_dice.py`` scores them afterwards. A
snapshot is the size of ``weights.pt`` (14 MB for OpenKBP's DynUNet 16-128), written between epochs. The files
are training records, not part of the model: they are not checksummed and ``medseg export`` never copies them.

A snapshot is the weights of a run still under way (its learning rate not yet decayed), so the curve shows how
far a run has come at each minute, not what a run given that many minutes would score.
"""

from __future__ import annotations

from pathlib import Path

import torch

from medseg.train.checkpoint import load_checkpoint, save_checkpoint

FOLDER = "snapshots"


def snapshot_due(elapsed: float, epoch_seconds: float, every: float | None) -> bool:
    """Whether the epoch that ended at ``elapsed`` s of the run (after ``epoch_seconds`` s) crossed a multiple
    of ``every`` s (None: snapshots off)."""
    if not every:
        return False
    return int(elapsed // every) > int(max(elapsed - epoch_seconds, 0.0) // every)


def save_snapshot(run: Path, net: torch.nn.Module, epoch: int, step: int, elapsed: float) -> Path:
    """``snapshots/epoch_NNNN.pt`` in ``run``: ``{"model": state dict, "epoch", "step", "elapsed"}`` (elapsed in
    seconds of the run's wall clock, planning and preprocessing included), written atomically."""
    path = run / FOLDER / f"epoch_{epoch:04d}.pt"
    path.parent.mkdir(exist_ok=True)
    save_checkpoint(path, {"model": net.state_dict(), "epoch": int(epoch), "step": int(step),
                           "elapsed": float(elapsed)})
    return path


def load_snapshots(run: Path) -> list[dict]:
    """The run's snapshots in epoch order, each as saved (loaded ``weights_only``)."""
    return [load_checkpoint(p) for p in sorted((Path(run) / FOLDER).glob("epoch_*.pt"))]
