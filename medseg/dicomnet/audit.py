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

AUDIT_FILE = "audit.log"
MAX_BYTES, BACKUPS = 10_000_000, 9  # audit.log and audit.log.1 .. .9: at most 100 MB


class _UtcFormatter(logging.Formatter):
    converter = time.gmtime

    def formatTime(self, record, datefmt=None):  # noqa: N802 (logging's name)
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", self.converter(record.created))


def open_audit(out: Path) -> tuple[Callable[[str], None], Callable[[], None]]:
    """A function that appends one line to ``out/audit.log`` (rotated), and one that closes the file."""
    handler = RotatingFileHandler(out / AUDIT_FILE, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
    handler.setFormatter(_UtcFormatter("%(asctime)s %(message)s"))
    lock = threading.Lock()

    def write(line: str) -> None:
        record = logging.LogRecord("medseg.audit", logging.INFO, "", 0, " ".join(line.split()), None, None)
        with lock:
            handler.handle(record)

    return write, handler.close


def tee(*sinks: Callable[[str], None]) -> Callable[[str], None]:
    """One echo function that passes each line to every sink."""
    def echo(line: str) -> None:
        for sink in sinks:
            sink(line)

    return echo


class AssociationLog:
    """Counts per open association, logged as one line when its connection closes. Thread-safe: each
    association runs in its own thread."""

    def __init__(self, echo: Callable[[str], None]):
        self._echo, self._lock, self._open = echo, threading.Lock(), {}

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
        self._echo(f"association from '{printable_ae(assoc.requestor.ae_title)}' at {assoc.requestor.address}: "
                   f"{counts['stored']} instance(s) stored, {counts['refused']} refused, series {series}; {outcome}")
