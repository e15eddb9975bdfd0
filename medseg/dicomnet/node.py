"""`medseg serve`: a DICOM node that segments the series a PACS sends it and sends the DICOM SEG back.

A C-STORE receiver (pynetdicom) writes every arriving instance to ``STORE/<hash of its
SeriesInstanceUID>/<hash of its SOPInstanceUID>.dcm`` (atomically, before answering success), so neither
folder nor file names carry tag text. When a series folder has received nothing for ``quiet_s`` seconds
it is segmented exactly as `medseg infer` segments a DICOM folder (same series checks, same outputs in the
output folder) and its DICOM outputs (the DICOM SEG) are queued in the outbox (:mod:`medseg.dicomnet.outbox`)
for the ``send_to`` peer, which the same thread empties between series; a series that cannot have one (an
enhanced multi-frame series) is an error line that says why. A failing series is logged in one line and the
node goes on. Segmentation runs in the calling thread, one series at a time, while the receiver keeps
accepting instances in its own threads. Who may associate: :mod:`medseg.dicomnet.access`.

A series folder whose instances are all older than its ``.medseg-done`` marker (touched once its SEGs are
queued) is finished; any other folder found in the store at start (received just before a stop or a crash,
or being segmented then) is segmented again, superseding its SEGs still unsent. Together with the outbox
this delivers each SEG of a complete series once, whenever the process is killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from medseg.dicomnet import outbox
from medseg.dicomnet.access import AllowedPeer, check_association, listen_host
from medseg.dicomnet.audit import AssociationLog, open_audit
from medseg.dicomnet.budget import GB, StoreBudget
from medseg.dicomnet.client import Peer, echo_peer, send_files
from medseg.dicomnet.tls import TlsFiles, client_context, server_context
from medseg.errors import MedsegError, unexpected
from medseg.infer.case import segment_case
from medseg.infer.inputs import SeriesFilter, discover
from medseg.infer.options import InferOptions
from medseg.infer.outputs import cannot_write, output_path, writers_for
from medseg.infer.predictor import Predictor
from medseg.io.atomic import make_output_dir, remove_stale_temporaries, write_bytes_atomic

log = logging.getLogger(__name__)

DONE_MARKER = ".medseg-done"
# C-STORE statuses the receiver answers: success, "out of resources" (could not write), "cannot understand".
STATUS_SUCCESS, STATUS_OUT_OF_RESOURCES, STATUS_CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
POLL_SECONDS = 0.2  # how often the scheduler looks for quiet series and for a stop request
OUTBOX_SCAN_S = 5.0  # how often it reads the outbox for sends that are due, besides after each series


@dataclass
class NodeSettings:
    """What `medseg serve` listens as, where it writes, and where it sends results.

    Attributes:
        out: Output folder for results (label maps, case JSONs, DICOM SEGs, as `medseg infer` writes them).
        store: Folder for received instances; ``out / "incoming"`` when None.
        send_to: Peer that receives each DICOM SEG; None keeps the SEGs in ``out`` only.
        quiet_s: Seconds without a new instance after which a series counts as complete.
        allowed: Peers that may associate; empty: only this machine (loopback).
        host: Address to listen on; None: every interface with an allow list, else loopback.
        retry_s: Seconds before a failed send is tried again, doubling each time up to ``max_retry_s``.
        max_store_gb, min_free_gb: Instances that would make the store larger, or leave less free on its disk,
            are refused with "out of resources" before anything is written.
        tls: Certificate, key and CA for TLS on the listener and towards ``send_to``; None: plain TCP.
    """

    ae_title: str = "MEDSEG"
    host: str | None = None
    port: int = 11112
    out: Path = Path("medseg-node")
    store: Path | None = None
    send_to: Peer | None = None
    quiet_s: float = 10.0
    series: SeriesFilter | None = None
    device: str = "auto"
    precision: str = "auto"
    allowed: list[AllowedPeer] = field(default_factory=list)
    retry_s: float = 30.0
    max_retry_s: float = 3600.0
    max_store_gb: float | None = None
    min_free_gb: float = 0.0
    tls: TlsFiles | None = None

    @property
    def store_dir(self) -> Path:
        return self.store if self.store is not None else self.out / "incoming"

    @property
    def outbox_dir(self) -> Path:
        return self.out / "outbox"


class SeriesTracker:
    """Series folders with instances not yet segmented, each with the time its last instance arrived.

    Thread-safe: the receiver threads touch folders, the scheduler takes the quiet ones.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[Path, float] = {}  # folder -> time.monotonic() of its last instance, s

    def touch(self, folder: Path) -> bool:
        """Note an instance arriving in ``folder``; True when the folder was not pending before."""
        with self._lock:
            new = folder not in self._last
            self._last[folder] = time.monotonic()
            return new

    def quiet(self, quiet_s: float) -> list[tuple[Path, float]]:
        """Folders that received nothing for ``quiet_s`` seconds, oldest first, with their last arrival time."""
        now = time.monotonic()
        with self._lock:
            ready = [(folder, last) for folder, last in self._last.items() if now - last >= quiet_s]
        return sorted(ready, key=lambda item: item[1])

    def finish(self, folder: Path, last: float) -> None:
        """Forget ``folder`` unless an instance arrived after ``last`` (then it is segmented again later)."""
        with self._lock:
            if self._last.get(folder) == last:
                del self._last[folder]

    def pending(self) -> int:
        with self._lock:
            return len(self._last)

    def names(self) -> set[str]:
        """Names (UID hashes) of the folders waiting."""
        with self._lock:
            return {folder.name for folder in self._last}


