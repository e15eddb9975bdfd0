"""Run configuration: one dataclass per YAML section; unknown keys are errors; ``--set a.b=c`` overrides.

Resolution order: dataclass defaults < ``configs/*.yaml`` file < ``--set`` overrides. Values left as
``null`` (target spacing, patch size, batch size) are filled in by the plan; the fully resolved config
is saved beside each trained model.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from medseg.errors import MedsegError, one_line
from medseg.io.atomic import write_text_atomic
from medseg.postprocess.components import ComponentRule


@dataclass
class PreprocessConfig:
    target_spacing: list[float] | None = None  # mm (X, Y, Z); null: from the plan
    crop_nonzero: bool = True
    anisotropy_threshold: float = 3.0  # separate-z resampling above this spacing ratio


@dataclass
class ModelConfig:
    name: str = "dynunet"
    base_filters: int = 32
    max_filters: int = 320
    deep_supervision: bool = True
    deep_supervision_levels: int = 2
    norm: str = "instance"


@dataclass
class AugmentConfig:
    flip: bool = True
    rotate_deg: float = 15.0
    scale: list[float] = field(default_factory=lambda: [0.85, 1.15])
    affine_prob: float = 0.2
    elastic: bool = False
    gamma_prob: float = 0.15
    noise_prob: float = 0.1
    blur_prob: float = 0.1
    contrast_prob: float = 0.15
    lowres_prob: float = 0.1


@dataclass
class TrainConfig:
    epochs: int = 100
    time_budget: str | None = None  # e.g. "30m", "2h": scales the schedule to wall-clock time
    min_steps: int = 2500  # with a time budget on a CPU: the plan is chosen to fit this many steps (see budget.py)
    iterations_per_epoch: int = 100
    batch_size: int | None = None  # null: from the plan
    patch_size: list[int] | None = None  # null: from the plan
    memory_budget_mb: int = 2000  # for patch size / depth planning (activations per batch)
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 3e-3
    weight_decay: float = 3e-5
    lr_schedule: str = "poly"  # poly | cosine | constant
    warmup_steps: int = 0  # the lr rises linearly over this many first steps (0: off)
    snapshot_every: str | None = None  # e.g. "10m": weights kept at that interval (medseg.train.snapshots)
    ema: float = 0.0  # weight averaging: EMA decay per step, e.g. 0.99 (0: off; see medseg.train.averaging)
    foreground_fraction: float = 0.33
    dice_weight: float = 1.0
    batch_dice: bool = True
    ce_weight: float = 1.0
    num_workers: int = 1
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    seed: int = 0
    deterministic: bool = False
    folds: int = 5
    split_group: str | None = None  # regex naming a case's subject: one subject's cases share a fold
    val_mirror: bool = False
    final_mirror: bool = True  # final validation with mirroring, on original grids
    threads: int | None = None  # torch CPU threads; null: all cores


@dataclass
class InferConfig:
    overlap: float = 0.5
    sw_batch_size: int = 2
    mirror: bool = False
    focus: bool = True  # only windows that can reach the foreground run (medseg.model.focused)


@dataclass
class PostprocessConfig:
    """Connected-component rules by label value, e.g. ``{1: {mode: largest, keep: 2}, 2: {mode: min_size,
    min_volume_mm3: 30}}`` (keys: mode largest | min_size | none, keep, min_volume_mm3, fill_holes; see
    :class:`medseg.postprocess.ComponentRule`). Checked when the config loads; kept with every key filled in."""

    rules: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rules = check_rules(self.rules)


def check_rules(rules: dict | None, where: str = "config") -> dict[int, dict]:
    """Validate post-processing rules; returns them with integer labels and every key filled in.

    Raises:
        MedsegError: naming the label and the problem (unknown mode or key, bad value), with allowed values.
    """


    if not isinstance(rules or {}, dict):
        raise MedsegError(f"{where}: postprocess.rules must map label values to rules, got {rules!r}")
    checked = {}
    for key, values in (rules or {}).items():
        try:
            label = int(key)
        except (TypeError, ValueError):
            label = -1
        if label < 1 or isinstance(key, bool):
            raise MedsegError(f"{where}: postprocess.rules: '{key}' is not a foreground label value (1, 2, ...)")
        try:
            checked[label] = asdict(ComponentRule.from_dict(values))
        except MedsegError as exc:
            raise MedsegError(f"{where}: postprocess.rules.{label}: {exc.problem}") from None
    return checked


@dataclass
class RunConfig:
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Build a :class:`RunConfig` from an optional YAML file and ``key.sub=value`` overrides.

    Raises:
        MedsegError: for unknown sections or keys, or values of the wrong type.
    """
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise MedsegError(f"cannot read config ({one_line(exc)})", path) from None
        if not isinstance(data, dict):
            raise MedsegError("config must be a mapping of sections", path)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2:
            raise MedsegError(f"--set expects section.key=value, got '{item}'")
        data.setdefault(parts[0], {})[parts[1]] = yaml.safe_load(value)
    return config_from_dict(data, where)


