"""Datasets (MSD, nnU-Net v2, medseg manifests) and their quality check."""

from medseg.data.check import CheckReport, check_dataset
from medseg.data.dataset import Case, Dataset, load_dataset

__all__ = ["Case", "Dataset", "load_dataset", "check_dataset", "CheckReport"]
