"""Shared fixtures: the real data folder (MEDSEG_DATA, default ../shared/data) and synthetic phantoms."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import pytest

from medseg.data.phantom import make_phantom, write_phantom_dataset
from medseg.logs import LineFormatter

ROOT = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    return Path(os.environ.get("MEDSEG_DATA", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Measured precision decisions go to a temporary cache, never the user's ~/.cache (subprocesses too)."""
    previous = os.environ.get("MEDSEG_CACHE_DIR")
    os.environ["MEDSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("MEDSEG_CACHE_DIR", None)
    else:
        os.environ["MEDSEG_CACHE_DIR"] = previous


class _Collect(logging.Handler):
    def __init__(self, lines: list[str]):
        super().__init__()
        self.lines = lines
        self.setFormatter(LineFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def collect_log(name: str = "medseg", lines: list[str] | None = None):
    """Every line logger ``name`` and its children log (INFO and up, any thread) inside the block, as the
    console shows it (``warning: ...``), appended to ``lines`` (a new list by default), which is yielded."""
    lines = [] if lines is None else lines
    handler, logger = _Collect(lines), logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture()
def log_lines():
    """:func:`collect_log` for the whole test."""
    with collect_log() as lines:
        yield lines


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public data (read-only); tests that need it skip when it is absent."""
    root = _data_root()
    if not (root / "README.md").exists() and not (root / "hippocampus").exists():
        pytest.skip(f"real data not found at {root} (set MEDSEG_DATA)")
    return root


@pytest.fixture()
def data_path(shared_data):
    """Return a path inside the real data, skipping when that part is absent."""

    def get(rel: str) -> Path:
        path = shared_data / rel
        if not path.exists():
            pytest.skip(f"{rel} not in {shared_data}")
        return path

    return get


@pytest.fixture()
def phantom():
    """A phantom image and label: 48x48x20, 1.5x1.5x4 mm, rotated (oblique) grid."""
    return make_phantom(seed=3)


@pytest.fixture()
def preprocessing_plan():
    """Build a :class:`~medseg.preprocess.plan.Plan` holding just what preprocessing reads (spacing, labels,
    normalisation, crop); the network fields get small placeholders."""
    from medseg.preprocess.plan import Plan

    def build(target_spacing, labels, normalization=({"scheme": "zscore"},), **extra) -> Plan:
        return Plan(target_spacing=list(target_spacing), labels=dict(labels), normalization=list(normalization),
                    channels={0: "MR"}, patch_size=[16, 16, 16], batch_size=1, strides=[[1, 1, 1]],
                    kernel_sizes=[[3, 3, 3]], filters=[8], **extra)

    return build


def edit_dicom(path, **tags) -> None:
    """Set DICOM attributes of one file in place (keyword=value)."""
    import pydicom

    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path)


def nnunet_copy(msd: Path, dest: Path, names: dict[str, str], labels: dict) -> Path:
    """An nnU-Net v2 raw folder ``dest`` from phantom MSD cases: ``names`` maps MSD ids to new ids."""
    import json
    import shutil

    (dest / "imagesTr").mkdir(parents=True)
    (dest / "labelsTr").mkdir()
    for old, new in names.items():
        shutil.copy(msd / f"imagesTr/{old}.nii.gz", dest / f"imagesTr/{new}_0000.nii.gz")
        shutil.copy(msd / f"labelsTr/{old}.nii.gz", dest / f"labelsTr/{new}.nii.gz")
    (dest / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MR"}, "file_ending": ".nii.gz",
                                                   "labels": labels}))
    return dest


# A tiny training run: narrow network, small patches, no data-loading workers. Tests add what they vary.
TINY = ["model.base_filters=8", "model.max_filters=32", "train.lr=0.01", "train.num_workers=0",
        "train.patch_size=[32, 32, 12]", "train.batch_size=2"]


def tiny(*overrides: str) -> list[str]:
    """``--set`` style overrides for a tiny training run (:data:`TINY`), ``overrides`` last (they win)."""
    return [*TINY, *overrides]


@pytest.fixture()
def tiny_config():
    """``tiny_config(*overrides)``: the :class:`~medseg.config.RunConfig` of a tiny training run."""
    from medseg.config import load_config

    return lambda *overrides: load_config(None, tiny(*overrides))


@pytest.fixture(scope="session")
def phantom_run(tmp_path_factory) -> Path:
    """A small trained phantom model (5 cases, 4 epochs of 15 steps, post-processing rules for both labels),
    shared by the inference and export tests; tests copy it before changing anything in it."""
    from medseg.config import load_config
    from medseg.train import train

    root = tmp_path_factory.mktemp("phantom_model")
    data = write_phantom_dataset(root / "data", cases=5, shape=(40, 40, 14), spacing=(1.5, 1.5, 4.0))
    overrides = tiny("train.iterations_per_epoch=15", "train.epochs=4",
                     "postprocess.rules={1: {mode: largest}, 2: {mode: min_size, min_volume_mm3: 20}}")
    train(data, root / "run", load_config(None, overrides))
    return root / "run"


@pytest.fixture(scope="session")
def hippocampus_run(shared_data, tmp_path_factory) -> Path:
    """A small real model: 6 short epochs on the first 10 hippocampus cases (about 10 s on two idle cores).
    Case 21 onwards are unseen by it."""
    import yaml

    from medseg.config import load_config
    from medseg.train import train

    root = shared_data / "hippocampus"
    if not root.exists():
        pytest.skip(f"hippocampus not in {shared_data}")
    tmp = tmp_path_factory.mktemp("hippo")
    ids = sorted(p.name[: -len(".nii.gz")] for p in (root / "labelsTr").glob("*.nii.gz"))[:10]
    cases = [{"id": c, "images": [str(root / "imagesTr" / f"{c}.nii.gz")],
              "label": str(root / "labelsTr" / f"{c}.nii.gz"), "fold": k % 5} for k, c in enumerate(ids)]
    manifest = tmp / "hippocampus.yaml"
    manifest.write_text(yaml.safe_dump({"name": "hippocampus", "channels": {0: "MR"},
                                        "labels": {0: "background", 1: "anterior", 2: "posterior"},
                                        "cases": cases}))
    overrides = tiny("train.iterations_per_epoch=20", "train.patch_size=[32, 32, 32]", "train.epochs=6",
                     "train.final_mirror=false")
    train(manifest, tmp / "run", load_config(None, overrides))
    return tmp / "run"
