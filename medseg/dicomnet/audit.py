"""The node's audit trail: every line the node logs (start, refusals, series received, segmented, queued,
sent, failed, stop) plus one line per association (calling AE, address, instances stored and refused, series
hashes, released or aborted), with a UTC time, in ``OUT/audit.log``, rotated by size. Lines name series by the
hash of their UID and never carry patient names, IDs or dates."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from logging.handlers import RotatingFileHandler
from pathlib import Path

from medseg.dicomnet.access import printable_ae
from medseg.logs import LineFormatter

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.log"
MAX_BYTES, BACKUPS = 10_000_000, 9  # audit.log and audit.log.1 .. .9: at most 100 MB


class _UtcFormatter(LineFormatter):
    """``2026-12-03T10:00:00Z error: ...``: a UTC time, then the line as the console shows it, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        return f"{stamp} {' '.join(super().format(record).split())}"


def open_audit(out: Path) -> Callable[[], None]:
    """Copy every line the node's package logs (``medseg.dicomnet``) to ``out/audit.log`` (rotated) until the
    returned function is called."""
    handler = RotatingFileHandler(out / AUDIT_FILE, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
    handler.setFormatter(_UtcFormatter())
    logger = logging.getLogger("medseg.dicomnet")
    level = logger.level
    logger.setLevel(min(logging.INFO, logger.getEffectiveLevel()))  # the audit has every line, even with --quiet
    logger.addHandler(handler)

    def close() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()

    return close


class AssociationLog:
    """Counts per open association, logged as one line when its connection closes. Thread-safe: each
    association runs in its own thread."""

    def __init__(self):
        self._lock, self._open = threading.Lock(), {}

    def count(self, assoc, series: str, stored: bool) -> None:
        """Note one C-STORE on ``assoc``: for ``series`` (a UID hash), stored or refused."""
        with self._lock:
            counts = self._open.setdefault(id(assoc), {"stored": 0, "refused": 0, "series": set()})
            counts["stored" if stored else "refused"] += 1
            if series:
                counts["series"].add(series)

    def established(self, event) -> None:
        """EVT_ESTABLISHED handler: start counting."""
        with self._lock:
            self._open.setdefault(id(event.assoc), {"stored": 0, "refused": 0, "series": set()})

    def closed(self, event) -> None:
        """EVT_CONN_CLOSE handler: the association's line (nothing for one that was never established)."""
        with self._lock:
            counts = self._open.pop(id(event.assoc), None)
        if counts is None:
            return
        assoc = event.assoc
        outcome = "released" if assoc.is_released else "aborted"
        series = ", ".join(sorted(counts["series"])) or "none"
        log.info(f"association from '{printable_ae(assoc.requestor.ae_title)}' at {assoc.requestor.address}: "
                 f"{counts['stored']} instance(s) stored, {counts['refused']} refused, series {series}; {outcome}")
