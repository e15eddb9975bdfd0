"""Resampling benchmark: medseg vs nnU-Net's default resampling on a thick-slice CT.

A 512 x 512 x 100 CT volume with 0.7 x 0.7 x 5 mm voxels (synthetic body-like content, float32) and a
5-class label map are resampled to 0.8 x 0.8 x 2.5 mm, the "separate z" case: in-plane high order,
through-plane low order. Each method runs in its own process so peak RAM (ru_maxrss) is its own.

    python benchmarks/resample.py            # prints a table; exit 1 if medseg is below the bar

nnU-Net's function needs `pip install --no-deps nnunetv2 acvl-utils batchgenerators scikit-image`
(plain `pip install nnunetv2` would replace the CPU torch with a CUDA build). Without it the
nnU-Net rows are skipped and only medseg's figures are printed.

Bar: medseg's image resampling at least 2x faster than nnU-Net's, with no more peak RAM.
"""

from __future__ import annotations

import json
import subprocess
import sys

SHAPE, SPACING, TARGET = (512, 512, 100), (0.7, 0.7, 5.0), (0.8, 0.8, 2.5)
CLASSES = 5


def _volume():
    import numpy as np

    rng = np.random.default_rng(0)
    x, y, z = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    body = ((x - 256) ** 2 / 220**2 + (y - 256) ** 2 / 160**2) < 1
    image = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, SHAPE)
    label = np.zeros(SHAPE, np.int16)
    for k in range(1, CLASSES):
        cx, cy = 180 + 40 * k, 200 + 20 * k
        label[((x - cx) ** 2 + (y - cy) ** 2 < (25 + 5 * k) ** 2) & (z > 10 * k) & (z < 40 + 10 * k)] = k
    return image.astype(np.float32), label


def _run(method: str) -> dict:
    import resource
    import time

    import numpy as np

    image, label = _volume()
    from medseg.preprocess.resample import shape_for_spacing

    new_shape = shape_for_spacing(SHAPE, SPACING, TARGET)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if method == "medseg":
        from medseg.preprocess.resample import resample_image, resample_labels

        out = resample_image(image[None], new_shape, separate_z_axis=2)
        t1 = time.perf_counter()
        seg = resample_labels(label, new_shape, list(range(CLASSES)), separate_z_axis=2)
    else:
        from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

        out = resample_data_or_seg_to_shape(image[None], new_shape, SPACING, TARGET, is_seg=False, order=3,
                                            order_z=0, force_separate_z=None)
        t1 = time.perf_counter()
        seg = resample_data_or_seg_to_shape(label[None], new_shape, SPACING, TARGET, is_seg=True, order=1,
                                            order_z=0, force_separate_z=None)[0]
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    values = sorted(np.unique(seg).tolist())
    return {"image_s": t1 - t0, "labels_s": t2 - t1, "peak_mb": peak / 1024, "extra_mb": (peak - base) / 1024,
            "shape": list(out.shape[1:]), "label_values": values}


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(_run(sys.argv[2])))
        return 0
    rows = {}
    for method in ("medseg", "nnunet"):
        proc = subprocess.run([sys.executable, __file__, "--child", method], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{method}: not run ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else '?'})")
            continue
        rows[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} at {SPACING} mm -> {TARGET} mm, {CLASSES} label classes")
    print(f"{'method':8} {'image s':>8} {'labels s':>9} {'peak MB':>8} {'added MB':>9}  output, label values")
    for method, r in rows.items():
        print(f"{method:8} {r['image_s']:8.2f} {r['labels_s']:9.2f} {r['peak_mb']:8.0f} {r['extra_mb']:9.0f}  "
              f"{r['shape']}, {r['label_values']}")
    if "nnunet" not in rows:
        return 0
    m, n = rows["medseg"], rows["nnunet"]
    speedup = n["image_s"] / m["image_s"]
    print(f"image speed-up {speedup:.1f}x, label speed-up {n['labels_s'] / m['labels_s']:.1f}x")
    ok = speedup >= 2.0 and m["peak_mb"] <= n["peak_mb"] and m["label_values"] == list(range(CLASSES))
    print("PASS" if ok else "FAIL: below the bar (2x faster, no more peak RAM, every label kept)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
