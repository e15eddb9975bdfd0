"""DICOM networking client (pynetdicom): name a peer, C-ECHO it, C-STORE files to it, and send the DICOM SEGs
of a `medseg infer` output folder."""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from medseg.errors import MedsegError, one_line
from medseg.infer.outputs import WRITERS

log = logging.getLogger(__name__)

# C-STORE statuses that mean "stored": success, and the warnings "coerced", "elements discarded",
# "dataset does not match SOP class" (the peer kept the instance).
STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class Peer:
    """A DICOM application entity to connect to."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_peer(text: str) -> Peer:
    """Parse ``AE@HOST:PORT`` (e.g. ``ORTHANC@10.0.0.5:4242``).

    Raises:
        MedsegError: when a part is missing, the AE title is longer than 16 characters or has a
            backslash, or the port is not 1..65535.
    """
    ae_title, at, address = text.partition("@")
    host, colon, port = address.rpartition(":")
    ae_title = ae_title.strip()
    if not (at and colon and ae_title and host and port.isdigit()) or not 0 < int(port) < 65536:
        raise MedsegError(f"expected AE@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242), got '{text}'")
    if len(ae_title) > 16 or "\\" in ae_title:
        raise MedsegError(f"AE title '{ae_title}' must be at most 16 characters without a backslash")
    return Peer(ae_title, host, int(port))


def echo_peer(peer: Peer, calling_ae: str = "MEDSEG", timeout_s: float = 30.0,
              tls: ssl.SSLContext | None = None) -> None:
    """C-ECHO ``peer``.

    Args:
        timeout_s: Seconds to wait for the connection and for each answer.
        tls: Associate over TLS with this context (see :mod:`medseg.dicomnet.tls`); None: plain TCP.

    Raises:
        MedsegError: when the association is refused or the answer is not success.
    """
    ae = _client(calling_ae, timeout_s)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, peer, tls)
    try:
        status = assoc.send_c_echo()
    finally:
        _close(assoc)
    if not status or status.Status != 0x0000:
        raise MedsegError(f"C-ECHO to {peer} failed ({_status_text(status)})")


def send_files(peer: Peer, files: Iterable[str | Path], calling_ae: str = "MEDSEG", timeout_s: float = 60.0,
               tls: ssl.SSLContext | None = None) -> int:
    """C-STORE DICOM files to ``peer`` over one association, each in its own transfer syntax.

    Args:
        timeout_s: Seconds to wait for the connection and for each answer.
        tls: As for :func:`echo_peer`.

    Returns:
        How many files were sent (all of them: any failure raises).

    Raises:
        MedsegError: when a file is not DICOM, the peer refuses the association or the file's SOP
            class/transfer syntax, or answers a C-STORE with a failure status (naming the first file).
    """
    files = [Path(f) for f in files]
    if not files:
        return 0
    ae = _client(calling_ae, timeout_s)
    syntaxes: dict[str, set[str]] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            sop_class, syntax = str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)
        except Exception as exc:
            raise MedsegError(f"cannot send: not a DICOM file with file meta ({type(exc).__name__})", path) from None
        syntaxes.setdefault(sop_class, set()).add(syntax)
    for sop_class, found in syntaxes.items():
        ae.add_requested_context(sop_class, sorted(found))
    assoc = _associate(ae, peer, tls)
    failed: list[tuple[Path, str]] = []
    try:
        for path in files:
            if not assoc.is_established:
                failed.append((path, "association ended early"))
                continue
            try:
                status = assoc.send_c_store(path)
            except ValueError as exc:  # the peer accepted no presentation context for this file
                failed.append((path, one_line(exc)))
                continue
            if not status or status.Status not in STORED_STATUSES:
                failed.append((path, _status_text(status)))
    finally:
        _close(assoc)
    if failed:
        path, why = failed[0]
        raise MedsegError(f"C-STORE to {peer} failed for {len(failed)} of {len(files)} file(s), first: {why}", path)
    return len(files)


def _client(calling_ae: str, timeout_s: float):
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    return ae


def _associate(ae, peer: Peer, tls: ssl.SSLContext | None = None):
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=(tls, peer.host) if tls else None)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
        raise MedsegError(f"cannot associate with {peer} ({why})")
    return assoc


def _close(assoc) -> None:
    if assoc.is_established:
        assoc.release()


def _status_text(status) -> str:
    if not status or "Status" not in status:
        return "no answer: connection lost or timed out"
    return f"status 0x{int(status.Status):04X}"


def listed_dicom_outputs(out_dir: str | Path) -> list[Path]:
    """The DICOM outputs (the writers' with ``dicom`` set: DICOM SEG, RTSTRUCT) named by the case JSONs of a
    `medseg infer` output folder.

    Raises:
        MedsegError: when a case JSON names a file that is not there.
    """
    names = [writer.name for writer in WRITERS if writer.dicom]
    found = []
    for path in sorted(Path(out_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # not a case JSON
        outputs = record.get("outputs") if isinstance(record, dict) else None
        for name in names if isinstance(outputs, dict) else []:
            if outputs.get(name):
                file = Path(out_dir) / outputs[name]  # names are relative to the output folder
                if not file.is_file():
                    raise MedsegError(f"the {name} output it lists is missing: {file}", path)
                found.append(file)
    return found


def send_results(out_dir: str | Path, peer: Peer, calling_ae: str = "MEDSEG") -> int:
    """C-STORE every DICOM output (DICOM SEG, RTSTRUCT) listed in a `medseg infer` output folder to ``peer``
    (one association).

    Returns:
        Number of files sent.

    Raises:
        MedsegError: as :func:`send_files` (nothing is retried).
    """
    files = listed_dicom_outputs(out_dir)
    if not files:
        log.info(f"no DICOM output (SEG, RTSTRUCT) to send in {out_dir}")
        return 0
    sent = send_files(peer, files, calling_ae=calling_ae)
    log.info(f"sent {sent} DICOM object(s) to {peer}")
    return sent
