"""Dataset fingerprint: spacings, shapes, foreground intensities and label volumes of every case.

Spacings and shapes are per canonical (closest-RAS) axis, as preprocessing sees the cases, so that
the plan does not depend on how each case was stored.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from medseg.data.dataset import Case, Dataset
from medseg.preprocess.crop import crop, nonzero_box
from medseg.preprocess.io import load_case
from medseg.preprocess.orientation import canonical_ornt, to_canonical

_SAMPLES_PER_CASE = 10_000


def fingerprint(dataset: Dataset, workers: int = 2, seed: int = 0) -> dict:
    """Compute the fingerprint of the labelled cases of ``dataset``.

    Returns:
        JSON-ready dict: ``spacings`` (mm) and ``shapes`` (voxels, after non-zero crop) per case along
        the canonical axes, ``median_spacing``, ``median_shape``, per-channel foreground ``intensity``
        statistics (mean, std, percentiles 0.5 and 99.5), ``label_voxels`` (median voxels per class),
        ``label_volume_mm3`` and ``label_centroids_mm``: per case (in ``cases`` order), foreground label ->
        centroid ``[x, y, z]`` in mm along the canonical axes from the corner of the cropped image, for the
        labels present in it (what :func:`medseg.preprocess.plan.mirror_axes` measures left/right pairs on),
        and ``label_border_fraction``: per foreground label, the share of the cases holding it where it touches
        a face of the image's grid (crops of nodules do, most of the time; organs in whole scans do not).
    """
    cases = dataset.labelled
    with ThreadPoolExecutor(max(1, workers)) as pool:
        done = pool.map(lambda ic: _case_row(ic[1], dataset, seed + ic[0]), enumerate(cases))
        rows = list(tqdm(done, total=len(cases), desc="fingerprint", unit="case", disable=None))  # stderr, TTY only
    spacings = np.array([r["spacing"] for r in rows])
    shapes = np.array([r["shape"] for r in rows])
    intensity = []
    for c in range(len(dataset.channels) or 1):
        values = np.concatenate([r["samples"][c] for r in rows]) if rows else np.zeros(1)
        intensity.append({
            "mean": float(values.mean()), "std": float(values.std()),
            "p00_5": float(np.percentile(values, 0.5)), "p99_5": float(np.percentile(values, 99.5)),
            "min": float(values.min()), "max": float(values.max()),
        })
    labels = sorted(k for k in dataset.labels if k != 0)
    # An organ a case did not contour is unknown there, not 0 mm3: only contouring cases count (a label
    # contoured nowhere gets its statistics from every case, all zero).
    contoured = {k: [r for r, c in zip(rows, cases, strict=True) if c.contoured(k)] or rows for k in labels}
    voxels = {str(k): [r["counts"].get(k, 0) for r in contoured[k]] for k in labels}
    volumes = {str(k): [r["counts"].get(k, 0) * r["voxel_mm3"] for r in contoured[k]] for k in labels}
    return {
        "cases": [r["id"] for r in rows],
        "spacings": spacings.tolist(),
        "shapes": shapes.tolist(),
        "ranges": training_ranges(spacings, shapes),
        "median_spacing": np.median(spacings, axis=0).tolist(),
        "median_shape": np.median(shapes, axis=0).tolist(),
        "intensity": intensity,
        "label_voxels_median": {k: float(np.median(v)) for k, v in voxels.items()},
        "label_volume_mm3": {k: {"median": float(np.median(v)), "p05": float(np.percentile(v, 5)),
                                 "p95": float(np.percentile(v, 95))} for k, v in volumes.items()},
        "cases_with_label": {k: int(sum(1 for x in v if x > 0)) for k, v in voxels.items()},
        "label_centroids_mm": [r["centroids_mm"] for r in rows],
        "label_border_fraction": {str(k): _share(k in r["border"] for r in rows if r["counts"].get(k, 0))
                                  for k in labels},
    }


def _share(flags) -> float:
    flags = list(flags)
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def _case_row(case: Case, dataset: Dataset, seed: int) -> dict:
    image, label = load_case(case)
    border = labels_on_border(label.array)
    ornt = canonical_ornt(image.affine)
    image, label = to_canonical(image, ornt), to_canonical(label, ornt)
    box = nonzero_box(image.array)
    img = crop(image.array, box)
    lab = crop(label.array, box)
    rng = np.random.default_rng(seed)
    fg = lab > 0
    samples = []
    for c in range(img.shape[0]):
        values = img[c][fg] if fg.any() else img[c].ravel()
        take = min(_SAMPLES_PER_CASE, values.size)
        samples.append(rng.choice(values, take, replace=False) if take < values.size else values)
    counts = dict(zip(*np.unique(lab, return_counts=True), strict=True))
    return {"id": case.id, "spacing": list(image.spacing), "shape": list(img.shape[1:]), "samples": samples,
            "counts": {int(k): int(v) for k, v in counts.items()}, "voxel_mm3": float(np.prod(image.spacing)),
            "centroids_mm": label_centroids_mm(lab, image.spacing), "border": border}


def labels_on_border(label: np.ndarray) -> list[int]:
    """Foreground label values present on a face of a ``(X, Y, Z)`` label map's grid."""
    faces = [label[0], label[-1], label[:, 0], label[:, -1], label[:, :, 0], label[:, :, -1]]
    return sorted({int(v) for face in faces for v in np.unique(face) if v != 0})


def label_centroids_mm(label: np.ndarray, spacing) -> dict[str, list[float]]:
    """Centroid of each foreground label present in a ``(X, Y, Z)`` label map.

    Returns:
        Label value (as a string, JSON-ready) -> ``[x, y, z]`` in mm from the array's corner voxel centre:
        the mean voxel index along each axis times ``spacing`` (mm per voxel).
    """
    values = [int(v) for v in np.unique(label) if v != 0]
    centres = ndimage.center_of_mass(np.ones(label.shape), label, values) if values else []
    return {str(v): [round(float(i * s), 3) for i, s in zip(c, spacing, strict=True)]
            for v, c in zip(values, centres, strict=True)}


def training_ranges(spacings, shapes) -> dict:
    """Smallest and largest spacing (mm) and extent of the cropped image (mm) per canonical axis."""
    spacings, shapes = np.asarray(spacings, float), np.asarray(shapes, float)
    extents = spacings * shapes
    return {"spacing_min": spacings.min(0).tolist(), "spacing_max": spacings.max(0).tolist(),
            "extent_mm_min": extents.min(0).tolist(), "extent_mm_max": extents.max(0).tolist()}