def uid_digest(uid: str) -> str:
    """First 16 hex digits of the SHA-256 of a DICOM UID: a file or folder name that reveals no tag text."""
    return hashlib.sha256(uid.strip().encode()).hexdigest()[:16]


def store_instance(event, store: Path, tracker: SeriesTracker, budget: StoreBudget,
                   associations: AssociationLog) -> int:
    """C-STORE handler: write the instance under ``store`` (atomically, fsynced), then answer success; the
    answer is counted for the association's audit line.

    Returns:
        The C-STORE status: success only once the file is on disk; "cannot understand" for an instance
        without a SeriesInstanceUID; "out of resources" when ``budget`` has no room for it (nothing written)
        or it cannot be written (nothing left: the temporary file is removed).
    """
    status, series = _store(event, store, tracker, budget)
    associations.count(event.assoc, series, status == STATUS_SUCCESS)
    return status


def _store(event, store: Path, tracker: SeriesTracker, budget: StoreBudget) -> tuple[int, str]:
    """:func:`store_instance`'s work: the status and the series' UID hash ("" when unknown)."""
    try:
        series_uid = str(event.dataset.get("SeriesInstanceUID", "") or "")
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        data = event.encoded_dataset()
    except Exception as exc:  # a dataset pydicom cannot decode
        log.error(f"refused an instance that cannot be decoded ({type(exc).__name__})")
        return STATUS_CANNOT_UNDERSTAND, ""
    if not series_uid or not sop_uid:
        log.error("refused an instance without SeriesInstanceUID or SOPInstanceUID")
        return STATUS_CANNOT_UNDERSTAND, ""
    folder = store / uid_digest(series_uid)
    path = folder / f"{uid_digest(sop_uid)}.dcm"
    if full := budget.reserve(len(data)):
        log.error(f"series {folder.name}: refused an instance: {full}")
        return STATUS_OUT_OF_RESOURCES, folder.name
    try:
        replaced = path.stat().st_size if path.exists() else 0  # a re-sent instance replaces its own file
        write_bytes_atomic(path, data)
    except (OSError, MedsegError) as exc:
        budget.release(len(data))
        log.error(f"series {folder.name}: cannot write an instance ({getattr(exc, 'strerror', None) or exc})")
        return STATUS_OUT_OF_RESOURCES, folder.name
    budget.release(replaced)
    if tracker.touch(folder):
        log.info(f"series {folder.name}: receiving")
    return STATUS_SUCCESS, folder.name


def unfinished_folders(store: Path) -> list[Path]:
    """Series folders in ``store`` holding an instance newer than their done marker (or without one).

    Temporary files found on the way are removed first: the node owns its store, so any is a write that a
    crash cut short (never acknowledged).
    """
    found = []
    for folder in sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")):
        remove_stale_temporaries(folder, older_than_s=0)
        marker = folder / DONE_MARKER
        done_at = marker.stat().st_mtime if marker.exists() else -1.0
        if any(f.stat().st_mtime > done_at for f in folder.glob("*.dcm")):
            found.append(folder)
    return found


