"""The built-in example: medseg's whole job on synthetic phantoms, offline, in a few minutes on a CPU.

Phantom dataset (organ-like ellipsoids with a small lesion, 1.5 x 1.5 x 4 mm, oblique grid) -> check ->
train briefly -> infer on held-out phantoms (NIfTI, and one as a DICOM series with a DICOM SEG) ->
evaluate -> QA report.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from medseg.config import load_config
from medseg.data import check_dataset, load_dataset
from medseg.data.phantom import make_phantom, write_phantom_dataset
from medseg.errors import MedsegError
from medseg.infer.batch import InferOptions, run_batch
from medseg.io import write_volume
from medseg.io.dicom_write import write_dicom_series
from medseg.metrics.evaluate import evaluate_folder, markdown_table
from medseg.qa.report import build_report
from medseg.train import train

log = logging.getLogger(__name__)

DEMO_SETTINGS = ["model.base_filters=16", "model.max_filters=64", "train.iterations_per_epoch=25",
                 "train.patch_size=[48, 48, 16]", "train.batch_size=2", "train.lr=0.01", "train.num_workers=0",
                 "train.final_mirror=false",
                 "postprocess.rules={1: {mode: largest}, 2: {mode: min_size, min_volume_mm3: 30}}"]


def run_demo(out_dir: str | Path, cases: int = 10, test_cases: int = 3, epochs: int = 12) -> dict:
    """Run the whole pipeline on phantoms under ``out_dir``; returns paths and the test Dice."""

    start = time.perf_counter()
    out = Path(out_dir)
    _clear_previous_demo(out)
    dataset = write_phantom_dataset(out / "dataset", cases=cases)
    report = check_dataset(load_dataset(dataset))
    log.info(f"1/6 dataset: {report.summary()}  ({dataset})")

    log.info(f"2/6 training {epochs} short epochs on the CPU/GPU ...")
    config = load_config(None, DEMO_SETTINGS + [f"train.epochs={epochs}"])
    train(dataset, out / "model", config)

    test_in, truth = out / "test" / "images", out / "test" / "labels"
    for i in range(test_cases):
        image, label = make_phantom(seed=1000 + i)
        write_volume(image, test_in / f"test_{i:02d}.nii.gz", overwrite=True)
        write_volume(label, truth / f"test_{i:02d}.nii.gz", overwrite=True)
    image, label = make_phantom(seed=2000)
    write_dicom_series(image, test_in / "dicom_study" / "series1", description="phantom T1")
    log.info(f"3/6 test scans: {test_cases} NIfTI files and one DICOM series in {test_in}")

    results = out / "results"
    run_batch(out / "model", test_in, results, InferOptions(overwrite=True))
    log.info(f"4/6 segmented into {results} (NIfTI label maps, a DICOM SEG, per-case JSON, summary.csv)")

    evaluation = evaluate_folder(results, truth, results / "evaluation")
    log.info("5/6 evaluation against the phantoms' truth:")
    log.info(markdown_table(evaluation["summary"]))

    qa_path = build_report(results, gt=truth)
    dice = {label: m["dice"]["mean"] for label, m in evaluation["summary"].items()}
    log.info(f"6/6 QA report: {qa_path}")
    log.info(f"demo finished in {time.perf_counter() - start:.0f} s: test Dice "
         + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()) + f"; open {qa_path}")
    return {"dataset": dataset, "model": out / "model", "results": results, "report": qa_path, "dice": dice}


def _clear_previous_demo(out: Path) -> None:
    """Make ``out`` ready: remove an earlier demo's files (marked by ``.medseg-demo``), refuse any other
    non-empty folder."""


    marker = out / ".medseg-demo"
    if out.exists() and any(out.iterdir()) and not marker.exists():
        raise MedsegError("folder is not empty and was not written by medseg demo; choose another folder", out)
    for name in ("dataset", "model", "test", "results"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by medseg demo; the demo may replace this folder's contents\n")
