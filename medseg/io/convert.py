"""DICOM folder -> one NIfTI per series, each with a JSON sidecar proving which series it holds."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import MedsegError, unexpected
from medseg.io.atomic import make_output_dir, write_text_atomic
from medseg.io.dicom import read_series, scan_dicom
from medseg.io.naming import safe_token, series_digest, series_file_stem
from medseg.io.volume_io import write_volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Converted:
    """Outcome for one series: ``output`` when written, ``error`` (one line) when not."""

    series: str
    output: Path | None = None
    error: str | None = None
    kept: bool = False  # the output existed, holds this series, and was left alone
    warnings: tuple[str, ...] = ()


def convert_dicom_folder(folder: str | Path, out_dir: str | Path, overwrite: bool = False,
                         suffix: str = ".nii.gz") -> list[Converted]:
    """Convert every series under ``folder`` to ``out_dir/<series id>_<description><suffix>``.

    Names come from the series' identity (series number, hash of the SeriesInstanceUID), never from the
    order of discovery. Beside each image, ``<stem>.json`` records which series it holds; an existing
    output is kept only when its sidecar proves it is the same series, and replaced only with
    ``overwrite``. A refused or failing series is logged in one line and the others go on; a summary line ends.

    Raises:
        MedsegError: when the folder holds no DICOM image series at all.
    """
    scan = scan_dicom(folder)
    if not scan.series:
        looked = len(scan.non_dicom) + len(scan.skipped)
        raise MedsegError(f"no DICOM image series found ({looked} file(s) looked at, none a DICOM image); "
                          "expected a folder of DICOM files, e.g. a PACS export", folder)
    out_dir = make_output_dir(out_dir)
    results = [_convert_one(series, out_dir, overwrite, suffix) for series in scan.series]
    for r in results:
        if r.error:
            log.error(r.error)
        else:
            log.info(f"{r.series} -> {r.output}" + (" (exists, same series, kept)" if r.kept else ""))
        for text in r.warnings:
            log.warning(f"{r.series}: {text}")
    log.info(f"converted {sum(r.error is None for r in results)} of {len(results)} series")
    return results


def _convert_one(series, out_dir: Path, overwrite: bool, suffix: str) -> Converted:
    stem = series_file_stem(series)
    target, sidecar = out_dir / f"{stem}{suffix}", out_dir / f"{stem}.json"
    try:
        if target.exists() and not overwrite:
            if _holds(sidecar, series):
                return Converted(series.name, output=target, kept=True)
            raise MedsegError("output exists but its sidecar does not show it holds this series; "
                              "use --overwrite or another output folder", target)
        volume = read_series(series)
        write_volume(volume, target, overwrite=overwrite)
        record = {"series_sha256": series_digest(series), "series_number": series.series_number,
                  "description": safe_token(series.description, 64), "modality": series.modality,
                  "shape": list(volume.spatial_shape), "warnings": volume.meta.get("warnings", [])}
        write_text_atomic(sidecar, json.dumps(record, indent=1))
        return Converted(series.name, output=target, warnings=tuple(record["warnings"]))
    except MedsegError as exc:
        return Converted(series.name, error=str(exc))
    except Exception as exc:  # one broken series must never stop the others
        return Converted(series.name, error=f"{series.name}: {unexpected(exc)}")


def _holds(sidecar: Path, series) -> bool:
    try:
        return json.loads(sidecar.read_text()).get("series_sha256") == series_digest(series)
    except (OSError, ValueError, AttributeError):
        return False
