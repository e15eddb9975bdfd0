"""Inference: load a model (:class:`Predictor`), find the cases in a folder, DICOM study or manifest, and
segment them in a batch with summaries (``medseg infer``), or as a DICOM node (``medseg serve``)."""

from medseg.infer.predictor import Prediction, Predictor

__all__ = ["Prediction", "Predictor"]
