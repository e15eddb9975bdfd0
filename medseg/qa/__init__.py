"""Quality review: overlay, error and uncertainty figures, flags, the HTML report and a Jupyter slice viewer."""

from medseg.qa.figures import comparison_figure, overlay_figure, uncertainty_figure
from medseg.qa.flags import case_flags
from medseg.qa.report import build_report, review_case
from medseg.qa.viewer import slice_viewer

__all__ = ["overlay_figure", "comparison_figure", "uncertainty_figure", "case_flags", "build_report", "review_case",
           "slice_viewer"]
