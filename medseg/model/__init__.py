"""Network factory over MONAI networks."""

from medseg.model.networks import build_network

__all__ = ["build_network"]
