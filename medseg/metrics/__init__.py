"""Segmentation metrics in mm: overlap, surface distances, lesion-wise detection, and case evaluation."""

from medseg.metrics.compare import compare_folders
from medseg.metrics.evaluate import evaluate_case, evaluate_folder
from medseg.metrics.lesions import lesion_detection
from medseg.metrics.overlap import dice, dice_per_class, iou, volume_mm3
from medseg.metrics.surface import surface_metrics

__all__ = ["dice", "dice_per_class", "iou", "volume_mm3", "surface_metrics", "lesion_detection", "evaluate_case",
           "evaluate_folder", "compare_folders"]
