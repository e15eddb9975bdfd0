"""medseg: segment 3D medical scans (CT, MR) with exact geometry.

The public API is small; everything else is private to its stage package.
"""

from medseg.data import Case, Dataset, check_dataset, load_dataset
from medseg.errors import MedsegError
from medseg.io import read_volume, write_volume
from medseg.types import Volume

__all__ = ["Volume", "MedsegError", "read_volume", "write_volume", "load_dataset", "check_dataset", "Case",
           "Dataset"]
__version__ = "0.1.0"
