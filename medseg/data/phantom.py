"""Synthetic phantoms: organ-like ellipsoids with a small lesion, anisotropic and oblique grids.

They are medseg's built-in example (``medseg demo``) and the test suite's realistic data when the
real data is absent: the geometry is what clinical scans have (thick slices, rotated axes), the
content is simple enough that a model learns it in minutes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.io.volume_io import write_volume
from medseg.types import Volume

PHANTOM_LABELS = {0: "background", 1: "organ", 2: "lesion"}


def rotation(degrees_xyz=(0.0, 0.0, 0.0)) -> np.ndarray:
    """3x3 rotation matrix from rotations (degrees) about x, then y, then z."""
    ax, ay, az = np.radians(degrees_xyz)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_phantom(
    shape=(48, 48, 20),
    spacing=(1.5, 1.5, 4.0),
    rotation_deg=(10.0, 0.0, 25.0),
    seed: int = 0,
    modality: str = "MR",
    lesion: bool = True,
) -> tuple[Volume, Volume]:
    """One phantom case: an image and its label map on the same grid.

    Args:
        shape: Grid size (X, Y, Z) in voxels.
        spacing: Voxel size in mm; the default has 4 mm slices (anisotropic).
        rotation_deg: Rotation of the grid axes in world space (non-identity direction).
        seed: Varies organ size, position, lesion place and noise.
        modality: ``"CT"`` gives Hounsfield-like values (air -1000, organ ~ 60), else MR-like.
        lesion: Add a small sphere (label 2) inside the organ.

    Returns:
        ``(image, label)``: float32 image and uint8 label (0 background, 1 organ, 2 lesion).
    """
    rng = np.random.default_rng(seed)
    affine = np.eye(4)
    affine[:3, :3] = rotation(rotation_deg) * np.asarray(spacing, float)
    extent = np.asarray(shape) * np.asarray(spacing)
    affine[:3, 3] = -affine[:3, :3] @ (np.asarray(shape) / 2.0) + rng.normal(0, 5, 3)
    mm = _voxel_mm(shape, spacing)  # positions along each array axis in mm, grid-centred
    centre = rng.uniform(-0.1, 0.1, 3) * extent
    radii = np.array([rng.uniform(0.22, 0.32), rng.uniform(0.18, 0.28), rng.uniform(0.25, 0.35)]) * extent
    organ = _ellipsoid(mm, centre, radii)
    label = organ.astype(np.uint8)
    if lesion:
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        lesion_centre = centre + direction * radii * 0.4
        lesion_radius = max(3.0 * max(spacing[:2]), 0.2 * float(radii.min()), float(spacing[2]))
        label[_ellipsoid(mm, lesion_centre, np.full(3, lesion_radius)) & organ] = 2
    image = _intensities(label, rng, modality)
    meta = {"modality": modality, "source": f"phantom seed {seed}"}
    return (Volume(image, affine, dict(meta)), Volume(label, affine, dict(meta)))


def write_phantom_dataset(folder: str | Path, cases: int = 8, seed: int = 0, **kwargs) -> Path:
    """Write ``cases`` phantoms as an MSD-style dataset (``dataset.json``, imagesTr, labelsTr).

    Returns:
        The dataset folder.
    """


    folder = Path(folder)
    training = []
    modality = kwargs.get("modality", "MR")
    for i in range(cases):
        image, label = make_phantom(seed=seed + i, **kwargs)
        case = f"phantom_{i:03d}"
        write_volume(image, folder / "imagesTr" / f"{case}.nii.gz", overwrite=True)
        write_volume(label, folder / "labelsTr" / f"{case}.nii.gz", overwrite=True)
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    description = {
        "name": "Phantom", "description": "Synthetic ellipsoid organs with a small lesion",
        "modality": {"0": modality}, "labels": {str(k): v for k, v in PHANTOM_LABELS.items()},
        "numTraining": cases, "training": training,
    }
    (folder / "dataset.json").write_text(json.dumps(description, indent=2))
    return folder


def _voxel_mm(shape, spacing):
    return [(np.arange(n) - n / 2.0) * s for n, s in zip(shape, spacing, strict=True)]


def _ellipsoid(mm, centre, radii) -> np.ndarray:
    x, y, z = (((m - c) / r) ** 2 for m, c, r in zip(mm, centre, radii, strict=True))
    return (x[:, None, None] + y[None, :, None] + z[None, None, :]) <= 1.0


def _intensities(label: np.ndarray, rng, modality: str) -> np.ndarray:
    if modality.upper() == "CT":
        means, noise = np.array([-900.0, 60.0, 110.0]), 25.0
        body = np.full(label.shape, -50.0)
    else:
        means, noise = np.array([40.0, 300.0, 480.0]), 20.0
        body = np.full(label.shape, means[0])
    image = body + rng.normal(0, noise, label.shape)
    for value in (1, 2):
        image[label == value] = means[value] + rng.normal(0, noise, int((label == value).sum()))
    return image.astype(np.float32)
