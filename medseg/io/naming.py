"""Safe output names: derived from series numbers, hashes of series UIDs and sanitised descriptions, never
from raw tag text or discovery order."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9]+")


def safe_token(text: str, max_len: int = 40) -> str:
    """Keep ASCII letters and digits, join the rest with ``_``, cap the length; ``""`` if nothing is left."""
    return _UNSAFE.sub("_", str(text)).strip("_")[:max_len].strip("_")


def series_digest(series) -> str:
    """SHA-256 (hex) of a series' identity (SeriesInstanceUID, or folder when it has none, plus split part)."""
    return hashlib.sha256(series.key.encode()).hexdigest()


def series_id(series) -> str:
    """Stable, non-identifying id of a series: ``s<number>_<8 hex of its UID's hash>[p<part>]``.

    The hash covers the UID alone (parts are appended), so ids of unsplit series never change.
    """
    digest = hashlib.sha256((series.identity or series.uid).encode()).hexdigest()[:8]
    number = f"s{series.series_number}_" if series.series_number is not None else ""
    return f"{number}{digest}{series.split_part.replace('.', 'p')}"


def series_file_stem(series) -> str:
    """File stem for a converted series, e.g. ``s11_3f2a9c1b_T1post``: its id plus the sanitised description."""
    desc = safe_token(series.description)
    return f"{series_id(series)}_{desc}" if desc else series_id(series)
