"""The model: networks built from a plan, and the model folder (files, checksums, id, export)."""

from medseg.model.folder import ModelFolder, export_model, open_model
from medseg.model.networks import build_network

__all__ = ["ModelFolder", "build_network", "export_model", "open_model"]
