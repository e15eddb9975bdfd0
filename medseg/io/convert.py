"""DICOM folder -> one NIfTI per series."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medseg.errors import MedsegError
from medseg.io.dicom import read_series, scan_dicom
from medseg.io.naming import series_file_stem
from medseg.io.volume_io import write_volume


@dataclass(frozen=True)
class Converted:
    """Outcome for one series: ``output`` when written, ``error`` (one line) when not."""

    series: str
    output: Path | None = None
    error: str | None = None
    kept: bool = False  # the output existed and was left alone


def convert_dicom_folder(folder: str | Path, out_dir: str | Path, overwrite: bool = False,
                         suffix: str = ".nii.gz") -> list[Converted]:
    """Convert every series under ``folder`` to ``out_dir/<index>_s<number>_<description><suffix>``.

    A refused or undecodable series is reported and the others go on. An existing output is left
    alone unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    results = []
    for series in scan_dicom(folder).series:
        target = out_dir / (series_file_stem(series.index, series.series_number, series.description) + suffix)
        if target.exists() and not overwrite:
            results.append(Converted(series.name, output=target, kept=True))
            continue
        try:
            volume = read_series(series)
            write_volume(volume, target, overwrite=overwrite)
            results.append(Converted(series.name, output=target))
        except MedsegError as exc:
            results.append(Converted(series.name, error=str(exc)))
    return results
