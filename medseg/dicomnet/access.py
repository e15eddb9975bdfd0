"""Who may associate with the node: an allow list of ``AE@HOST[:PORT]`` peers, checked when an association is
requested (the calling AE title and the address it calls from must both match one entry, and the called AE
title must be the node's own). Without a list only this machine may call, and the node listens on loopback.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import UsageError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# A-ASSOCIATE-RJ: rejected permanent (0x01) by the service user (0x01), with these diagnostics.
REJECT_CALLING_AE, REJECT_CALLED_AE = 0x03, 0x07


@dataclass(frozen=True)
class AllowedPeer:
    """One allow-list entry: a calling AE title and the addresses its host name resolves to (IPs as text).

    ``port`` is where the peer listens (as in Orthanc's ``DicomModalities``); a peer calls from a passing
    port, so it plays no part in admission.
    """

    ae_title: str
    host: str
    addresses: frozenset[str]
    port: int | None = None

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}" + (f":{self.port}" if self.port else "")


def parse_allowed(text: str, resolve: Callable[[str], Iterable[str]] | None = None) -> AllowedPeer:
    """Parse ``AE@HOST[:PORT]`` (e.g. ``ORTHANC@10.0.0.5`` or ``PACS@pacs.local:104``), resolving HOST.

    Raises:
        UsageError: when a part is missing or malformed, or HOST does not resolve.
    """
    ae_title, at, address = str(text).strip().partition("@")
    host, colon, port = address.rpartition(":") if address.count(":") == 1 else (address, "", "")
    ae_title = ae_title.strip()
    if not (at and ae_title and host) or (colon and not (port.isdigit() and 0 < int(port) < 65536)):
        raise UsageError(f"--allow expects AE@HOST[:PORT] (e.g. ORTHANC@10.0.0.5), got '{text}'")
    if len(ae_title) > 16 or "\\" in ae_title:
        raise UsageError(f"--allow: AE title '{ae_title}' must be at most 16 characters without a backslash")
    addresses = frozenset((resolve or _resolve)(host))
    if not addresses:
        raise UsageError(f"--allow: host '{host}' does not resolve to an address")
    return AllowedPeer(ae_title, host, addresses, int(port) if colon else None)


def _resolve(host: str) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
    except OSError:
        return []


def read_allow_file(path: str | Path) -> list[str]:
    """The ``AE@HOST[:PORT]`` entries of a YAML allow file: a list of them, or ``{allow: [...]}``.

    Raises:
        UsageError: when the file cannot be read or is not such a list.
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read the allow file ({getattr(exc, 'strerror', None) or type(exc).__name__})",
                         path) from None
    if isinstance(data, dict) and set(data) == {"allow"}:
        data = data["allow"]
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise UsageError("an allow file is a YAML list of AE@HOST[:PORT] entries", path)
    return data


def listen_host(host: str | None, allowed: list[AllowedPeer]) -> str:
    """The address to listen on: ``host``, or every interface with an allow list and loopback without one.

    Raises:
        UsageError: when a non-loopback ``host`` is asked for without an allow list.
    """
    if not allowed:
        if host is not None and not _is_loopback(host):
            raise UsageError(f"--host {host} needs --allow or --allow-file: without an allow list the node "
                             f"listens on {LOOPBACK} only")
        return host or LOOPBACK
    return host or "0.0.0.0"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def refusal(calling_ae: str, called_ae: str, address: str, our_ae: str,
            allowed: list[AllowedPeer]) -> tuple[int, str] | None:
    """Why an association request must be refused: (A-ASSOCIATE-RJ diagnostic, reason), or None to accept.

    Without an allow list only loopback addresses may call.
    """
    calling_ae, called_ae = calling_ae.strip(), called_ae.strip()
    if called_ae != our_ae.strip():
        return REJECT_CALLED_AE, f"called AE title '{called_ae}' is not ours"
    if not allowed:
        if _is_loopback(address):
            return None
        return REJECT_CALLING_AE, "not on this machine and no allow list"
    if any(peer.ae_title == calling_ae and address in peer.addresses for peer in allowed):
        return None
    if any(peer.ae_title == calling_ae for peer in allowed):
        return REJECT_CALLING_AE, "address not allowed for this AE title"
    return REJECT_CALLING_AE, "calling AE title not on the allow list"


def check_association(event, our_ae: str, allowed: list[AllowedPeer]) -> None:
    """EVT_REQUESTED handler: reject (A-ASSOCIATE-RJ) a request that :func:`refusal` refuses, in one log line."""
    request = event.assoc.requestor.primitive
    calling = _ae_text(request.calling_ae_title)
    address = event.assoc.requestor.address
    found = refusal(calling, _ae_text(request.called_ae_title), address, our_ae, allowed)
    if found is not None:
        diagnostic, reason = found
        event.assoc.acse.send_reject(0x01, 0x01, diagnostic)
        event.assoc.kill()  # waits until the reject is sent and the connection closed, as pynetdicom's own checks do
        log.warning(f"refused association from '{printable_ae(calling)}' at {address}: {reason}")


def _ae_text(value) -> str:
    return (value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)).strip()


def printable_ae(text: str) -> str:
    """An AE title as it may appear in a log line: printable ASCII, at most 16 characters."""
    return "".join(ch if ch.isprintable() and ch.isascii() else "?" for ch in text)[:16]
