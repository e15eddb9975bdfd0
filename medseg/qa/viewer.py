"""Jupyter viewer: scroll through image + label map with a slider, switch planes, set opacity."""

from __future__ import annotations

import numpy as np

from medseg.qa.figures import focus_point, label_colors, plane


def slice_viewer(image: np.ndarray, label: np.ndarray, spacing=(1.0, 1.0, 1.0),
                 labels: dict[int, str] | None = None):
    """An ipywidgets box: slice slider, plane switch (axial/coronal/sagittal), opacity, label legend.

    Args:
        image: ``(X, Y, Z)`` (or ``(C, X, Y, Z)``: the first channel is shown).
        label: ``(X, Y, Z)`` label map on the same grid.
        spacing: Voxel size in mm, for correct aspect ratios.
        labels: Label value -> name for the legend.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    image = image if image.ndim == 3 else image[0]
    labels = labels or {int(v): f"label {int(v)}" for v in np.unique(label) if v != 0}
    colors = label_colors(labels)
    lo, hi = np.percentile(image, [1, 99])
    start = focus_point(label)
    axis_of = {"axial": 2, "coronal": 1, "sagittal": 0}
    plane_box = widgets.ToggleButtons(options=list(axis_of), value="axial", description="plane")
    index = widgets.IntSlider(value=start[2], min=0, max=image.shape[2] - 1, description="slice")
    opacity = widgets.FloatSlider(value=0.45, min=0.0, max=1.0, step=0.05, description="opacity")
    legend = widgets.HTML(" ".join(f"<span style='color:{colors[v]}'>&#9632; {n}</span>"
                                   for v, n in labels.items() if v in colors))
    out = widgets.Output()

    def draw(*_):
        axis = axis_of[plane_box.value]
        other = [a for a in range(3) if a != axis]
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(5, 5))
            aspect = spacing[other[1]] / spacing[other[0]]
            ax.imshow(plane(image, axis, index.value), cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect)
            lab = plane(label, axis, index.value)
            rgba = np.zeros((*lab.shape, 4))
            for value, color in colors.items():
                import matplotlib.colors as mcolors

                rgba[lab == value] = (*mcolors.to_rgb(color), opacity.value)
            ax.imshow(rgba, origin="lower", aspect=aspect)
            ax.axis("off")
            plt.show()

    def on_plane(_):
        axis = axis_of[plane_box.value]
        index.max = image.shape[axis] - 1
        index.value = start[axis]
        draw()

    plane_box.observe(on_plane, names="value")
    index.observe(draw, names="value")
    opacity.observe(draw, names="value")
    draw()
    return widgets.VBox([plane_box, index, opacity, legend, out])
