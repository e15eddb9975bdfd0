"""Geometry in one place: RAS <-> LPS, affines <-> (spacing, origin, direction), grid comparison.

medseg's :class:`~medseg.types.Volume` stores a RAS+ affine (NIfTI's convention). DICOM and ITK
(SimpleITK, NRRD, MHA) describe space in LPS+. This module is the only place that converts between
the two; every reader and writer goes through it.
"""

from __future__ import annotations

import numpy as np

# Imported inside functions, measured on import after numpy: nibabel 0.48 s. `import medseg` (so `medseg --help`)
# loads this module; only the calls that need them pay.

# Flipping the first two world axes turns LPS into RAS and back (it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras(affine_lps: np.ndarray) -> np.ndarray:
    """Convert a 4x4 voxel->LPS affine into a voxel->RAS affine."""
    return LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64)


def ras_to_lps(affine_ras: np.ndarray) -> np.ndarray:
    """Convert a 4x4 voxel->RAS affine into a voxel->LPS affine."""
    return LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)


def compose_affine(spacing, origin, direction) -> np.ndarray:
    """Build a 4x4 affine from spacing (mm, per axis), origin (mm) and a 3x3 direction matrix.

    The direction's columns are the world directions of the array axes (ITK's convention).
    """
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(spacing, float)
    affine[:3, 3] = np.asarray(origin, dtype=np.float64)
    return affine


def decompose_affine(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a 4x4 affine into (spacing (3,), origin (3,), direction (3, 3))."""
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return spacing, affine[:3, 3].copy(), affine[:3, :3] / spacing


def sitk_to_ras_affine(image) -> np.ndarray:
    """RAS affine for the (x, y, z) index order of a SimpleITK image (whose geometry is LPS)."""
    dim = image.GetDimension()
    spacing = np.array(image.GetSpacing()[:3])
    origin = np.array(image.GetOrigin()[:3])
    direction = np.array(image.GetDirection()).reshape(dim, dim)[:3, :3]
    return lps_to_ras(compose_affine(spacing, origin, direction))


def set_sitk_geometry(image, affine_ras: np.ndarray) -> None:
    """Give a SimpleITK image (index order x, y, z) the geometry of a RAS affine."""
    spacing, origin, direction = decompose_affine(ras_to_lps(affine_ras))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction.ravel()])


def orientation_code(affine: np.ndarray) -> str:
    """Three-letter RAS-style code of the closest axes, e.g. ``"RAS"`` or ``"LPS"``."""
    import nibabel as nib

    return "".join(nib.aff2axcodes(affine))


def obliquity_deg(affine: np.ndarray) -> float:
    """Largest angle (degrees) between an array axis and its nearest world axis; 0 for axis-aligned."""
    _, _, direction = decompose_affine(affine)
    cosines = np.abs(direction).max(axis=0).clip(-1.0, 1.0)
    return float(np.degrees(np.arccos(cosines)).max())


def grid_mismatch(shape_a, affine_a, shape_b, affine_b, atol_mm: float = 1e-3) -> list[str]:
    """Describe how two grids differ (shape, spacing, origin, direction); empty when they match.

    Args:
        shape_a, shape_b: Spatial shapes (X, Y, Z).
        affine_a, affine_b: 4x4 RAS affines.
        atol_mm: Tolerance in mm for spacing and origin; direction cosines use ``1e-4``.
    """
    problems: list[str] = []
    if tuple(shape_a) != tuple(shape_b):
        problems.append(f"shape {tuple(shape_a)} vs {tuple(shape_b)}")
    sa, oa, da = decompose_affine(affine_a)
    sb, ob, db = decompose_affine(affine_b)
    if not np.allclose(sa, sb, atol=atol_mm, rtol=0):
        problems.append(f"spacing {_fmt(sa)} vs {_fmt(sb)} mm")
    if not np.allclose(oa, ob, atol=max(atol_mm, 1e-3 * float(sa.max())), rtol=0):
        problems.append(f"origin {_fmt(oa)} vs {_fmt(ob)} mm")
    if not np.allclose(da, db, atol=1e-4, rtol=0):
        problems.append(f"direction {orientation_code(affine_a)} vs {orientation_code(affine_b)}"
                        f" (max cosine difference {np.abs(da - db).max():.4f})")
    return problems


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
