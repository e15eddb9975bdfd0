"""Inference: sliding-window prediction (the full `medseg infer` command is a later issue)."""

from medseg.infer.sliding import predict_probabilities, resolve_device

__all__ = ["predict_probabilities", "resolve_device"]
