"""Peak RAM of `medseg infer` on a 512 x 512 x 600 CT (the bar: 8 GB on CPU).

Writes a synthetic CT (0.8 x 0.8 x 1.0 mm, body-like intensities) and trains a tiny 3-class CT model on
phantoms planned at that same spacing, so the scan is predicted at full resolution (the worst case), then
runs `medseg infer` in a child process and reads its peak resident memory (ru_maxrss).

    python benchmarks/infer_memory.py [--slices 600]

Exit code 1 when the peak exceeds 8 GB.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BAR_GB = 8.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=600)
    args = parser.parse_args()
    from medseg.config import load_config
    from medseg.data.phantom import write_phantom_dataset
    from medseg.io import write_volume
    from medseg.train import train
    from medseg.types import Volume

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = write_phantom_dataset(tmp / "data", cases=3, shape=(64, 64, 48), spacing=(0.8, 0.8, 1.0),
                                     rotation_deg=(0, 0, 0), modality="CT")
        config = load_config(None, ["train.epochs=1", "train.iterations_per_epoch=2", "train.num_workers=0",
                                    "model.base_filters=8", "model.max_filters=64", "train.patch_size=[96, 96, 64]",
                                    "train.batch_size=2", "train.final_mirror=false", "infer.overlap=0.25",
                                    "infer.sw_batch_size=4"])
        train(data, tmp / "model", config)
        shape = (512, 512, args.slices)
        x, y = np.ogrid[:512, :512]
        body = (((x - 256) ** 2 / 230**2 + (y - 256) ** 2 / 170**2) < 1).astype(np.float32)
        image = np.empty(shape, np.float32)
        rng = np.random.default_rng(0)
        for k in range(shape[2]):
            image[:, :, k] = body * 1040.0 - 1000.0 + rng.normal(0, 15, (512, 512))
        affine = np.diag([0.8, 0.8, 1.0, 1.0])
        write_volume(Volume(image, affine), tmp / "in" / "ct.nii.gz")
        del image
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "medseg.cli", "infer", str(tmp / "model"), str(tmp / "in"),
                               str(tmp / "out")], capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:])
            return 1
    print(f"{'scan':28} {'classes':>7} {'seconds':>8} {'peak RAM GB':>12} {'bar GB':>7}")
    print(f"{'x'.join(map(str, shape)) + ' CT float32':28} {3:7d} {seconds:8.0f} {peak_gb:12.2f} {BAR_GB:7.1f}")
    print("PASS" if peak_gb <= BAR_GB else "FAIL: peak RAM above the bar")
    return 0 if peak_gb <= BAR_GB else 1


if __name__ == "__main__":
    sys.exit(main())
