"""One name per idea from CLI flag to config key to option field: a flag is found again by its name."""

from __future__ import annotations

from dataclasses import fields

import typer

import medseg.cli as cli
from medseg.config import MAX_OVERLAP, RENAMED, RunConfig, load_config
from medseg.infer.options import InferOptions

# Options that steer the command itself, not a setting of the run (they have no config key or option field).
COMMAND_LEVEL = {"model", "input_path", "output_dir", "config", "set_", "device", "out", "fold", "resume",
                 "precision", "shard", "send_to", "modality", "description", "min_slices", "dataset", "labels"}


def _options(command: str) -> dict[str, list[str]]:
    group = typer.main.get_command(cli.app)
    return {p.name: p.opts + p.secondary_opts for p in group.commands[command].params if p.opts[0].startswith("--")}


def _config_keys(section: str) -> set[str]:
    return {f.name for f in fields(getattr(RunConfig(), section))}


def test_every_infer_flag_is_an_option_field_or_config_key_of_its_name():
    names = {f.name for f in fields(InferOptions)} | _config_keys("infer")
    for name, flags in _options("infer").items():
        assert name in names or name in COMMAND_LEVEL, (name, flags)
        assert f"--{name.replace('_', '-')}" in flags or name in COMMAND_LEVEL, (name, flags)
    assert {"mirror", "overlap", "probabilities"} <= set(_options("infer"))
    assert {"mirror", "overlap"} <= _config_keys("infer") and "probabilities" in {f.name for f in fields(InferOptions)}


def test_every_train_flag_is_a_config_key_of_its_name():
    for name, flags in _options("train").items():
        assert name in _config_keys("train") or name in COMMAND_LEVEL, (name, flags)


def test_overlap_has_one_limit_and_old_key_names_still_load(tmp_path):
    assert cli.MAX_OVERLAP == MAX_OVERLAP
    old = tmp_path / "old.yaml"
    old.write_text("train:\n  final_tta: false\n  val_tta: true\ninfer:\n  mirror_tta: true\n")
    config = load_config(old)
    assert (config.train.final_mirror, config.train.val_mirror, config.infer.mirror) == (False, True, True)
    assert set(RENAMED.values()) <= _config_keys("train") | _config_keys("infer")
    assert load_config(None, ["infer.overlap=0.95"]).infer.overlap == 0.95
