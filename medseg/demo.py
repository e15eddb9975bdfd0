"""The built-in example: a synthetic phantom dataset pushed through what medseg can do today."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def run_demo(out_dir: str | Path, echo: Callable[[str], None] = print, cases: int = 6) -> dict:
    """Write a phantom dataset (NIfTI, and one case as a DICOM series), read it back, check it.

    Returns:
        A summary: dataset path, DICOM round-trip error (mm, intensity), check result.
    """
    import numpy as np

    from medseg.data import check_dataset, load_dataset
    from medseg.data.phantom import make_phantom, write_phantom_dataset
    from medseg.io.describe import describe_volume
    from medseg.io.dicom import read_dicom_folder
    from medseg.io.dicom_write import write_dicom_series

    start = time.perf_counter()
    out_dir = Path(out_dir)
    dataset_dir = write_phantom_dataset(out_dir / "dataset", cases=cases)
    echo(f"wrote {cases} phantom cases (anisotropic 1.5 x 1.5 x 4 mm, oblique grid) to {dataset_dir}")

    image, _ = make_phantom(seed=0)
    dicom_dir = out_dir / "dicom" / "phantom_000"
    write_dicom_series(image, dicom_dir, modality="MR")
    back = read_dicom_folder(dicom_dir)
    affine_err = float(np.abs(back.affine - image.affine).max())
    value_err = float(np.abs(back.array - image.array).max())
    echo(f"DICOM round trip of case 0 ({dicom_dir}): affine error {affine_err:.2e} mm, "
         f"intensity error {value_err:.2e}")
    for line in describe_volume(back):
        echo(f"  {line}")

    report = check_dataset(load_dataset(dataset_dir))
    echo(f"medseg check: {report.summary()}")
    for problem in report.problems:
        echo(f"  {problem}")
    echo(f"demo finished in {time.perf_counter() - start:.1f} s; files in {out_dir}")
    return {"dataset": dataset_dir, "affine_error_mm": affine_err, "value_error": value_err, "ok": report.ok}
