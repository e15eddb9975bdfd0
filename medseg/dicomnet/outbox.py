"""The node's outbox: every DICOM SEG to send, with the peer's answers, kept on disk so that a restart neither
loses nor repeats a delivery.

Each SEG is one entry in ``OUT/outbox/``: ``<key>.dcm``, a hard link to (or copy of) the SEG as written, and
``<key>.json``, written atomically after it, which makes the entry exist. ``key`` is the hash of the SEG's
SOPInstanceUID, so queueing the same SEG twice is one entry. An entry is ``pending`` until the peer accepts it
(``sent``: never sent again) or a newer SEG of the same series replaces it (``superseded``); a finished
entry is rewritten with its state, then moved to ``outbox/done/`` (its SEG link removed; the SEG stays in
the output folder), so the pending ones are the only ``*.json`` left in ``outbox/``. A failed send
is retried after ``retry_s``, doubling each time up to ``max_retry_s``; the time of the next try is in the
entry, so the backoff survives restarts. The one window in which a SEG can reach the peer twice is a crash
between the peer's answer and its recording: the resent SEG has the same SOPInstanceUID, which a PACS keeps
as one instance.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pydicom

from medseg.errors import MedsegError, unexpected
from medseg.io.atomic import make_output_dir, write_bytes_atomic, write_text_atomic

PENDING, SENT, SUPERSEDED = "pending", "sent", "superseded"
KEEP_ANSWERS = 5  # the last answers kept in an entry
DONE = "done"  # subfolder of finished (sent or superseded) entries


def _now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_entry(path: Path) -> dict | None:
    """An entry's JSON, or None when it cannot be read (it is then left alone)."""
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and entry.get("state") in (PENDING, SENT, SUPERSEDED) else None


def write_entry(path: Path, entry: dict) -> None:
    write_text_atomic(path, json.dumps(entry, indent=1, sort_keys=True) + "\n")


def enqueue(outbox: Path, seg: Path, series: str, key_of: Callable[[Path], str]) -> Path:
    """Queue ``seg`` (a SEG of the series stored under the hash ``series``); returns its entry's JSON path.

    Args:
        key_of: Turns the SEG's SOPInstanceUID into the entry's file name (a hash).

    Raises:
        MedsegError: when the SEG cannot be read or the entry cannot be written.
    """
    try:
        uid = str(pydicom.dcmread(seg, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
    except Exception as exc:
        raise MedsegError(f"cannot queue the SEG ({type(exc).__name__})", seg) from None
    key = key_of(uid)
    entry_path = make_output_dir(outbox) / f"{key}.json"
    if read_entry(entry_path) is not None or read_entry(outbox / DONE / entry_path.name) is not None:
        return entry_path  # already queued (or sent): the same SOP instance
    _link_or_copy(seg, outbox / f"{key}.dcm")
    write_entry(entry_path, {"state": PENDING, "series": series, "seg": f"{key}.dcm", "queued": _now_text(),
                             "attempts": 0, "next_try": 0.0, "answers": []})
    return entry_path


def _link_or_copy(source: Path, dest: Path) -> None:
    """Put ``source``'s content at ``dest`` (replacing it): a hard link when the file system allows, else a copy.

    The SEG in the output folder may be replaced later (a series segmented again); the link keeps this one.
    """
    temporary = dest.with_name(f".{dest.name}.link")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
        os.replace(temporary, dest)
    except OSError:
        temporary.unlink(missing_ok=True)
        try:
            write_bytes_atomic(dest, source.read_bytes())
        except OSError as exc:
            raise MedsegError(f"cannot queue the SEG ({exc.strerror or type(exc).__name__})", source) from None


def entries(outbox: Path) -> list[tuple[Path, dict]]:
    """Every readable entry, oldest first."""
    found = [(path, read_entry(path)) for path in outbox.glob("*.json")] if outbox.is_dir() else []
    return sorted(((p, e) for p, e in found if e is not None), key=lambda item: (item[1]["queued"], item[0].name))


def supersede(outbox: Path, series: str) -> int:
    """Mark the pending entries of ``series`` superseded (the series is being segmented again); how many."""
    count = 0
    for path, entry in entries(outbox):
        if entry["state"] == PENDING and entry["series"] == series:
            entry["state"] = SUPERSEDED
            finish(path, entry)
            count += 1
    return count


def due(outbox: Path, hold: set[str], now: float | None = None) -> list[tuple[Path, dict]]:
    """Pending entries whose next try has come, except those of the series in ``hold`` (waiting to be
    segmented again, which will supersede them)."""
    now = time.time() if now is None else now
    return [(p, e) for p, e in entries(outbox)
            if e["state"] == PENDING and e["next_try"] <= now and e["series"] not in hold]


def attempt(path: Path, entry: dict, send: Callable[[Path], None], peer: str, retry_s: float,
            max_retry_s: float, now: float | None = None) -> str:
    """Send one entry's SEG with ``send`` and record the answer in the entry; the end of a log line.

    On success the entry is ``sent`` and moved to ``done/`` (:func:`finish`); on a
    failure the next try is ``retry_s * 2**(attempts - 1)`` seconds on, at most ``max_retry_s``.
    """
    now = time.time() if now is None else now
    entry["attempts"] += 1
    try:
        send(path.parent / entry["seg"])
        answer, entry["state"] = "accepted", SENT
        ending = f"sent to {peer}"
    except Exception as exc:  # a failed send is retried whatever the cause
        answer = exc.problem if isinstance(exc, MedsegError) else unexpected(exc)
        delay = min(retry_s * 2 ** (entry["attempts"] - 1), max_retry_s)
        entry["next_try"] = now + delay
        ending = f"not sent to {peer} ({answer}); attempt {entry['attempts']}, next in {delay:.0f} s"
    entry["answers"] = [*entry["answers"], {"at": _now_text(), "peer": peer, "answer": answer}][-KEEP_ANSWERS:]
    if entry["state"] == SENT:
        finish(path, entry)
    else:
        write_entry(path, entry)
    return ending


def finish(path: Path, entry: dict) -> None:
    """Record a finished entry (its state set) and move it to ``done/``; a crash in between leaves a finished
    entry in place, which is never due."""
    write_entry(path, entry)
    done = make_output_dir(path.parent / DONE)
    os.replace(path, done / path.name)
    (path.parent / entry["seg"]).unlink(missing_ok=True)



def tidy(outbox: Path) -> int:
    """Remove what a crash can leave in ``outbox`` besides entries: SEG links without their JSON (the crash
    came before the entry was written; the series is segmented again) and temporary files. Call before the
    node runs; returns how many files went."""
    if not outbox.is_dir():
        return 0
    gone = [path for path in outbox.iterdir() if path.is_file() and (path.name.startswith(".") or (
        path.suffix == ".dcm" and not path.with_suffix(".json").exists()))]
    for path in gone:
        path.unlink(missing_ok=True)
    return len(gone)