def segment_folder(predictor, folder: Path, settings: NodeSettings) -> int:
    """Segment every selected series in one store folder, write outputs to ``settings.out`` and queue each
    DICOM output (the writers' with ``dicom`` set: the DICOM SEG) for ``settings.send_to``.

    Returns:
        Number of series segmented.

    Raises:
        MedsegError: when no series is selected (the reasons in one line), one fails to segment or queue, or
            one cannot have a DICOM output to send (an enhanced multi-frame series).
    """
    options = InferOptions(overwrite=True, series=settings.series)
    cases, skipped = discover(folder, settings.series)
    if not cases:
        raise MedsegError(f"nothing to segment ({'; '.join(skipped) or 'no DICOM image series'})")
    for line in skipped:
        log.info(f"series {folder.name}: {line}")
    for case in cases:
        if case.refused:
            log.error(f"series {folder.name}: {case.id} ({case.description}) refused: {case.refused}")
            continue
        record = segment_case(predictor, case, settings.out, options)
        done = f"{case.id} ({case.description}) segmented in {record['seconds']:.1f} s"
        log.info(f"series {folder.name}: {done}{deliver(case, record, options, settings, done, folder.name)}")
    return len(cases)


def deliver(case, record: dict, options: InferOptions, settings: NodeSettings, done: str, series: str) -> str:
    """Queue a segmented case's DICOM outputs (the writers' with ``dicom`` set: the DICOM SEG) in the outbox
    for ``settings.send_to`` (when set); the end of its log line.

    Raises:
        MedsegError: starting with ``done``, when the case's input cannot have a DICOM output (saying why) or
            it cannot be queued.
    """
    files = {writer.title: output_path(settings.out, record["outputs"][writer.name])
             for writer in writers_for(case, options) if writer.dicom}
    if not files:
        raise MedsegError(f"{done} but {'; '.join(cannot_write(case, options))}")
    where = "".join(f", {title} in {path}" for title, path in files.items())
    if settings.send_to is None:
        return where
    try:
        for path in files.values():
            outbox.enqueue(settings.outbox_dir, path, series, uid_digest)
    except MedsegError as exc:
        raise MedsegError(f"{done}{where}, kept but not queued: {exc.problem}") from None
    return f"{where}, queued for {settings.send_to}"


def send_due(settings: NodeSettings, hold: set[str], stop: threading.Event,
             tls: ssl.SSLContext | None = None) -> None:
    """Try every outbox entry whose time has come (except the series in ``hold``), one log line each, over TLS
    with the ``tls`` context when given."""
    if settings.send_to is None:
        return
    peer = settings.send_to

    def send(path: Path) -> None:
        send_files(peer, [path], calling_ae=settings.ae_title, tls=tls)

    for path, entry in outbox.due(settings.outbox_dir, hold):
        if stop.is_set():
            return
        ending = outbox.attempt(path, entry, send, str(peer), settings.retry_s, settings.max_retry_s)
        level = logging.INFO if entry["state"] == outbox.SENT else logging.ERROR
        log.log(level, f"series {entry['series']}: DICOM SEG {path.stem} {ending}")


