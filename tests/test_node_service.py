"""`medseg serve` as a node a hospital can leave running, against a real Orthanc: who may associate, delivery of
each SEG exactly once across kill -9 and restarts, storage limits, concurrent senders and the audit log."""

from __future__ import annotations

import json
import threading

import pydicom
import pytest
from orthanc_peer import free_port, run_orthanc, wait_for
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from medseg.cli import app
from medseg.dicomnet.access import parse_allowed, refusal
from medseg.dicomnet.client import Peer, echo_peer
from medseg.dicomnet.node import NodeSettings, run_node
from medseg.errors import MedsegError, UsageError

STUDY1 = "dicom/hippocampus_crops/study1"
STUDY2 = "dicom/hippocampus_crops/study2"
runner = CliRunner()


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


def node_thread(model_dir, settings: NodeSettings):
    """Start `run_node` in a thread; returns (log lines, stop event, thread) once it listens."""
    lines: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(target=run_node, args=(model_dir, settings, stop), kwargs={"echo": lines.append})
    thread.start()
    wait_for(lambda: any(line.startswith("listening") for line in lines) or not thread.is_alive(), 60,
             "the node to listen")
    assert thread.is_alive(), lines
    return lines, stop, thread


def test_allow_list_admits_listed_peers_only(orthanc, hippocampus_run, data_path, tmp_path):
    settings = NodeSettings(port=orthanc.node_port, out=tmp_path / "out", quiet_s=600, device="cpu", precision="fp32",
                            allowed=[parse_allowed("ORTHANC@127.0.0.1:4242")])
    lines, stop, thread = node_thread(hippocampus_run, settings)
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
    refused = [line for line in lines if line.startswith("refused association")]
    assert refused == ["refused association from 'ORTHANC' at 127.0.0.1: called AE title 'OTHER' is not ours",
                       "refused association from 'INTRUDER' at 127.0.0.1: calling AE title not on the allow list"]


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
])
def test_bad_access_options_are_one_line_errors(args, message, tmp_path):
    result = runner.invoke(app, ["serve", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


def test_allow_file(tmp_path):
    from medseg.dicomnet.access import read_allow_file

    (tmp_path / "peers.yaml").write_text("- ORTHANC@127.0.0.1:4242\n- CT1@10.0.0.9\n")
    assert read_allow_file(tmp_path / "peers.yaml") == ["ORTHANC@127.0.0.1:4242", "CT1@10.0.0.9"]
    (tmp_path / "bad.yaml").write_text("ORTHANC: 1\n")
    with pytest.raises(UsageError, match="YAML list"):
        read_allow_file(tmp_path / "bad.yaml")