def config_from_dict(data: dict[str, Any], where: str = "config") -> RunConfig:
    config = RunConfig()
    sections = {f.name: f for f in fields(RunConfig)}
    for section, values in data.items():
        if section not in sections:
            raise MedsegError(f"{where}: unknown section '{section}' (known: {', '.join(sections)})")
        target = getattr(config, section)
        known = {f.name: f for f in fields(target)}
        for key, value in (values or {}).items():
            key = RENAMED.get((section, key), key)
            if key not in known:
                raise MedsegError(f"{where}: unknown key '{section}.{key}' (known: {', '.join(known)})")
            setattr(target, key, _coerce(value, getattr(target, key), f"{section}.{key}", where))
    config.postprocess.rules = check_rules(config.postprocess.rules, where)
    _check_values(config, where)
    return config


# The one cap on sliding-window overlap (config, CLI help, InferenceSettings): at 0.95 windows step by 1/20 of
# their size, 8000x the windows of no overlap in 3D; nearer 1 the count only grows.
MAX_OVERLAP = 0.95

# Settings that take one of a few values, checked when a config loads (allowed values in the message).
# ``model.name`` is not here: its choices are the network registry's names (medseg.model.networks, a later
# stage), checked when a run starts or a model folder's config is read.
CHOICES = {
    ("model", "norm"): ("instance", "batch", "group", "instance_affine"),
    ("train", "optimizer"): ("adamw", "sgd"),
    ("train", "lr_schedule"): ("poly", "cosine", "constant"),
    ("train", "precision"): ("auto", "fp32", "bf16", "fp16"),
}
# Numeric settings and their allowed closed ranges (None: unbounded).
RANGES = {
    ("preprocess", "anisotropy_threshold"): (1.0, None), ("model", "base_filters"): (1, None),
    ("model", "max_filters"): (1, None), ("model", "deep_supervision_levels"): (0, None),
    ("train", "epochs"): (1, None), ("train", "iterations_per_epoch"): (1, None),
    ("train", "min_steps"): (1, None), ("train", "lr"): (0.0, None), ("train", "ema"): (0.0, 0.9999),
    ("train", "warmup_steps"): (0, None),
    ("train", "weight_decay"): (0.0, None), ("train", "foreground_fraction"): (0.0, 1.0),
    ("train", "dice_weight"): (0.0, None), ("train", "ce_weight"): (0.0, None), ("train", "num_workers"): (0, None),
    ("train", "folds"): (1, None), ("train", "memory_budget_mb"): (1, None),
    ("infer", "overlap"): (0.0, MAX_OVERLAP), ("infer", "sw_batch_size"): (1, None),
}
# Keys renamed so one idea has one name from CLI flag to config key to JSON field (old model folders and configs
# still load): mirroring is "mirror", saving probabilities "probabilities".
RENAMED = {("train", "val_tta"): "val_mirror", ("train", "final_tta"): "final_mirror",
           ("infer", "mirror_tta"): "mirror"}


def _check_values(config: RunConfig, where: str) -> None:
    for (section, key), allowed in CHOICES.items():
        value = getattr(getattr(config, section), key)
        if str(value).lower() not in allowed:
            raise MedsegError(f"{where}: '{section}.{key}' is '{value}' (allowed: {', '.join(allowed)})")
        setattr(getattr(config, section), key, str(value).lower())
    for (section, key), (low, high) in RANGES.items():
        value = getattr(getattr(config, section), key)
        if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
            bounds = f">= {low}" if high is None else f"between {low} and {high}"
            raise MedsegError(f"{where}: '{section}.{key}' is {value}; it must be {bounds}")
    parse_duration(config.train.time_budget)
    parse_duration(config.train.snapshot_every)
    if config.train.split_group is not None:
        try:
            re.compile(str(config.train.split_group))
        except re.error as exc:
            raise MedsegError(f"{where}: 'train.split_group' is not a regular expression ({exc})") from None


def _coerce(value: Any, default: Any, name: str, where: str) -> Any:
    if value is None or default is None:
        return value
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, (int, float)) and not isinstance(value, bool):
            return type(default)(value)
        if isinstance(default, list):
            return list(value)
        if isinstance(default, dict):
            return dict(value)
        if isinstance(default, str):
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise MedsegError(f"{where}: '{name}' expects {type(default).__name__}, got {value!r}")


def save_config(config: RunConfig, path: str | Path) -> None:

    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def parse_duration(text: str | None) -> float | None:
    """``"30m"`` -> 1800.0 seconds; accepts s, m, h suffixes or a bare number of seconds."""
    if text is None:
        return None
    text = str(text).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError):
        raise MedsegError(f"cannot parse duration '{text}' (use e.g. 30m, 2h, 90s)") from None


__all__ = ["RunConfig", "load_config", "save_config", "config_from_dict", "parse_duration", "CHOICES"]
