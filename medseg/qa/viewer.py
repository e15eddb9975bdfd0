"""Jupyter viewer: scroll through image + label map with a slider, switch planes, set opacity.

Planes are shown in radiological display whatever the storage order (see :mod:`medseg.qa.figures`).
"""

from __future__ import annotations

import numpy as np

from medseg.qa.errors import centroid
from medseg.qa.figures import (
    PLANES,
    display_aspect,
    display_slice,
    label_colors,
    label_rgba,
    mark_edges,
    to_display_orientation,
)


def slice_viewer(image: np.ndarray, label: np.ndarray, grid=(1.0, 1.0, 1.0),
                 labels: dict[int, str] | None = None):
    """An ipywidgets box: slice slider, plane switch (axial/coronal/sagittal), opacity, label legend.

    Args:
        image: ``(X, Y, Z)`` (or ``(C, X, Y, Z)``: the first channel is shown).
        label: ``(X, Y, Z)`` label map on the same grid.
        grid: The grid's 4x4 RAS affine (sets orientation and aspect ratios); 3 voxel sizes (mm) are
            taken as an RAS-stored grid.
        labels: Label value -> name for the legend.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    image = image if image.ndim == 3 else image[0]
    labels = labels or {int(v): f"label {int(v)}" for v in np.unique(label) if v != 0}
    colors = label_colors(labels)
    lo, hi = np.percentile(image, [1, 99])
    (image, label), spacing = to_display_orientation([image, label], grid)
    start = centroid(label > 0)
    plane_box = widgets.ToggleButtons(options=["axial", "coronal", "sagittal"], value="axial", description="plane")
    index = widgets.IntSlider(value=start[PLANES["axial"]], min=0, max=image.shape[PLANES["axial"]] - 1,
                              description="slice")
    opacity = widgets.FloatSlider(value=0.45, min=0.0, max=1.0, step=0.05, description="opacity")
    legend = widgets.HTML(" ".join(f"<span style='color:{colors[v]}'>&#9632; {n}</span>"
                                   for v, n in labels.items() if v in colors))
    out = widgets.Output()

    def draw(*_):
        name = plane_box.value
        aspect = display_aspect(spacing, name)
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(5, 5))
            ax.imshow(display_slice(image, name, index.value), cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
            ax.imshow(label_rgba(display_slice(label, name, index.value), colors, opacity.value), aspect=aspect)
            mark_edges(ax, name)
            ax.axis("off")
            plt.show()

    def on_plane(_):
        axis = PLANES[plane_box.value]
        index.max = image.shape[axis] - 1
        index.value = start[axis]
        draw()

    plane_box.observe(on_plane, names="value")
    index.observe(draw, names="value")
    opacity.observe(draw, names="value")
    draw()
    return widgets.VBox([plane_box, index, opacity, legend, out])
