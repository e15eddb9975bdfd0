"""The house rules that code can check: packages import only downward, configs match their defaults."""

import ast
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from medseg.config import RunConfig, load_config
from medseg.errors import MedsegError

ROOT = Path(__file__).resolve().parents[1]
# The pipeline order (README): a module may import its own package and anything earlier, never later.
# postprocess (connected components) and config (validated settings) are leaves shared by the stages after them.
ORDER = [("errors", "types", "logs"), ("io",), ("data",), ("postprocess",), ("config",), ("preprocess",), ("model",),
         ("train", "infer"), ("dicomnet",), ("metrics",), ("qa",), ("demo", "_cli_util"), ("cli",)]
RANK = {name: rank for rank, names in enumerate(ORDER) for name in names}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)


def test_packages_import_only_downward():
    upward = []
    for path in sorted((ROOT / "medseg").rglob("*.py")):
        parts = path.relative_to(ROOT / "medseg").parts
        if parts == ("__init__.py",):
            continue  # the public API re-exports every stage
        own = parts[0].removesuffix(".py")
        for line, module in _imports(path):
            target = module.split(".")
            if target[0] != "medseg" or len(target) < 2 or target[1] == own:
                continue
            if RANK[target[1]] > RANK[own] or (RANK[target[1]] == RANK[own] and target[1] != own):
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not upward, "\n".join(upward)


def test_every_module_belongs_to_a_known_stage():
    names = {p.name.removesuffix(".py") for p in (ROOT / "medseg").iterdir() if not p.name.startswith("__")
             and (p.suffix == ".py" or p.is_dir()) and p.name != "__pycache__"}
    assert names <= set(RANK), names - set(RANK)


def test_default_yaml_equals_the_dataclass_defaults():
    written = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    assert written == asdict(RunConfig())
    assert asdict(load_config(ROOT / "configs" / "default.yaml")) == asdict(RunConfig())


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load_with_every_value_they_set(name):
    written = yaml.safe_load((ROOT / "configs" / name).read_text())
    config = load_config(ROOT / "configs" / name)
    for section, values in written.items():
        for key, value in values.items():
            assert getattr(getattr(config, section), key) == value, f"{name}: {section}.{key}"


@pytest.mark.parametrize("override, message", [
    ("train.optimizer=adam", r"'train.optimizer' is 'adam' \(allowed: adamw, sgd\)"),
    ("train.precision=half", r"allowed: auto, fp32, bf16, fp16"),
    ("model.norm=layer", r"allowed: instance, batch, group"),
    ("train.lr_schedule=step", r"allowed: poly, cosine, constant"),
    ("infer.overlap=1.5", r"'infer.overlap' is 1.5; it must be between 0.0 and 0.95"),
    ("train.time_budget=soon", r"cannot parse duration"),
    ("postprocess.rules={1: {mode: biggest}}", r"postprocess.rules.1"),
])
def test_bad_choices_fail_when_the_config_loads(override, message):
    with pytest.raises(MedsegError, match=message):
        load_config(None, [override])
