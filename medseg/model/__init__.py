"""The model: networks built from a plan, the model folder (files, checksums, id, export), device and
precision, distributed context, and the one prediction path that inference and validation share."""

from medseg.model.folder import ModelFolder, export_model, open_model
from medseg.model.networks import build_network, network_key

__all__ = ["ModelFolder", "build_network", "export_model", "network_key", "open_model"]
