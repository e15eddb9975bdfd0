"""A real PACS for the node tests: Orthanc (the Debian package `orthanc`) on loopback ports with a temporary
config, reached by its REST API; and the helpers those tests share (waiting, a node in a thread)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import collect_log

from medseg.dicomnet.node import NodeSettings, run_node


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout_s: float, what: str):
    """``condition()``'s first true value, polled every 0.2 s; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Orthanc:
    """A running Orthanc with its REST API on loopback."""

    def __init__(self, http_port: int, dicom_port: int, node_port: int):
        self.url, self.dicom_port, self.node_port = f"http://127.0.0.1:{http_port}", dicom_port, node_port

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, data: bytes):
        with urllib.request.urlopen(urllib.request.Request(self.url + path, data=data), timeout=120) as response:
            return json.loads(response.read())

    def try_post(self, path: str, data: bytes) -> bool:
        """POST; False when Orthanc answers an HTTP error (e.g. a refused association)."""
        try:
            self.post(path, data)
            return True
        except urllib.error.HTTPError:
            return False

    def upload(self, files) -> str:
        """Store ``files`` (one series) in Orthanc; its Orthanc series id."""
        uploaded = [self.post("/instances", Path(f).read_bytes()) for f in files]
        (series_id,) = {u["ParentSeries"] for u in uploaded}
        return series_id

    def _tags_of(self, modality: str):
        """Tags of every instance held whose series has ``modality``."""
        for series in self.get("/series?expand"):
            if series["MainDicomTags"].get("Modality") == modality:
                yield from (self.get(f"/instances/{i}/tags?simplify") for i in series["Instances"])

    def seg_tags(self, series_uid: str) -> list[dict]:
        """Tags of every SEG instance held that references ``series_uid``."""
        return [tags for tags in self._tags_of("SEG")
                if any(ref.get("SeriesInstanceUID") == series_uid for ref in tags.get("ReferencedSeriesSequence", []))]

    def rtstruct_tags(self, series_uid: str) -> list[dict]:
        """Tags of every RTSTRUCT instance held whose contours reference ``series_uid``."""
        def referenced(tags: dict) -> list[str]:
            return [s.get("SeriesInstanceUID") for frame in tags.get("ReferencedFrameOfReferenceSequence", [])
                    for study in frame.get("RTReferencedStudySequence", [])
                    for s in study.get("RTReferencedSeriesSequence", [])]

        return [tags for tags in self._tags_of("RTSTRUCT") if series_uid in referenced(tags)]

    def seg_count(self) -> int:
        """How many SEG instances Orthanc holds."""
        return sum(len(s["Instances"]) for s in self.get("/series?expand")
                   if s["MainDicomTags"].get("Modality") == "SEG")


@contextlib.contextmanager
def run_orthanc(root: Path, modalities: dict[str, list]):
    """Start Orthanc (AE title ORTHANC) with ``modalities`` as its ``DicomModalities``; yield an :class:`Orthanc`
    whose ``node_port`` is the port of the first modality. Skips the test when Orthanc is not installed."""
    binary = shutil.which("Orthanc")
    if binary is None:
        pytest.skip("Orthanc not installed (Debian: apt-get install orthanc)")
    http_port, dicom_port = free_port(), free_port()
    config = {"Name": "medseg-test", "DicomAet": "ORTHANC", "DicomPort": dicom_port, "HttpPort": http_port,
              "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
              "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
              "DicomModalities": modalities}
    (root / "orthanc.json").write_text(json.dumps(config))
    with open(root / "orthanc.log", "wb") as log:
        process = subprocess.Popen([binary, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(http_port, dicom_port, next(iter(modalities.values()))[2])

    def ready():
        try:
            return server.get("/system")
        except OSError:
            assert process.poll() is None, (root / "orthanc.log").read_text()[-2000:]
            return None

    try:
        wait_for(ready, 30, "Orthanc to start")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def node_thread(model_dir, settings: NodeSettings):
    """Start `run_node` in a thread; returns (the node's log lines, stop event, thread) once it listens."""
    lines: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        with collect_log("medseg.dicomnet", lines):
            run_node(model_dir, settings, stop)

    thread = threading.Thread(target=serve)
    thread.start()
    wait_for(lambda: any(line.startswith("listening") for line in lines) or not thread.is_alive(), 60,
             "the node to listen")
    assert thread.is_alive(), lines
    return lines, stop, thread
