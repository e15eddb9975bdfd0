"""Connected-component post-processing of label maps, chosen per label."""

from medseg.postprocess.components import ComponentRule, clean_label, postprocess

__all__ = ["ComponentRule", "clean_label", "postprocess"]
