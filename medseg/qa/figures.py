"""Static overlay figures: image and label map on the three planes through the structure.

Planes are shown in radiological display whatever the storage order: the volume is first reoriented
to closest RAS (:mod:`medseg.preprocess.orientation`), then each plane is cut and turned so that the
head (or anterior, on axial planes) is up and the patient's left is on the image's right. Sagittal
planes have anterior on the left. Display arrays have row 0 at the top.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np

from medseg.preprocess.orientation import canonical_ornt, reorient_array, reoriented_affine

COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe",
          "#008080"]
# The canonical (closest-RAS) axis each plane holds fixed.
PLANES = {"sagittal": 0, "coronal": 1, "axial": 2}
# Letters at the left and right edges of each display plane.
EDGE_LETTERS = {"sagittal": ("A", "P"), "coronal": ("R", "L"), "axial": ("R", "L")}


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


def focus_point(label: np.ndarray) -> tuple[int, int, int]:
    """Centroid of the foreground (the grid centre when there is none), as voxel indices."""
    fg = np.argwhere(label > 0)
    if len(fg) == 0:
        return tuple(int(n // 2) for n in label.shape)  # type: ignore[return-value]
    return tuple(int(round(c)) for c in fg.mean(axis=0))  # type: ignore[return-value]


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
    point = point or focus_point(label_ras)
    return [DisplayPlane(name, int(point[axis]), display_slice(image_ras, name, point[axis]),
                         display_slice(label_ras, name, point[axis]), display_aspect(spacing, name))
            for name, axis in PLANES.items()]


def label_rgba(label2d: np.ndarray, colors: dict[int, str], alpha: float) -> np.ndarray:
    """``(rows, columns, 4)`` overlay: each label value in its colour at opacity ``alpha``."""
    from matplotlib.colors import to_rgb

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
        point: Voxel indices in the closest-RAS reoriented grid; default: the label's centroid.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    values = sorted(int(v) for v in (labels or {int(v): str(v) for v in np.unique(label)}) if int(v) != 0)
    colors = label_colors(values)
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0, 1)
    fig, axes = plt.subplots(1, 3, figsize=(11, 4), dpi=80)
    for ax, view in zip(axes, display_planes(image, label, grid, point), strict=True):
        ax.imshow(view.image, cmap="gray", vmin=lo, vmax=hi, aspect=view.aspect, interpolation="nearest")
        ax.imshow(label_rgba(view.label, colors, alpha), aspect=view.aspect, interpolation="nearest")
        ax.set_title(f"{view.name} {view.index}", fontsize=9)
        mark_edges(ax, view.name)
        ax.axis("off")
    if labels:
        handles = [Patch(color=colors[v], label=labels[v]) for v in values if v in labels]
        fig.legend(handles=handles, loc="lower center", ncol=max(1, len(handles)), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def figure_png_base64(fig) -> str:
    """PNG of a figure as base64 text (for self-contained HTML); closes the figure."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