def process_folder(predictor, folder: Path, settings: NodeSettings) -> bool:
    """Segment one quiet series folder, log any failure in one line, and mark the folder done.

    SEGs of the folder still waiting in the outbox are superseded first: the series changed since.

    Returns:
        True when it was segmented (and its SEGs queued), False when it failed.
    """
    started = time.time()
    superseded = outbox.supersede(settings.outbox_dir, folder.name)
    if superseded:
        log.info(f"series {folder.name}: {superseded} unsent DICOM SEG(s) superseded (the series changed)")
    try:
        segment_folder(predictor, folder, settings)
        ok = True
    except MedsegError as exc:
        log.error(f"series {folder.name}: {exc}")
        ok = False
    except Exception as exc:  # one broken series must not stop the node
        log.error(f"series {folder.name}: {unexpected(exc)}")
        ok = False
    marker = folder / DONE_MARKER
    with contextlib.suppress(OSError):  # without a marker the folder is only segmented again at the next start
        marker.touch()
        os.utime(marker, (started, started))  # instances that arrived while segmenting stay newer than it
    return ok


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set (installs their handlers; call from the main thread)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_node(model_dir: str | Path, settings: NodeSettings, stop: threading.Event) -> None:
    """Run the node until ``stop`` is set: receive, segment quiet series, send SEGs. Every line it logs is
    also written to the audit log ``OUT/audit.log``.

    On stop the series being segmented is finished, series still waiting are left in the store (segmented
    at the next start), and the association server is shut down.

    Raises:
        MedsegError: when the model cannot be loaded or the port cannot be opened.
    """
    host = listen_host(settings.host, settings.allowed)
    tls = (server_context(settings.tls), client_context(settings.tls)) if settings.tls else (None, None)
    predictor = Predictor.from_dir(model_dir, device=settings.device, precision=settings.precision)
    make_output_dir(settings.out)
    close_audit = open_audit(settings.out)
    try:
        _serve(predictor, host, tls, settings, stop)
    finally:
        close_audit()


def _serve(predictor, host: str, tls: tuple, settings: NodeSettings, stop: threading.Event) -> None:
    """:func:`run_node` once the model is loaded: recover the store and outbox, listen, and loop. ``tls``:
    the server's and the client's SSL contexts, or two Nones."""
    store = make_output_dir(settings.store_dir)
    tracker = SeriesTracker()
    for folder in unfinished_folders(store):
        tracker.touch(folder)
    outbox.tidy(settings.outbox_dir)
    budget = StoreBudget(store, None if settings.max_store_gb is None else settings.max_store_gb * GB,
                         settings.min_free_gb * GB)
    if settings.send_to is not None:
        try:
            echo_peer(settings.send_to, calling_ae=settings.ae_title, tls=tls[1])
        except MedsegError as exc:
            log.warning(f"{exc}; SEGs that cannot be sent stay in {settings.out}")
    server = _start_server(host, settings, tls[0], [store, tracker, budget, AssociationLog()])
    peers = ", ".join(map(str, settings.allowed)) or "this machine only (no allow list)"
    secure = "" if not settings.tls else " over TLS" + (" (callers' certificates checked)" if settings.tls.ca else "")
    log.info(f"listening as {settings.ae_title} on {host}:{settings.port}{secure} for {peers}; "
             f"model {predictor.model_id}; "
         f"instances in {store} ({budget.describe()}); {tracker.pending()} unfinished series from before")
    next_scan = 0.0  # time.monotonic() of the next outbox scan
    try:
        while not stop.wait(POLL_SECONDS):
            quiet = tracker.quiet(settings.quiet_s)
            for folder, last in quiet:
                if stop.is_set():
                    break
                process_folder(predictor, folder, settings)
                tracker.finish(folder, last)
            if quiet or time.monotonic() >= next_scan:
                send_due(settings, tracker.names(), stop, tls[1])
                next_scan = time.monotonic() + OUTBOX_SCAN_S
    finally:
        for assoc in server.active_associations:  # a peer idling on an open association must not delay the stop
            assoc.abort()  # unacknowledged instances are the sender's to resend
        server.shutdown()
    log.info(f"stopped; {tracker.pending()} series left for the next start")


def _start_server(host: str, settings: NodeSettings, tls, store_args: list):
    """Start the association server (C-ECHO, C-STORE of every storage class; TLS only, with the ``tls``
    context) with the access check, the C-STORE handler (called with ``store_args``) and the association
    audit lines.

    Raises:
        MedsegError: when the port cannot be opened.
    """
    associations = store_args[-1]
    ae = AE(ae_title=settings.ae_title)
    ae.require_called_aet = True
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    handlers = [(evt.EVT_REQUESTED, check_association, [settings.ae_title, settings.allowed]),
                (evt.EVT_ESTABLISHED, associations.established), (evt.EVT_CONN_CLOSE, associations.closed),
                (evt.EVT_C_STORE, store_instance, store_args)]
    try:
        return ae.start_server((host, settings.port), block=False, evt_handlers=handlers, ssl_context=tls)
    except OSError as exc:
        raise MedsegError(f"cannot listen on {host}:{settings.port} ({exc.strerror or exc})") from None
