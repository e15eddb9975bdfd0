"""Shared fixtures: the real data folder (MEDSEG_DATA, default ../shared/data) and synthetic phantoms."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medseg.data.phantom import make_phantom

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
