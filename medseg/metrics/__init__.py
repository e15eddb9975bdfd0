"""Segmentation metrics."""

from medseg.metrics.overlap import dice_per_class

__all__ = ["dice_per_class"]
