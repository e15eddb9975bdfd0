"""Static overlay figures: image and label map on the three planes through the structure.

Planes are shown in radiological display whatever the storage order: the volume is first reoriented
to closest RAS (:mod:`medseg.preprocess.orientation`), then each plane is cut and turned so that the
head (or anterior, on axial planes) is up and the patient's left is on the image's right. Sagittal
planes have anterior on the left. Display arrays have row 0 at the top.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from medseg.preprocess.orientation import canonical_ornt, reorient_array, reoriented_affine
from medseg.qa.errors import centroid, error_masks, largest_error
from medseg.qa.uncertainty import REGION_MM, most_uncertain_point

COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe",
          "#008080"]
# The canonical (closest-RAS) axis each plane holds fixed.
PLANES = {"sagittal": 0, "coronal": 1, "axial": 2}
# Letters at the left and right edges of each display plane.
EDGE_LETTERS = {"sagittal": ("A", "P"), "coronal": ("R", "L"), "axial": ("R", "L")}
# Error marks, distinct from the label colours: name -> (value in the error map, colour).
ERROR_KINDS = {"false positive (predicted, not true)": (1, "#ff2d2d"), "false negative (missed)": (2, "#00d5ff"),
               "wrong label (both)": (3, "#ffe119")}
TRUTH_OUTLINE = "#4dff4d"  # beside the error colours; shows on dark and bright tissue alike
PREDICTION_OUTLINE = "#00e5ff"  # on the uncertainty heat map, whose colours run black-purple-orange-yellow


@dataclass
class DisplayPlane:
    """One plane ready for ``imshow(origin="upper")``.

    Attributes:
        name: ``"sagittal"``, ``"coronal"`` or ``"axial"``.
        index: Slice index along the plane's canonical axis.
        image: 2D intensities ``(rows, columns)``, row 0 at the top.
        label: 2D label values on the same pixels.
        aspect: Pixel height / width (mm / mm) for ``imshow``.
    """

    name: str
    index: int
    image: np.ndarray
    label: np.ndarray
    aspect: float


def label_colors(values) -> dict[int, str]:
    """A stable colour per label value."""
    return {int(v): COLORS[(int(v) - 1) % len(COLORS)] for v in values if int(v) != 0}


def grid_affine(grid) -> np.ndarray:
    """4x4 RAS affine from ``grid``: an affine, or 3 voxel sizes (mm) meaning an RAS-stored grid."""
    grid = np.asarray(grid, float)
    return grid if grid.shape == (4, 4) else np.diag([*grid, 1.0])


def to_display_orientation(arrays, grid) -> tuple[list[np.ndarray], tuple[float, float, float]]:
    """Reorient ``(X, Y, Z)`` arrays on one grid to closest RAS.

    Args:
        arrays: Arrays on the grid (an image, its label map...).
        grid: The grid's 4x4 RAS affine; 3 voxel sizes (mm) are taken as an RAS-stored grid.

    Returns:
        The reoriented arrays and the voxel size (mm) along the canonical axes.
    """
    affine = grid_affine(grid)
    ornt = canonical_ornt(affine)
    shape = np.shape(arrays[0])
    spacing = np.linalg.norm(reoriented_affine(affine, ornt, shape)[:3, :3], axis=0)
    return [reorient_array(np.asarray(a), ornt) for a in arrays], tuple(float(s) for s in spacing)  # type: ignore


def display_slice(array_ras: np.ndarray, plane: str, index: int) -> np.ndarray:
    """2D display plane ``(rows, columns)`` of a closest-RAS ``(X, Y, Z)`` array, row 0 at the top.

    Rows run superior to inferior (anterior to posterior on axial planes); columns run from the
    patient's right to left (anterior to posterior on sagittal planes).
    """
    return np.take(array_ras, index, axis=PLANES[plane]).T[::-1, ::-1]


def display_aspect(spacing_ras, plane: str) -> float:
    """Pixel height / width of :func:`display_slice` planes, from the canonical voxel size (mm)."""
    columns, rows = (a for a in range(3) if a != PLANES[plane])
    return float(spacing_ras[rows] / spacing_ras[columns])


def display_planes(image: np.ndarray, label: np.ndarray, grid, point=None) -> list[DisplayPlane]:
    """Sagittal, coronal and axial planes through ``point`` in radiological display.

    Args:
        image: ``(X, Y, Z)`` intensities.
        label: ``(X, Y, Z)`` integer labels on the same grid.
        grid: 4x4 RAS affine of the grid (3 voxel sizes in mm are taken as an RAS-stored grid).
        point: Voxel indices in the closest-RAS reoriented grid; default: the label's centroid.
    """
    (image_ras, label_ras), spacing = to_display_orientation([image, label], grid)
    return planes_through(image_ras, label_ras, spacing, point or centroid(label_ras > 0))


def planes_through(image_ras: np.ndarray, label_ras: np.ndarray, spacing_ras, point) -> list[DisplayPlane]:
    """Sagittal, coronal and axial planes through ``point`` of arrays already in closest-RAS order."""
    return [DisplayPlane(name, int(point[axis]), display_slice(image_ras, name, point[axis]),
                         display_slice(label_ras, name, point[axis]), display_aspect(spacing_ras, name))
            for name, axis in PLANES.items()]


def label_rgba(label2d: np.ndarray, colors: dict[int, str], alpha: float) -> np.ndarray:
    """``(rows, columns, 4)`` overlay: each label value in its colour at opacity ``alpha``."""

    rgba = np.zeros((*label2d.shape, 4))
    for value, color in colors.items():
        rgba[label2d == value] = (*to_rgb(color), alpha)
    return rgba


def mark_edges(ax, plane: str) -> None:
    """Write the patient direction at the left and right edges of a display plane."""
    left, right = EDGE_LETTERS[plane]
    style = {"transform": ax.transAxes, "color": "yellow", "fontsize": 8, "va": "center"}
    ax.text(0.01, 0.5, left, ha="left", **style)
    ax.text(0.99, 0.5, right, ha="right", **style)


def overlay_figure(image: np.ndarray, label: np.ndarray, grid, labels: dict[int, str] | None = None,
                   point=None, alpha: float = 0.45, title: str = ""):
    """Matplotlib figure: three orthogonal planes through ``point``, radiological display.

    Args:
        image: ``(X, Y, Z)`` intensities (windowed to the 1st-99th percentile).
        label: ``(X, Y, Z)`` integer labels on the same grid.
        grid: The grid's 4x4 RAS affine (sets orientation and aspect ratios); 3 voxel sizes (mm) are
            taken as an RAS-stored grid.
        labels: Label value -> name; the legend lists those visible on the planes.
        point: Voxel indices in the closest-RAS reoriented grid; default: the label's centroid.
    """
    names = label_names(labels, label)
    colors = label_colors(names)
    window = intensity_window(image)
    planes = display_planes(image, label, grid, point)
    fig, axes = plane_grid(planes, rows=1, width=11.0)
    for ax, view in zip(axes[0], planes, strict=True):
        draw_image(ax, view, window)
        ax.imshow(label_rgba(view.label, colors, alpha), aspect=view.aspect, interpolation="nearest")
    if labels:
        handles = label_handles(names, colors, [v.label for v in planes])
        fig.legend(handles=handles, loc="lower center", ncol=min(max(1, len(handles)), 8), fontsize=8,
                   frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def comparison_figure(image: np.ndarray, prediction: np.ndarray, truth: np.ndarray, grid,
                      labels: dict[int, str] | None = None, alpha: float = 0.4, title: str = ""):
    """Prediction against ground truth on the three planes through the largest error (radiological display).

    Top row: the prediction filled (translucent) and the ground truth as contour lines, one colour per
    label. Bottom row: false positive, false negative and wrong-label voxels (see
    :func:`medseg.qa.errors.error_masks`) with the truth's outline. The planes cut through the centroid of
    the largest connected error component (:func:`medseg.qa.errors.largest_error`), or through the
    prediction's centroid when there is no error; the title says which.

    Args:
        image: ``(X, Y, Z)`` intensities (windowed to the 1st-99th percentile).
        prediction: ``(X, Y, Z)`` predicted label map on the same grid.
        truth: ``(X, Y, Z)`` ground truth on the same grid.
        grid: The grid's 4x4 RAS affine; 3 voxel sizes (mm) are taken as an RAS-stored grid.
        labels: Label value -> name.
    """

    (image_ras, pred_ras, truth_ras), spacing = to_display_orientation([image, prediction, truth], grid)
    focus = largest_error(pred_ras, truth_ras, spacing)
    false_positive, false_negative = error_masks(pred_ras, truth_ras)
    errors = false_positive.astype(np.uint8) + 2 * false_negative.astype(np.uint8)
    names = label_names(labels, prediction, truth)
    colors = label_colors(names)
    error_colors = {value: color for value, color in ERROR_KINDS.values()}
    window = intensity_window(image)
    planes = planes_through(image_ras, pred_ras, spacing, focus.point)
    truth_planes = [display_slice(truth_ras, v.name, v.index) for v in planes]
    fig, axes = plane_grid(planes, rows=2, width=12.0)
    for top, bottom, view, true2d in zip(axes[0], axes[1], planes, truth_planes, strict=True):
        draw_image(top, view, window)
        top.imshow(label_rgba(view.label, colors, alpha), aspect=view.aspect, interpolation="nearest")
        draw_contours(top, true2d, colors, linewidth=1.3)
        draw_image(bottom, view, window)
        bottom.imshow(label_rgba(display_slice(errors, view.name, view.index), error_colors, 0.75),
                      aspect=view.aspect, interpolation="nearest")
        draw_contours(bottom, true2d > 0, {1: TRUTH_OUTLINE}, linewidth=0.8)
    handles = [Patch(color="#bbbbbb", alpha=alpha, label="prediction (fill)"),
               Line2D([], [], color="#bbbbbb", label="ground truth (line)")]
    handles += label_handles(names, colors, [v.label for v in planes] + truth_planes)
    outside_legend(axes[0][-1], handles)
    error_handles = [Patch(color=color, label=name) for name, (_, color) in ERROR_KINDS.items()]
    outside_legend(axes[1][-1], error_handles + [Line2D([], [], color=TRUTH_OUTLINE, label="ground truth outline")])
    where = (f"slices through the largest error ({focus.volume_mm3:.0f} mm³)" if focus.volume_mm3
             else "no errors: slices through the prediction's centre")
    fig.suptitle(f"{title}: {where}" if title else where, fontsize=10)
    return fig


def uncertainty_figure(image: np.ndarray, uncertainty: np.ndarray, prediction: np.ndarray, grid,
                       title: str = "", measure: str = "normalised entropy"):
    """Uncertainty heat map on the three planes through the most uncertain region (radiological display).

    Args:
        image: ``(X, Y, Z)`` intensities (windowed to the 1st-99th percentile).
        uncertainty: ``(X, Y, Z)`` values in [0, 1] on the same grid, e.g.
            :func:`medseg.qa.uncertainty.normalised_entropy` of the class probabilities.
        prediction: ``(X, Y, Z)`` predicted label map, drawn as outlines.
        grid: The grid's 4x4 RAS affine; 3 voxel sizes (mm) are taken as an RAS-stored grid.
        measure: What ``uncertainty`` is, for the colour bar.
    """

    (image_ras, unc_ras, pred_ras), spacing = to_display_orientation([image, uncertainty, prediction], grid)
    point, level = most_uncertain_point(unc_ras, spacing)
    window = intensity_window(image)
    planes = planes_through(image_ras, pred_ras, spacing, point)
    fig, axes = plane_grid(planes, rows=1, width=12.0)
    for ax, view in zip(axes[0], planes, strict=True):
        draw_image(ax, view, window)
        heat = np.ma.masked_less(display_slice(unc_ras, view.name, view.index), 0.02)
        shown = ax.imshow(heat, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.8, aspect=view.aspect,
                          interpolation="nearest")
        draw_contours(ax, view.label > 0, {1: PREDICTION_OUTLINE}, linewidth=0.8)
    fig.colorbar(shown, ax=list(axes[0]), fraction=0.02, pad=0.01, label=measure)
    outside_legend(axes[0][0], [Line2D([], [], color=PREDICTION_OUTLINE, label="prediction outline")], below=True)
    where = f"{measure}, slices through the most uncertain region (mean {level:.2f} over {REGION_MM:.0f} mm)"
    fig.suptitle(f"{title}: {where}" if title else where, fontsize=10)
    return fig


def label_names(labels: dict[int, str] | None, *maps: np.ndarray) -> dict[int, str]:
    """Foreground label value -> name: ``labels``, or the values found in ``maps`` named by number."""
    if labels:
        return {int(v): n for v, n in labels.items() if int(v) != 0}
    values = sorted({int(v) for m in maps for v in np.unique(m)} - {0})
    return {v: str(v) for v in values}


def intensity_window(image: np.ndarray) -> tuple[float, float]:
    """Grey-scale display range: the 1st to 99th intensity percentile."""
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    return float(lo), float(hi)


def draw_image(ax, view: DisplayPlane, window: tuple[float, float]) -> None:
    """The plane's intensities in grey, its title and patient directions, no axes."""
    ax.imshow(view.image, cmap="gray", vmin=window[0], vmax=window[1], aspect=view.aspect, interpolation="nearest")
    ax.set_title(f"{view.name} {view.index}", fontsize=9)
    mark_edges(ax, view.name)
    ax.axis("off")


