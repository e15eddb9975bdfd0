"""Connected-component post-processing of label maps, chosen per label."""

from medseg.postprocess.choose import LabelChoice, choose_rules, describe
from medseg.postprocess.components import ComponentRule, clean_label, postprocess

__all__ = ["ComponentRule", "LabelChoice", "choose_rules", "clean_label", "describe", "postprocess"]
