"""torchrun on the CPU (gloo): distributed training with resume, and sharded inference equal to one process."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import tiny

from medseg.data.phantom import make_phantom, write_phantom_dataset
from medseg.io import read_volume, write_volume
from medseg.train.checkpoint import verify_sha256sums

TINY = tiny("train.iterations_per_epoch=8", "train.final_mirror=false")


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "medseg.cli",
            *args]


def _sets():
    out = []
    for item in TINY:
        out += ["--set", item]
    return out


@pytest.mark.slow
def test_torchrun_training_resume_and_sharded_inference(tmp_path):
    data = write_phantom_dataset(tmp_path / "data", cases=6, shape=(40, 40, 14), spacing=(1.5, 1.5, 4.0))
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_torchrun("train", str(data), "--out", str(run), "--epochs", "6", *_sets()),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines = []
    deadline = time.time() + 150
    for line in proc.stdout:
        lines.append(line)
        if sum(x.startswith("epoch") for x in lines) >= 2 or time.time() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    proc.wait()
    assert sum(x.startswith("epoch") for x in lines) >= 2, "".join(lines)
    assert all(p.name.startswith(".") for p in run.iterdir() if ".tmp" in p.name)

    resumed = subprocess.run(_torchrun("train", str(data), "--out", str(run), "--resume"), capture_output=True,
                             text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed at epoch" in resumed.stdout and resumed.stdout.count("done:") == 1  # rank 0 alone reports
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 7)) and all(r["ranks"] == 2 for r in log)
    assert log[-1]["loss"] < log[0]["loss"]
    assert verify_sha256sums(run) == []

    images = tmp_path / "scans"
    for i in range(5):
        image, _ = make_phantom(shape=(40, 40, 14), spacing=(1.5, 1.5, 4.0), seed=300 + i)
        write_volume(image, images / f"scan{i}.nii.gz")
    single = subprocess.run([sys.executable, "-m", "medseg.cli", "infer", str(run), str(images), str(tmp_path / "a")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stdout + single.stderr
    sharded = subprocess.run(_torchrun("infer", str(run), str(images), str(tmp_path / "b")), capture_output=True,
                             text=True, env=env, timeout=300)
    assert sharded.returncode == 0, sharded.stdout[-3000:] + sharded.stderr[-3000:]
    for i in range(5):
        a = read_volume(tmp_path / "a" / f"scan{i}.nii.gz", label=True)
        b = read_volume(tmp_path / "b" / f"scan{i}.nii.gz", label=True)
        assert np.array_equal(a.array, b.array) and np.array_equal(a.affine, b.affine)
    summary = (tmp_path / "b" / "summary.csv").read_text().splitlines()
    assert len(summary) == 6 and all(",done," in line for line in summary[1:])
