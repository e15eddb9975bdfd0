"""`medseg serve` as a node a hospital can leave running, against a real Orthanc: who may associate, delivery of
each SEG exactly once across kill -9 and restarts, storage limits, concurrent senders and the audit log."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from conftest import collect_log
from orthanc_peer import free_port, node_thread, run_orthanc, wait_for
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from medseg.cli import app
from medseg.dicomnet import outbox
from medseg.dicomnet.access import parse_allowed, refusal
from medseg.dicomnet.client import Peer, echo_peer, send_files
from medseg.dicomnet.node import NodeSettings, uid_digest
from medseg.errors import MedsegError, UsageError

STUDY1 = "dicom/hippocampus_crops/study1"
STUDY2 = "dicom/hippocampus_crops/study2"
runner = CliRunner()


@pytest.fixture(scope="module")
def model(request):
    """The model the node serves: conftest's `hippocampus_run`, or the run folder named by MEDSEG_TEST_NODE_MODEL
    (to skip its training while working on these tests)."""
    given = os.environ.get("MEDSEG_TEST_NODE_MODEL")
    return Path(given) if given else request.getfixturevalue("hippocampus_run")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """Orthanc knowing the node twice: as MEDSEG (its AE title) and as OTHER (a title the node refuses)."""
    port = free_port()
    modalities = {"node": ["MEDSEG", "127.0.0.1", port], "wrongaet": ["OTHER", "127.0.0.1", port]}
    with run_orthanc(tmp_path_factory.mktemp("orthanc"), modalities) as server:
        yield server


def series_copy(source, dest, seed: str) -> list:
    """Copy a DICOM series to ``dest`` with new study, series and instance UIDs (a different series)."""
    dest.mkdir(parents=True)
    study, series = generate_uid(entropy_srcs=[seed, "study"]), generate_uid(entropy_srcs=[seed, "series"])
    files = []
    for path in sorted(source.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[seed, path.name])
        ds.save_as(dest / path.name)
        files.append(dest / path.name)
    return files


def test_allow_list_admits_listed_peers_only(orthanc, model, data_path, tmp_path):
    settings = NodeSettings(port=orthanc.node_port, out=tmp_path / "out", quiet_s=600, device="cpu", precision="fp32",
                            allowed=[parse_allowed("ORTHANC@127.0.0.1:4242")])
    lines, stop, thread = node_thread(model, settings)
    try:
        assert "on 0.0.0.0:" in lines[-1] and "for ORTHANC@127.0.0.1:4242;" in lines[-1]
        assert orthanc.try_post("/modalities/node/echo", b"{}")  # listed: ORTHANC calling from 127.0.0.1
        series_id = orthanc.upload(sorted(data_path(STUDY1).glob("*.dcm")))
        assert orthanc.try_post("/modalities/node/store", json.dumps(series_id).encode())
        (folder,) = settings.store_dir.iterdir()
        assert len(list(folder.glob("*.dcm"))) == 32
        assert not orthanc.try_post("/modalities/wrongaet/echo", b"{}")  # called AE title OTHER is not ours
        with pytest.raises(MedsegError, match="rejected"):  # a calling AE title not on the list
            echo_peer(Peer("MEDSEG", "127.0.0.1", orthanc.node_port), calling_ae="INTRUDER")
    finally:
        stop.set()
        thread.join(60)
    refused = [line for line in lines if line.startswith("warning: refused association")]
    assert refused == [
        "warning: refused association from 'ORTHANC' at 127.0.0.1: called AE title 'OTHER' is not ours",
        "warning: refused association from 'INTRUDER' at 127.0.0.1: calling AE title not on the allow list"]


def test_refusal_reasons():
    allowed = [parse_allowed("PACS@10.0.0.5"), parse_allowed("CT1@10.0.0.9:104")]
    assert refusal("PACS", "MEDSEG", "10.0.0.5", "MEDSEG", allowed) is None
    assert refusal("CT1", "MEDSEG", "10.0.0.9", "MEDSEG", allowed) is None
    assert refusal("PACS", "MEDSEG", "10.0.0.9", "MEDSEG", allowed)[1] == "address not allowed for this AE title"
    assert refusal("PACS", "MEDSEG", "127.0.0.1", "MEDSEG", [])  is None  # no list: this machine only
    assert refusal("PACS", "MEDSEG", "10.0.0.5", "MEDSEG", [])[1] == "not on this machine and no allow list"
    assert refusal("PACS", "OTHER", "10.0.0.5", "MEDSEG", allowed)[0] == 0x07


@pytest.mark.parametrize(("args", "message"), [
    (["--host", "0.0.0.0"], "--host 0.0.0.0 needs --allow or --allow-file"),
    (["--allow", "PACS"], "--allow expects AE@HOST[:PORT]"),
    (["--allow", "PACS@no-such-host.invalid"], "does not resolve"),
    (["--max-store", "0"], "--max-store must be more than 0 GB"),
])
def test_bad_serve_options_are_one_line_errors(args, message, tmp_path):
    result = runner.invoke(app, ["serve", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


def test_allow_file(tmp_path):
    from medseg.dicomnet.access import read_allow_file

    (tmp_path / "peers.yaml").write_text("- ORTHANC@127.0.0.1:4242\n- CT1@10.0.0.9\n")
    assert read_allow_file(tmp_path / "peers.yaml") == ["ORTHANC@127.0.0.1:4242", "CT1@10.0.0.9"]
    (tmp_path / "bad.yaml").write_text("ORTHANC: 1\n")
    with pytest.raises(UsageError, match="YAML list"):
        read_allow_file(tmp_path / "bad.yaml")


class Serve:
    """`python -m medseg.cli serve` as a subprocess, its output in ``OUT/../serve-N.log`` (one per start)."""

    def __init__(self, model, out: Path, port: int, *args: str):
        self.command = [sys.executable, "-m", "medseg.cli", "serve", str(model), "--port", str(port), "--out",
                        str(out), "--device", "cpu", "--precision", "fp32", *args]
        self.out, self.port, self.process, self.starts = out, port, None, 0

    def start(self) -> None:
        self.starts += 1
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: "listening" in self.log() or self.process.poll() is not None, 90, "the node to listen")
        assert self.process.poll() is None, self.log()

    @property
    def log_path(self) -> Path:
        return self.out.parent / f"serve-{self.starts}.log"

    def log(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


class MutingRelay:
    """A TCP relay to a DICOM port. While ``mute`` is set, nothing more reaches a caller once it has sent more
    than its first PDU (the A-ASSOCIATE-RQ): the peer stores a C-STORE, the caller never hears it did."""

    def __init__(self, target_port: int):
        self.target_port, self.mute, self.sockets = target_port, threading.Event(), []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                caller, _ = self.listener.accept()
            except OSError:
                return
            peer = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [caller, peer]
            past_request = threading.Event()
            for source, dest in ((caller, peer), (peer, caller)):
                threading.Thread(target=self._pump, args=(source, dest, source is caller, past_request),
                                 daemon=True).start()

    def _pump(self, source, dest, from_caller: bool, past_request: threading.Event) -> None:
        head = b""
        try:
            while data := source.recv(65536):
                if from_caller and not past_request.is_set():
                    head += data
                    if len(head) >= 6 and len(head) > 6 + int.from_bytes(head[2:6], "big"):
                        past_request.set()
                if from_caller or not (self.mute.is_set() and past_request.is_set()):
                    dest.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, dest):  # shutdown wakes the other direction's recv and tells both ends
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_outbox_retries_with_backoff_and_never_resends(tmp_path, data_path):
    seg = tmp_path / "case.seg.dcm"
    seg.write_bytes(sorted(data_path(STUDY1).glob("*.dcm"))[0].read_bytes())  # any DICOM file stands for a SEG
    box = tmp_path / "outbox"
    path = outbox.enqueue(box, seg, "series1", uid_digest)
    assert outbox.enqueue(box, seg, "series1", uid_digest) == path and len(outbox.entries(box)) == 1

    def refuse(_):
        raise MedsegError("cannot associate with PACS@h:1 (rejected)")

    now = 1000.0
    for delay in (30, 60, 120, 240, 240):
        ((due_path, entry),) = outbox.due(box, set(), now)
        ending = outbox.attempt(due_path, entry, refuse, "PACS@h:1", 30, 240, now)
        assert ending.endswith(f"next in {delay} s") and not outbox.due(box, set(), now + delay - 1)
        now += delay
    assert outbox.due(box, {"series1"}, now) == []  # held while the series waits to be segmented again
    sent: list[bytes] = []
    ((due_path, entry),) = outbox.due(box, set(), now)  # read back from disk: the backoff survives restarts
    assert entry["attempts"] == 5 and len(entry["answers"]) == 5
    assert outbox.attempt(due_path, entry, lambda f: sent.append(f.read_bytes()), "PACS@h:1", 30, 240, now) == \
        "sent to PACS@h:1"
    assert sent == [seg.read_bytes()]
    assert outbox.due(box, set(), now + 10**6) == []  # accepted: never sent again
    assert outbox.enqueue(box, seg, "series1", uid_digest) == path and not path.exists()  # nor queued again
    assert json.loads((box / "done" / path.name).read_text())["state"] == "sent"


def test_outbox_supersede_and_tidy(tmp_path, data_path):
    files = sorted(data_path(STUDY1).glob("*.dcm"))[:2]
    box = tmp_path / "outbox"
    first = outbox.enqueue(box, files[0], "series1", uid_digest)
    (box / "0123456789abcdef.dcm").write_bytes(b"a SEG linked just before a crash")
    (box / ".x.json.tmp").write_bytes(b"")
    assert outbox.tidy(box) == 2 and first.exists() and first.with_suffix(".dcm").exists()
    assert outbox.supersede(box, "series2") == 0 and outbox.supersede(box, "series1") == 1
    assert outbox.due(box, set()) == [] and not first.with_suffix(".dcm").exists()
    outbox.enqueue(box, files[1], "series1", uid_digest)
    assert len(outbox.due(box, set())) == 1


def test_kill_while_receiving_then_restart_segments_and_sends_once(orthanc, model, data_path, tmp_path):
    from pynetdicom import AE, StoragePresentationContexts

    files = series_copy(data_path(STUDY1), tmp_path / "series", "kill-while-receiving")
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    out = tmp_path / "out"
    node = Serve(model, out, orthanc.node_port, "--quiet-seconds", "4",
                 "--send-to", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}")
    try:
        node.start()
        sender = AE(ae_title="SENDER")
        sender.requested_contexts = StoragePresentationContexts
        assoc = sender.associate("127.0.0.1", orthanc.node_port, ae_title="MEDSEG")
        statuses = [assoc.send_c_store(path).Status for path in files[:12]]
        assert statuses == [0] * 12
        node.kill()  # mid-series, the association still open
        folder = out / "incoming" / uid_digest(uid)
        assert len(list(folder.glob("[!.]*.dcm"))) == 12  # every acknowledged instance is on disk
        node.start()
        send_files(Peer("MEDSEG", "127.0.0.1", orthanc.node_port), files)  # the sender sends the series again
        wait_for(lambda: orthanc.seg_tags(uid), 90, "the SEG in Orthanc")
        wait_for(lambda: not list((out / "outbox").glob("*.json")), 30, "the outbox to empty")
        time.sleep(5)  # longer than --quiet-seconds: nothing else comes
        assert len(orthanc.seg_tags(uid)) == 1, node.log()
        assert node.log().count("sent to ORTHANC@") == 1
    finally:
        node.stop()


def test_kill_while_sending_then_restart_sends_once(orthanc, model, data_path, tmp_path):
    files = series_copy(data_path(STUDY2), tmp_path / "series", "kill-while-sending")
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    out = tmp_path / "out"
    relay = MutingRelay(orthanc.dicom_port)
    node = Serve(model, out, orthanc.node_port, "--quiet-seconds", "1", "--send-to", f"ORTHANC@127.0.0.1:{relay.port}")
    try:
        node.start()
        relay.mute.set()  # Orthanc stores the SEG, the node never hears it did
        send_files(Peer("MEDSEG", "127.0.0.1", orthanc.node_port), files)
        (seg,) = wait_for(lambda: orthanc.seg_tags(uid), 90, "the SEG in Orthanc")
        (entry,) = list((out / "outbox").glob("*.json"))
        assert json.loads(entry.read_text())["state"] == "pending"
        node.kill()  # while the node waits for Orthanc's answer
        relay.mute.clear()
        node.start()
        done = out / "outbox" / "done" / entry.name
        wait_for(done.exists, 60, "the SEG sent again after the restart")
        assert json.loads(done.read_text())["state"] == "sent"
        assert [tags["SOPInstanceUID"] for tags in orthanc.seg_tags(uid)] == [seg["SOPInstanceUID"]], node.log()
    finally:
        node.stop()
        relay.close()


def _store_statuses(port: int, files) -> list[int]:
    """C-STORE ``files`` to the node over one association; the status of each."""
    from pynetdicom import AE, StoragePresentationContexts

    sender = AE(ae_title="SENDER")
    sender.requested_contexts = StoragePresentationContexts
    assoc = sender.associate("127.0.0.1", port, ae_title="MEDSEG")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(path).Status) for path in files]
    finally:
        assoc.release()


def test_max_store_refuses_before_writing(model, data_path, tmp_path):
    files = sorted(data_path(STUDY1).glob("*.dcm"))
    size = sum(f.stat().st_size for f in files)
    settings = NodeSettings(port=free_port(), out=tmp_path / "out", quiet_s=600, device="cpu", precision="fp32",
                            max_store_gb=size / 2 / 1e9)
    lines, stop, thread = node_thread(model, settings)
    try:
        statuses = _store_statuses(settings.port, files)
    finally:
        stop.set()
        thread.join(60)
    stored = statuses.count(0)
    assert 0 < stored < len(files) and statuses[stored:] == [0xA700] * (len(files) - stored), statuses
    (folder,) = settings.store_dir.iterdir()
    written = list(folder.iterdir())
    assert len(written) == stored and sum(f.stat().st_size for f in written) <= size / 2  # nothing else written
    assert any("refused an instance: the store holds" in line for line in lines), lines


class FakeStore:
    """What the C-STORE handler reads of a pynetdicom event."""

    def __init__(self, path):
        self.dataset = pydicom.dcmread(path)
        self.request = type("Request", (), {"AffectedSOPInstanceUID": self.dataset.SOPInstanceUID})()
        self._data, self.assoc = path.read_bytes(), object()

    def encoded_dataset(self) -> bytes:
        return self._data


def test_full_disk_answers_out_of_resources_and_leaves_no_file(data_path, tmp_path, monkeypatch):
    import errno

    from medseg.dicomnet import node
    from medseg.dicomnet.audit import AssociationLog
    from medseg.dicomnet.budget import StoreBudget
    from medseg.io.atomic import atomic_path

    def disk_full(path, data, overwrite=True):  # the disk fills halfway through the write
        with atomic_path(path, overwrite=overwrite) as tmp:
            tmp.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    event = FakeStore(sorted(data_path(STUDY1).glob("*.dcm"))[0])
    budget = StoreBudget(tmp_path, max_bytes=1e9)
    monkeypatch.setattr(node, "write_bytes_atomic", disk_full)
    with collect_log("medseg.dicomnet") as lines:
        assert node.store_instance(event, tmp_path, node.SeriesTracker(), budget, AssociationLog()) == 0xA700
        assert [p for p in tmp_path.rglob("*") if p.is_file()] == [] and budget.used == 0
        monkeypatch.undo()
        floor = StoreBudget(tmp_path, min_free_bytes=1e18)  # more free space than any disk has
        assert node.store_instance(event, tmp_path, node.SeriesTracker(), floor, AssociationLog()) == 0xA700
    assert "cannot write an instance (No space left on device)" in lines[0]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [] and "--min-free is" in lines[1]


def test_concurrent_senders_are_segmented_one_at_a_time_and_audited(orthanc, model, data_path, tmp_path):
    sources = [data_path(STUDY1), data_path(STUDY2), data_path(STUDY1)]
    series = [series_copy(src, tmp_path / f"s{k}", f"concurrent-{k}") for k, src in enumerate(sources)]
    settings = NodeSettings(port=free_port(), out=tmp_path / "out", quiet_s=2, device="cpu", precision="fp32",
                            send_to=Peer("ORTHANC", "127.0.0.1", orthanc.dicom_port))
    lines, stop, thread = node_thread(model, settings)
    barrier, results = threading.Barrier(len(series)), {}

    def send(k):
        barrier.wait()
        results[k] = _store_statuses(settings.port, series[k])

    try:
        senders = [threading.Thread(target=send, args=(k,)) for k in range(len(series))]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(60)
        assert all(results[k] == [0] * len(series[k]) for k in range(len(series))), results
        uids = [str(pydicom.dcmread(files[0]).SeriesInstanceUID) for files in series]
        wait_for(lambda: all(orthanc.seg_tags(uid) for uid in uids), 120, "the three SEGs in Orthanc")
    finally:
        stop.set()
        thread.join(60)
    assert [len(orthanc.seg_tags(uid)) for uid in uids] == [1, 1, 1]
    assert sum(" segmented in " in line for line in lines) == 3 and not any("error" in line for line in lines), lines
    audit = (settings.out / "audit.log").read_text().splitlines()
    assert [entry.split(" ", 1)[1] for entry in audit] == lines  # every node line, after its UTC time
    for files in series:
        line = f"association from 'SENDER' at 127.0.0.1: {len(files)} instance(s) stored, 0 refused, series " \
               f"{uid_digest(str(pydicom.dcmread(files[0]).SeriesInstanceUID))}; released"
        assert sum(entry.endswith(line) for entry in audit) == 1, audit
    assert sum(" segmented in " in entry and "queued for ORTHANC@" in entry for entry in audit) == 3
    assert sum(" sent to ORTHANC@" in entry for entry in audit) == 3
    ds = pydicom.dcmread(series[0][0])
    secrets = {str(ds.get(tag, "")) for tag in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate",
                                               "SeriesDate", "AcquisitionDate", "ContentDate")} - {""}
    assert secrets and not any(secret in entry for entry in audit for secret in secrets), secrets


def _certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA and two certificates it signs (the node's, for 127.0.0.1, and a caller's), plus a caller
    certificate signed by nobody the node trusts; PEM files in ``folder``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    paths = {}

    def issue(name, issuer_name=None, issuer_key=None, ca=False):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name or subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        cert = builder.sign(issuer_key or key, hashes.SHA256())
        paths[name] = folder / f"{name}.crt"
        paths[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{name}-key"] = folder / f"{name}.key"
        paths[f"{name}-key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
        return subject, key

    ca_name, ca_key = issue("ca", ca=True)
    issue("node", ca_name, ca_key)
    issue("caller", ca_name, ca_key)
    issue("stranger")  # self-signed
    return paths


def test_tls_node_needs_tls_and_a_certificate_from_its_ca(model, data_path, tmp_path, monkeypatch):
    pytest.importorskip("cryptography")
    from medseg.dicomnet import tls
    from medseg.dicomnet.tls import TlsFiles, client_context

    monkeypatch.setattr(tls, "HANDSHAKE_TIMEOUT_S", 1.0)
    certs = _certificates(tmp_path)
    settings = NodeSettings(port=free_port(), out=tmp_path / "out", quiet_s=600, device="cpu", precision="fp32",
                            tls=TlsFiles(certs["node"], certs["node-key"], certs["ca"]))
    lines, stop, thread = node_thread(model, settings)
    peer = Peer("MEDSEG", "127.0.0.1", settings.port)
    try:
        assert " over TLS (callers' certificates checked) " in lines[-1]
        caller = client_context(TlsFiles(certs["caller"], certs["caller-key"], certs["ca"]))
        echo_peer(peer, tls=caller, timeout_s=10)
        files = sorted(data_path(STUDY1).glob("*.dcm"))[:3]
        assert send_files(peer, files, tls=caller, timeout_s=10) == 3
        with pytest.raises(MedsegError, match="cannot associate"):  # plain TCP to a TLS-only node
            echo_peer(peer, timeout_s=10)
        stranger = client_context(TlsFiles(certs["stranger"], certs["stranger-key"], certs["ca"]))
        with pytest.raises(MedsegError, match="cannot associate"):  # a certificate the node's CA did not sign
            echo_peer(peer, tls=stranger, timeout_s=10)
        with socket.create_connection(("127.0.0.1", settings.port)):  # a caller that never shakes hands
            time.sleep(0.2)
            echo_peer(peer, tls=caller, timeout_s=10)  # does not hold the node up past the handshake timeout
    finally:
        stop.set()
        thread.join(60)
    assert sum(line.startswith("association from 'MEDSEG' at 127.0.0.1: ") for line in lines) == 3, lines


def test_bad_tls_files_are_one_line_errors(tmp_path):
    (tmp_path / "x.pem").write_text("not a certificate")
    for args, message in ((["--tls-cert", str(tmp_path / "x.pem")], "TLS needs both --tls-cert and --tls-key"),
                          (["--tls-cert", str(tmp_path / "x.pem"), "--tls-key", str(tmp_path / "x.pem")],
                           "--tls-cert/--tls-key cannot be used")):
        result = runner.invoke(app, ["serve", str(tmp_path), *args])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
