"""Weight snapshots for time-to-Dice curves: kept at the interval, scored as the run's own validation scored them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny

from medseg.config import load_config
from medseg.data import load_dataset
from medseg.data.phantom import write_phantom_dataset
from medseg.errors import MedsegError
from medseg.model.folder import ModelFolder, export_model
from medseg.model.networks import build_network
from medseg.train import train
from medseg.train.checkpoint import load_checkpoint, verify_sha256sums
from medseg.train.finish import validation_ids
from medseg.train.snapshots import load_snapshots, snapshot_due
from medseg.train.validation import inference_settings, load_validation, summarise, validate

ROOT = Path(__file__).resolve().parents[1]


def test_a_snapshot_is_due_once_per_interval_crossed():
    assert not snapshot_due(700.0, 200.0, None)
    assert snapshot_due(610.0, 20.0, 600.0)  # 590 -> 610 crosses 600
    assert not snapshot_due(650.0, 20.0, 600.0)  # 630 -> 650 does not
    assert snapshot_due(1300.0, 800.0, 600.0)  # a long epoch crossing two multiples gives one snapshot
    assert not snapshot_due(30.0, 50.0, 600.0)


def test_snapshot_interval_is_checked_when_the_config_loads():
    with pytest.raises(MedsegError, match="duration"):
        load_config(None, ["train.snapshot_every=ten minutes"])


def test_snapshots_hold_each_epochs_weights_and_score_as_its_validation(phantoms_small, tmp_path, monkeypatch):
    """Every epoch crosses a 1 ms interval, so each keeps a snapshot; each validated epoch's snapshot, scored
    through the validation path, gives the Dice the run logged for that epoch; the last is the last checkpoint's
    network. Snapshots are training records: the folder's checksums hold and export leaves them behind."""
    import medseg.train.schedule as schedule

    monkeypatch.setattr(schedule, "VAL_SHARE", 1e6)  # validate every epoch
    config = load_config(None, tiny("train.precision=fp32", "train.iterations_per_epoch=8", "train.epochs=3",
                                    "train.final_mirror=false", "train.snapshot_every=0.001s"))
    run = tmp_path / "run"
    train(phantoms_small, run, config)
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    snaps = load_snapshots(run)
    assert [(s["epoch"], s["step"]) for s in snaps] == [(r["epoch"], r["step"]) for r in log]
    assert [round(s["elapsed"], 6) for s in snaps] == [round(r["elapsed"], 6) for r in log]
    last = load_checkpoint(run / "checkpoint_last.pt")["model"]
    assert all(torch.equal(snaps[-1]["model"][k], last[k]) for k in last)

    folder = ModelFolder(run)
    plan = folder.load_plan()
    net = build_network(plan, folder.load_config().model)
    val_set = load_validation(load_dataset(phantoms_small), validation_ids(run))
    settings = inference_settings(folder.load_config(), plan, mirror=False)
    validated = {r["epoch"]: r["val_mean_dice"] for r in log if "val_mean_dice" in r}
    assert len(validated) >= 2
    for snap in snaps:
        if snap["epoch"] in validated:
            net.load_state_dict(snap["model"])
            mean = summarise(validate([net], val_set, plan, settings, torch.device("cpu"), None),
                             plan.foreground_names)["mean"]
            assert mean == pytest.approx(validated[snap["epoch"]], abs=1e-6)

    assert verify_sha256sums(run) == []
    export_model(run, tmp_path / "model")
    assert (tmp_path / "model" / "weights.pt").exists() and not (tmp_path / "model" / "snapshots").exists()

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_to_dice.py"), str(run),
                          str(phantoms_small), "--cases", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == [1, 2, 3]


@pytest.fixture(scope="module")
def phantoms_small(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("ph"), cases=4, shape=(32, 32, 12), spacing=(1.5, 1.5, 4.0))
