"""medseg: segment 3D medical scans (CT, MR) with exact geometry.

The public API is small; everything else is private to its stage package. Heavy parts (torch, MONAI) are
imported on first use, so ``import medseg`` and ``medseg --help`` stay fast.
"""

from medseg.data import Case, Dataset, check_dataset, load_dataset
from medseg.errors import MedsegError
from medseg.io import read_volume, write_volume
from medseg.logs import log_to_console
from medseg.types import Volume

__all__ = ["Volume", "MedsegError", "read_volume", "write_volume", "load_dataset", "check_dataset", "Case",
           "Dataset", "log_to_console", "train", "Predictor", "run_batch", "evaluate_folder", "build_report"]
__version__ = "0.1.0"

_LAZY = {
    "train": ("medseg.train", "train"),
    "Predictor": ("medseg.infer.predictor", "Predictor"),
    "run_batch": ("medseg.infer.batch", "run_batch"),
    "evaluate_folder": ("medseg.metrics.evaluate", "evaluate_folder"),
    "build_report": ("medseg.qa.report", "build_report"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'medseg' has no attribute {name!r}")
