"""`medseg serve` and `medseg infer --send-to` against a real PACS (Orthanc, the Debian package `orthanc`):
C-ECHO, a series pushed by Orthanc comes back as a DICOM SEG, a broken series is logged while the node goes
on, instances are on disk when acknowledged, SIGTERM stops the node with exit code 0."""

import hashlib
import json
import signal
import subprocess
import sys

import pytest
from orthanc_peer import free_port, node_thread, run_orthanc, wait_for
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from typer.testing import CliRunner

from medseg.cli import app
from medseg.config import load_config
from medseg.data.phantom import make_phantom, write_phantom_dataset
from medseg.dicomnet.client import Peer, echo_peer, parse_peer, send_files
from medseg.dicomnet.node import NodeSettings
from medseg.errors import MedsegError
from medseg.io.dicom_write import write_dicom_series
from medseg.train import train

runner = CliRunner()
TINY = ["model.base_filters=8", "model.max_filters=32", "train.iterations_per_epoch=5", "train.lr=0.01",
        "train.num_workers=0", "train.patch_size=[32, 32, 12]", "train.batch_size=2", "train.epochs=1"]
STUDY1 = "dicom/hippocampus_crops/study1"
STUDY2 = "dicom/hippocampus_crops/study2"
SECRETS = ("Avasarala", "Thanos", "PGBM", "20200119", "20200121")  # patient names, IDs and dates of the shared series
FOREGROUND_LABELS = 2  # the phantom model's organ and lesion


def _dicom_files(folder):
    return sorted(folder.glob("*.dcm"), key=lambda p: int(p.stem))