def draw_contours(ax, label2d: np.ndarray, colors: dict[int, str], linewidth: float) -> None:
    """Outline each label value of a display plane in its colour (pixel centres at integer coordinates)."""
    for value, color in colors.items():
        mask = label2d == value
        if mask.any() and not mask.all():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=linewidth)


def label_handles(names: dict[int, str], colors: dict[int, str], planes: list[np.ndarray]) -> list:
    """Legend entries for the labels that appear on any of ``planes``."""

    visible = {int(v) for plane in planes for v in np.unique(plane)}
    return [Patch(color=colors[v], label=names[v]) for v in sorted(names) if v in visible]


def outside_legend(ax, handles: list, below: bool = False) -> None:
    """A legend to the right of ``ax`` (or below it), dark like the images so that light lines show, in as
    many columns as keep it within the height of ``ax``."""

    anchor = (0.0, -0.02) if below else (1.02, 1.0)
    height_in = ax.get_position().height * ax.figure.get_figheight()
    per_column = max(4, int(6 * height_in))  # 7 pt entries: about 6 per inch
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=anchor, fontsize=7, facecolor="#222222",
              labelcolor="white", framealpha=1.0, ncol=math.ceil(len(handles) / per_column))


def plane_grid(planes: list[DisplayPlane], rows: int, width: float):
    """Figure and ``(rows, 3)`` axes, three equal columns, rows as tall as the tallest plane needs."""

    tallest = max(v.image.shape[0] * v.aspect / v.image.shape[1] for v in planes)  # height / width in mm
    row_height = min(max(0.26 * width * tallest, 1.5), 5.0)
    return plt.subplots(rows, 3, figsize=(width, rows * row_height + 0.6), dpi=80, squeeze=False)


def figure_png_base64(fig) -> str:
    """PNG of a figure as base64 text (for self-contained HTML); closes the figure."""

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
