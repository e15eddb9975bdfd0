"""Atomic checkpoints: a killed run never leaves a half-written file; resume restores everything."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from medseg.io.atomic import atomic_path
from medseg.model.folder import ModelFolder


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, rename."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """Load with ``weights_only=True``: a checkpoint can never execute code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state(generator: np.random.Generator) -> dict:
    """RNG states of torch, numpy (the sampler's generator) and Python, in weights-only-safe types."""
    return {"torch": torch.get_rng_state(), "numpy": generator.bit_generator.state,
            "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}


def restore_rng(state: dict, generator: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.bit_generator.state = state["numpy"]
    random.setstate((state["python_version"], tuple(state["python"]), None))


def verify_sha256sums(folder: Path) -> list[str]:
    """Names whose content no longer matches ``SHA256SUMS`` (or that are missing); see :class:`ModelFolder`."""
    return ModelFolder(folder).verify()
