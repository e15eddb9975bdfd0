"""Fingerprint, plan, crop, resample and normalise; every step recorded in a Trace for inversion."""

from medseg.preprocess.fingerprint import fingerprint
from medseg.preprocess.pipeline import Trace, preprocess, restore_labels, restore_probabilities
from medseg.preprocess.plan import make_plan

__all__ = ["fingerprint", "make_plan", "preprocess", "restore_labels", "restore_probabilities", "Trace"]
