"""Plain-text descriptions of volumes and DICOM folders for ``medseg info`` (no patient identity)."""

from __future__ import annotations

import numpy as np

from medseg.io.dicom_series import DicomSeries, FolderScan
from medseg.io.geometry import obliquity_deg, orientation_code
from medseg.types import Volume


def describe_volume(volume: Volume) -> list[str]:
    """Lines describing a volume's grid and intensities."""
    arr = volume.array
    finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
    lines = [
        f"shape      {' x '.join(map(str, volume.spatial_shape))}"
        + (f" x {volume.num_channels} channels" if volume.array.ndim == 4 else ""),
        f"spacing    {' x '.join(f'{s:.4g}' for s in volume.spacing)} mm",
        f"orientation {orientation_code(volume.affine)}" + _oblique(volume.affine),
        f"origin     ({', '.join(f'{o:.2f}' for o in volume.origin)}) mm RAS",
        (f"values     {arr.dtype}, range {finite.min():.4g} .. {finite.max():.4g}" if finite.size
         else "values     empty"),
    ]
    if finite.size != arr.size:
        lines.append(f"problem    {arr.size - finite.size} NaN or infinite voxel(s)")
    lines += [f"warning    {w}" for w in volume.meta.get("warnings", [])]
    return lines


def describe_series(series: DicomSeries) -> str:
    """One line for a DICOM series: name, size, spacing, orientation, status."""
    if series.slice_step:
        geometry = (f"{' x '.join(map(str, series.shape))}, "
                    f"{' x '.join(f'{s:.4g}' for s in series.spacing)} mm, "
                    f"{orientation_code(series.affine)}{_oblique(series.affine)}")
    else:
        geometry = f"{series.columns} x {series.rows} x {len(series.slices)}"
    status = "ok" if series.readable else "REFUSED: " + "; ".join(series.problems)
    return f"{series.name}: {geometry}: {status}"


def describe_scan(scan: FolderScan) -> list[str]:
    """Lines for every series found in a folder, then what was ignored."""
    lines = [describe_series(s) for s in scan.series] or ["no DICOM image series found"]
    if scan.non_dicom:
        lines.append(f"ignored {len(scan.non_dicom)} non-DICOM file(s)")
    reasons: dict[str, int] = {}
    for _, reason in scan.skipped:
        reasons[reason] = reasons.get(reason, 0) + 1
    lines += [f"skipped {n} DICOM file(s): {reason}" for reason, n in reasons.items()]
    return lines


def _oblique(affine: np.ndarray) -> str:
    angle = obliquity_deg(affine)
    return f" (oblique, {angle:.1f} deg)" if angle > 0.5 else ""

