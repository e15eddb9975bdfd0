"""What every benchmark prints and needs: the machine it ran on and where the real data is."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine_line(load: float) -> str:
    """CPU model, torch threads and ``load`` (the 1-minute load average read before the benchmark started, so
    it counts the other work on the machine, not the benchmark itself), for the head of every table."""
    import torch

    from medseg.model.device import cpu_model

    return (f"CPU {cpu_model()} ({os.cpu_count()} cores), torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, load before the run {load:.2f}")


def data_dir(sub: str) -> Path:
    """``$MEDSEG_DATA/sub`` (default ``../shared/data/sub`` beside the project); exits with a message when absent."""
    path = Path(os.environ.get("MEDSEG_DATA", ROOT.parent / "shared" / "data")) / sub
    if not path.is_dir():
        sys.exit(f"real data not found at {path} (set MEDSEG_DATA to the shared data folder)")
    return path
