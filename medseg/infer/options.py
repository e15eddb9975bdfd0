"""What a `medseg infer` run is asked for: :class:`InferOptions` (the CLI maps its flags onto these)."""

from __future__ import annotations

from dataclasses import dataclass

from medseg.infer.inputs import SeriesFilter


@dataclass
class InferOptions:
    """Options of a batch run (the CLI maps its flags onto these)."""

    overwrite: bool = False
    probabilities: bool = False
    dicom_seg: bool = True
    rtstruct: bool = False
    series_number: int = 9000  # of the DICOM SEG; the RTSTRUCT takes the next number
    series_description: str = "medseg"
    mirror: bool | None = None
    overlap: float | None = None
    focus: bool | None = None
    series: SeriesFilter | None = None
    shard: tuple[int, int] | None = None  # (index, count): take every count-th case from index
    fail_on_flags: bool = False
