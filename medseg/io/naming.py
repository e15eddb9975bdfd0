"""Safe output names: derived from series numbers and sanitised descriptions, never raw tag text."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9]+")


def safe_token(text: str, max_len: int = 40) -> str:
    """Keep ASCII letters and digits, join the rest with ``_``, cap the length; ``""`` if nothing is left."""
    return _UNSAFE.sub("_", str(text)).strip("_")[:max_len].strip("_")


def series_file_stem(index: int, series_number: int | None, description: str) -> str:
    """File stem for a converted series, e.g. ``003_s11_T1post``.

    The discovery index keeps names unique even when series numbers repeat or are missing.
    """
    parts = [f"{index:03d}"]
    if series_number is not None:
        parts.append(f"s{int(series_number)}")
    desc = safe_token(description)
    if desc:
        parts.append(desc)
    return "_".join(parts)
