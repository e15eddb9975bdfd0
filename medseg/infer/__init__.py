"""Inference: load a model (:class:`Predictor`), find the cases in a folder, DICOM study or manifest, and
segment them in a batch with summaries (``medseg infer``), each output by a writer
(:mod:`medseg.infer.outputs`). The DICOM node (``medseg serve``) is :mod:`medseg.dicomnet`."""

from medseg.infer.predictor import Prediction, Predictor

__all__ = ["Prediction", "Predictor"]
