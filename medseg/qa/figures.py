"""Static overlay figures: image and label map on the three planes through the structure."""

from __future__ import annotations

import base64
import io

import numpy as np

COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe",
          "#008080"]


def label_colors(values) -> dict[int, str]:
    """A stable colour per label value."""
    return {int(v): COLORS[(int(v) - 1) % len(COLORS)] for v in values if int(v) != 0}


def focus_point(label: np.ndarray) -> tuple[int, int, int]:
    """Centroid of the foreground (the grid centre when there is none), as voxel indices."""
    fg = np.argwhere(label > 0)
    if len(fg) == 0:
        return tuple(int(n // 2) for n in label.shape)  # type: ignore[return-value]
    return tuple(int(round(c)) for c in fg.mean(axis=0))  # type: ignore[return-value]


def plane(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """2D slice through ``index`` along ``axis`` of an ``(X, Y, Z)`` array, transposed for display."""
    return np.take(array, index, axis=axis).T


def overlay_figure(image: np.ndarray, label: np.ndarray, spacing, labels: dict[int, str] | None = None,
                   point=None, alpha: float = 0.45, title: str = ""):
    """Matplotlib figure: three orthogonal planes through ``point`` (default: the label's centroid).

    Args:
        image: ``(X, Y, Z)`` intensities (windowed to the 1st-99th percentile).
        label: ``(X, Y, Z)`` integer labels on the same grid.
        spacing: Voxel size in mm (sets each plane's aspect ratio).
    """
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    point = point or focus_point(label)
    values = sorted(int(v) for v in (labels or {int(v): str(v) for v in np.unique(label)}) if int(v) != 0)
    colors = label_colors(values)
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0, 1)
    fig, axes = plt.subplots(1, 3, figsize=(11, 4), dpi=80)
    names = ["sagittal", "coronal", "axial"]
    for ax, axis in zip(axes, (0, 1, 2), strict=True):
        other = [a for a in range(3) if a != axis]
        ax.imshow(plane(image, axis, point[axis]), cmap="gray", vmin=lo, vmax=hi, origin="lower",
                  aspect=spacing[other[1]] / spacing[other[0]], interpolation="nearest")
        lab = plane(label, axis, point[axis])
        rgba = np.zeros((*lab.shape, 4))
        for value, color in colors.items():
            rgb = matplotlib.colors.to_rgb(color)
            rgba[lab == value] = (*rgb, alpha)
        ax.imshow(rgba, origin="lower", aspect=spacing[other[1]] / spacing[other[0]], interpolation="nearest")
        ax.set_title(f"{names[axis]} {point[axis]}", fontsize=9)
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