def _uid(path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    data = write_phantom_dataset(root / "data", cases=4, shape=(40, 40, 14), spacing=(1.5, 1.5, 4.0))
    train(data, root / "run", load_config(None, TINY))
    return root / "run"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with run_orthanc(tmp_path_factory.mktemp("orthanc"), {"medseg": ["MEDSEG", "127.0.0.1", free_port()]}) as server:
        yield server


@pytest.fixture(scope="module")
def node(orthanc, model_dir, tmp_path_factory):
    """`run_node` in a thread, sending to Orthanc; yields (settings, log lines)."""
    out = tmp_path_factory.mktemp("node")
    settings = NodeSettings(host="127.0.0.1", port=orthanc.node_port, out=out, quiet_s=1.0, device="cpu",
                            send_to=Peer("ORTHANC", "127.0.0.1", orthanc.dicom_port))
    lines, stop, thread = node_thread(model_dir, settings)
    try:
        yield settings, lines
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and lines[-1].startswith("stopped")
    assert not any(secret in line for line in lines for secret in SECRETS), lines


def test_c_echo_and_called_ae_title(node):
    settings, _ = node
    echo_peer(Peer("MEDSEG", "127.0.0.1", settings.port))
    with pytest.raises(MedsegError, match="rejected"):
        echo_peer(Peer("SOMEONE_ELSE", "127.0.0.1", settings.port))


def test_orthanc_push_comes_back_as_seg(node, orthanc, data_path):
    settings, lines = node
    files = _dicom_files(data_path(STUDY1))
    uploaded = [orthanc.post("/instances", f.read_bytes()) for f in files]
    series_id = uploaded[0]["ParentSeries"]
    assert {u["ParentSeries"] for u in uploaded} == {series_id}
    job = orthanc.post("/modalities/medseg/store", json.dumps(series_id).encode())
    assert job.get("InstancesCount", len(files)) == len(files)
    uid = _uid(files[0])
    (seg,) = wait_for(lambda: orthanc.seg_tags(uid), 60, "the SEG in Orthanc")
    assert seg["Modality"] == "SEG"
    assert len(seg["SegmentSequence"]) == FOREGROUND_LABELS
    assert int(seg["NumberOfFrames"]) == FOREGROUND_LABELS * len(files)  # empty frames are kept
    # Instances are stored per series under a hash of the UID, files named by a hash of the SOP UID.
    folder = settings.store_dir / hashlib.sha256(uid.encode()).hexdigest()[:16]
    assert len(list(folder.glob("*.dcm"))) == len(files) and not list(folder.glob(".*.tmp*"))
    wait_for(lambda: any(line.startswith(f"series {folder.name}: ") and "sent to ORTHANC@" in line for line in lines),
          10, "the node's line for the series")  # it is written once the SEG is sent


def test_broken_series_is_logged_and_node_goes_on(node, orthanc, data_path, tmp_path):
    settings, lines = node
    peer = Peer(settings.ae_title, "127.0.0.1", settings.port)
    broken = _dicom_files(data_path(STUDY2))
    del broken[len(broken) // 2]  # a missing slice: the series is refused, never read with a gap
    assert send_files(peer, broken) == len(broken)
    image, _ = make_phantom(shape=(40, 40, 14), spacing=(1.5, 1.5, 4.0), seed=5)
    good = write_dicom_series(image, tmp_path / "good", series_number=7)
    send_files(peer, good)
    wait_for(lambda: orthanc.seg_tags(_uid(good[0])), 60, "the good series' SEG in Orthanc")
    digest = hashlib.sha256(_uid(broken[0]).encode()).hexdigest()[:16]
    errors = wait_for(lambda: [line for line in lines if line.startswith(f"error: series {digest}: ")], 10,
                   "the broken series' error line")
    assert len(errors) == 1 and "refused" in errors[0] and "missing slice" in errors[0], lines
    assert not orthanc.seg_tags(_uid(broken[0]))


def test_infer_send_to_stores_seg_and_rtstruct_in_orthanc(orthanc, model_dir, data_path, tmp_path):
    study = data_path(STUDY2)
    peer = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    result = runner.invoke(app, ["infer", str(model_dir), str(study), str(tmp_path / "out"), "--device", "cpu",
                                 "--rtstruct", "--send-to", peer])
    assert result.exit_code == 0, result.output
    assert f"sent 2 DICOM object(s) to {peer}" in result.output
    (seg,) = orthanc.seg_tags(_uid(_dicom_files(study)[0]))
    assert int(seg["NumberOfFrames"]) == FOREGROUND_LABELS * 35
    (rtstruct,) = orthanc.rtstruct_tags(_uid(_dicom_files(study)[0]))
    assert len(rtstruct["StructureSetROISequence"]) == FOREGROUND_LABELS


@pytest.mark.parametrize("text", ["ORTHANC@host", "@h:1", "A@h:0", "A@h:x", "SEVENTEEN_LETTERS@h:1", "noat:4242"])
def test_bad_peer_is_one_line_error(text):
    with pytest.raises(MedsegError, match="AE"):
        parse_peer(text)
    assert parse_peer("PACS@10.0.0.5:104") == Peer("PACS", "10.0.0.5", 104)


def test_sigterm_stops_serve_and_instances_are_on_disk_when_acknowledged(model_dir, data_path, tmp_path):
    port, out = free_port(), tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "medseg.cli", "serve", str(model_dir), "--host", "127.0.0.1",
                                "--port", str(port), "--out", str(out), "--quiet-seconds", "60", "--device", "cpu"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        peer = Peer("MEDSEG", "127.0.0.1", port)

        def answers():
            assert process.poll() is None, process.stdout.read()
            try:
                echo_peer(peer, timeout_s=2)
                return True
            except MedsegError:
                return False

        wait_for(answers, 60, "`medseg serve` to answer C-ECHO")
        files = _dicom_files(data_path(STUDY1))
        send_files(peer, files)
        folder = out / "incoming" / hashlib.sha256(_uid(files[0]).encode()).hexdigest()[:16]
        assert len(list(folder.glob("*.dcm"))) == len(files)  # every acknowledged instance is on disk
        idle = AE(ae_title="IDLE")
        idle.add_requested_context(Verification)
        held = idle.associate("127.0.0.1", port, ae_title="MEDSEG")  # a peer that never releases
        assert held.is_established
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        wait_for(lambda: not held.is_established, 10, "the held association to end")
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read()
    assert "stopped; 1 series left for the next start" in output, output
    assert not any(secret in output for secret in SECRETS), output
