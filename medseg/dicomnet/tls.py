"""DICOM over TLS for the node (Orthanc's ``DicomTlsEnabled``): the listener only speaks TLS when given a
certificate and key, asks every caller for a certificate signed by the CA when one is given (mutual
authentication), and the same files secure the associations the node opens to ``--send-to``."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import UsageError, one_line

HANDSHAKE_TIMEOUT_S = 10.0  # pynetdicom shakes hands in its accepting thread: a silent caller must not hold it


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: this node's certificate and key, and the CA that peers' certificates must be signed by."""

    cert: Path
    key: Path
    ca: Path | None = None


class _HandshakeTimeoutContext(ssl.SSLContext):
    """A server context whose handshake gives up after ``HANDSHAKE_TIMEOUT_S`` (then the socket blocks again,
    as pynetdicom expects)."""

    def wrap_socket(self, sock, *args, **kwargs):
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        wrapped = super().wrap_socket(sock, *args, **kwargs)
        wrapped.settimeout(None)
        return wrapped


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The listener's context: TLS 1.2 or later, our certificate; with a CA, callers must present a
    certificate it signed.

    Raises:
        UsageError: when a file cannot be read or the key does not match the certificate.
    """
    context = _HandshakeTimeoutContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, files)
    if files.ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """The context for associations the node opens: the peer's certificate is checked against the CA (the
    system's CAs without one) and its host name or address; ours is presented for mutual authentication.

    Raises:
        UsageError: as :func:`server_context`.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, files)
    return context


def _load(context: ssl.SSLContext, files: TlsFiles) -> None:
    for flag, path in (("--tls-cert", files.cert), ("--tls-key", files.key), ("--tls-ca", files.ca)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{flag}: no such file", path)
    try:
        context.load_cert_chain(files.cert, files.key)
    except OSError as exc:  # ssl.SSLError too
        raise UsageError(f"--tls-cert/--tls-key cannot be used ({_why(exc)})", files.cert) from None
    if files.ca is not None:
        try:
            context.load_verify_locations(cafile=str(files.ca))
        except OSError as exc:
            raise UsageError(f"--tls-ca cannot be used ({_why(exc)})", files.ca) from None


def _why(exc: OSError) -> str:
    return str(getattr(exc, "reason", None) or exc.strerror or one_line(exc))
