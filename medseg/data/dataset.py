"""Datasets: MSD folders, nnU-Net v2 raw folders and medseg manifests, all as one :class:`Dataset`.

A *medseg manifest* is a YAML or JSON file::

    name: Hippocampus
    channels: {0: MR}              # channel index -> modality name
    labels: {0: background, 1: anterior, 2: posterior}
    cases:
      - id: hippocampus_001
        images: [imagesTr/hippocampus_001.nii.gz]   # one path per channel, relative to the manifest
        label: labelsTr/hippocampus_001.nii.gz      # optional
        fold: 0                                     # optional (or split: train|val|test, not both)

Unknown top-level or case keys are errors, so a typo does not silently drop a setting.

Splits: a case with ``split: test`` is never trained or validated on (see :mod:`medseg.train.splits`
for how folds, ``split: val`` and an nnU-Net ``splits_final.json`` decide the rest). MSD ``dataset.json``
training entries may carry a ``fold`` too, and any dataset folder may hold an nnU-Net v2
``splits_final.json`` (``[{"train": [ids], "val": [ids]}, ...]``). Inconsistent split declarations are
recorded in :attr:`Dataset.problems`, so ``medseg check`` lists them and training refuses the dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from medseg.errors import MedsegError
from medseg.io.paths import image_stem, image_suffix

MANIFEST_NAMES = ("medseg.yaml", "medseg.yml", "medseg.json", "manifest.yaml", "manifest.yml")
_MANIFEST_KEYS = {"name", "description", "channels", "labels", "cases", "file_ending"}
_CASE_KEYS = {"id", "images", "label", "fold", "split"}
_SPLITS = ("train", "val", "test")
SPLITS_FILE = "splits_final.json"


@dataclass(frozen=True)
class Case:
    """One subject: its channel images, optional label map and split."""

    id: str
    images: tuple[Path, ...]
    label: Path | None = None
    fold: int | None = None
    split: str | None = None


@dataclass
class Dataset:
    """A labelled (or partly labelled) set of cases with declared labels and channels.

    Attributes:
        labels: Label value -> name; 0 is background.
        channels: Channel index -> modality name (``CT``, ``MR``...); decides normalisation.
        problems: Problems found while parsing (duplicate ids...), reported by ``medseg check``.
        splits: The folder's ``splits_final.json`` (nnU-Net v2 format), when it has one.
    """

    name: str
    root: Path
    source: str  # "msd", "nnunet", "manifest"
    labels: dict[int, str]
    channels: dict[int, str]
    cases: list[Case]
    problems: list[str] = field(default_factory=list)
    splits: list[dict[str, list[str]]] | None = None

    @property
    def labelled(self) -> list[Case]:
        return [c for c in self.cases if c.label is not None]

    @property
    def trainable(self) -> list[Case]:
        """Labelled cases that training may use: every labelled case but those with ``split: test``."""
        return [c for c in self.labelled if c.split != "test"]

    def without_test(self) -> Dataset:
        """A copy without the ``split: test`` cases: what planning (fingerprint, normalisation) may see."""
        return replace(self, cases=[c for c in self.cases if c.split != "test"], problems=list(self.problems))

    @property
    def foreground_labels(self) -> dict[int, str]:
        return {k: v for k, v in self.labels.items() if k != 0}


def load_dataset(path: str | Path) -> Dataset:
    """Load a dataset from a folder (MSD, nnU-Net v2 or one holding a manifest) or a manifest file.

    Raises:
        MedsegError: when the path is not a dataset or its description cannot be parsed.
    """
    path = Path(path)
    if not path.exists():
        raise MedsegError("dataset not found", path)
    if path.is_file():
        if image_suffix(path):
            raise MedsegError("this is an image, not a dataset; expected an MSD or nnU-Net folder (with "
                              "dataset.json) or a manifest (.yaml/.json); `medseg info` describes an image", path)
        if path.suffix.lower() not in (".yaml", ".yml", ".json"):
            raise MedsegError("not a dataset: expected an MSD or nnU-Net folder (with dataset.json) or a manifest "
                              "(.yaml, .yml or .json)", path)
        return _load_manifest(path)
    for name in MANIFEST_NAMES:
        if (path / name).is_file():
            return _load_manifest(path / name)
    desc = path / "dataset.json"
    if not desc.is_file():
        raise MedsegError("not a dataset folder (no dataset.json, medseg.yaml or manifest.yaml)", path)
    data = _read_structured(desc)
    if "channel_names" in data or "file_ending" in data:
        return _load_nnunet(path, data, desc)
    if "training" in data:
        return _load_msd(path, data, desc)
    raise MedsegError("dataset.json is neither MSD (no 'training') nor nnU-Net v2 (no 'channel_names')", desc)


def _read_structured(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise MedsegError(f"cannot parse ({' '.join(str(exc).split())[:200]})", path) from None
    if not isinstance(data, dict):
        raise MedsegError("expected a mapping at the top level", path)
    return data


def _int_keys(mapping, where: Path, what: str) -> dict[int, str]:
    try:
        return {int(k): str(v) for k, v in dict(mapping or {}).items()}
    except (TypeError, ValueError):
        raise MedsegError(f"'{what}' keys must be integers", where) from None


def _load_msd(root: Path, data: dict, desc: Path) -> Dataset:
    cases = []
    for i, entry in enumerate(data.get("training") or []):
        if not isinstance(entry, dict) or "image" not in entry:
            raise MedsegError(f"training entry {i} has no 'image'", desc)
        label = entry.get("label")
        cases.append(Case(id=image_stem(entry["image"]), images=(_resolve(root, entry["image"]),),
                          label=_resolve(root, label) if label else None,
                          fold=_fold(entry.get("fold"), desc, f"training entry {i}")))
    channels = _int_keys(data.get("modality", {0: "unknown"}), desc, "modality")
    return _finish(Dataset(name=str(data.get("name", root.name)), root=root, source="msd",
                           labels=_int_keys(data.get("labels", {}), desc, "labels"),
                           channels=channels, cases=cases))


def _load_nnunet(root: Path, data: dict, desc: Path) -> Dataset:
    ending = str(data.get("file_ending", ".nii.gz"))
    channels = _int_keys(data.get("channel_names", data.get("modality", {})), desc, "channel_names")
    try:  # nnU-Net v2 labels: name -> value (regions as lists are not supported)
        labels = {int(v): str(k) for k, v in dict(data.get("labels", {})).items()}
    except (TypeError, ValueError):
        raise MedsegError("'labels' must map names to integer values (region labels are not supported)",
                          desc) from None
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    ids = sorted({p.name[: -len(ending)][:-5] for p in images_dir.glob(f"*_0000{ending}")})
    cases = []
    for case_id in ids:
        images = tuple(images_dir / f"{case_id}_{c:04d}{ending}" for c in sorted(channels))
        label = labels_dir / f"{case_id}{ending}"
        cases.append(Case(id=case_id, images=images, label=label))
    dataset = Dataset(name=str(data.get("name", root.name)), root=root, source="nnunet",
                      labels=labels, channels=channels, cases=cases)
    declared = data.get("numTraining")
    if declared is not None and int(declared) != len(cases):
        dataset.problems.append(f"dataset.json declares numTraining={declared} but imagesTr has {len(cases)} cases")
    return _finish(dataset)


def _load_manifest(path: Path) -> Dataset:
    data = _read_structured(path)
    unknown = set(data) - _MANIFEST_KEYS
    if unknown:
        raise MedsegError(f"unknown manifest key(s): {', '.join(sorted(unknown))}", path)
    root = path.parent
    cases = []
    for i, entry in enumerate(data.get("cases") or []):
        if not isinstance(entry, dict) or "images" not in entry:
            raise MedsegError(f"case {i} has no 'images'", path)
        bad = set(entry) - _CASE_KEYS
        if bad:
            raise MedsegError(f"case {i}: unknown key(s) {', '.join(sorted(bad))}", path)
        images = entry["images"] if isinstance(entry["images"], list) else [entry["images"]]
        label = entry.get("label")
        split = str(entry["split"]) if entry.get("split") else None
        if split is not None and split not in _SPLITS:
            raise MedsegError(f"case {i}: split '{split}' is not one of {', '.join(_SPLITS)}", path)
        if split is not None and entry.get("fold") is not None:
            raise MedsegError(f"case {i}: give either 'fold' or 'split', not both", path)
        cases.append(Case(
            id=str(entry.get("id") or image_stem(images[0])),
            images=tuple(_resolve(root, p) for p in images),
            label=_resolve(root, label) if label else None,
            fold=_fold(entry.get("fold"), path, f"case {i}"),
            split=split,
        ))
    return _finish(Dataset(name=str(data.get("name", path.stem)), root=root, source="manifest",
                           labels=_int_keys(data.get("labels", {}), path, "labels"),
                           channels=_int_keys(data.get("channels", {0: "unknown"}), path, "channels"),
                           cases=cases))


def _fold(value, where: Path, what: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MedsegError(f"{what}: fold '{value}' is not an integer", where) from None


def _read_splits_file(root: Path) -> list[dict[str, list[str]]] | None:
    """The folder's ``splits_final.json`` as ``[{"train": [...], "val": [...]}]``, or None when absent."""
    path = root / SPLITS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:
        raise MedsegError(f"cannot parse ({' '.join(str(exc).split())[:200]})", path) from None
    shape_ok = isinstance(data, list) and data and all(
        isinstance(f, dict) and set(f) == {"train", "val"} and all(isinstance(f[k], list) for k in f) for f in data)
    if not shape_ok:
        raise MedsegError('expected a non-empty list of {"train": [case ids], "val": [case ids]}', path)
    return [{"train": [str(x) for x in f["train"]], "val": [str(x) for x in f["val"]]} for f in data]


def _split_problems(dataset: Dataset) -> list[str]:
    """Contradictions in the dataset's split declarations (each one blocks training)."""
    trainable = dataset.trainable
    folds = [c.fold for c in trainable if c.fold is not None]
    val = [c.id for c in trainable if c.split == "val"]
    problems = []
    if dataset.splits is not None:
        if folds or val:
            problems.append(f"{SPLITS_FILE} and case folds or 'split: val' both decide the splits; keep one")
        problems += _splits_file_problems(dataset.splits, {c.id for c in trainable},
                                          {c.id for c in dataset.cases if c.split == "test"})
    elif folds and val:
        problems.append("cases give both 'fold' and 'split: val'; use one way of splitting")
    if folds and len(folds) < len(trainable):
        problems.append(f"{len(trainable) - len(folds)} of {len(trainable)} labelled training cases have no fold")
    if folds and sorted(set(folds)) != list(range(len(set(folds)))):
        problems.append(f"fold values {sorted(set(folds))} are not numbered 0..N-1")
    if val and len(val) == len(trainable):
        problems.append("every labelled training case has 'split: val'; none is left to train on")
    return problems


def _splits_file_problems(splits: list[dict[str, list[str]]], known: set[str], test: set[str]) -> list[str]:
    problems = []
    for n, fold in enumerate(splits):
        named = set(fold["train"]) | set(fold["val"])
        if leaked := sorted(named & test):
            problems.append(f"{SPLITS_FILE} fold {n} uses test case(s) {leaked[:5]}")
        if unknown := sorted(named - known - test):
            problems.append(f"{SPLITS_FILE} fold {n} names case(s) {unknown[:5]} that are not labelled cases")
        if both := sorted(set(fold["train"]) & set(fold["val"])):
            problems.append(f"{SPLITS_FILE} fold {n} has case(s) {both[:5]} in both train and val")
        if not fold["train"] or not fold["val"]:
            problems.append(f"{SPLITS_FILE} fold {n} has an empty train or val list")
    return problems


def _resolve(root: Path, rel: str) -> Path:
    return (root / str(rel)).resolve() if not Path(str(rel)).is_absolute() else Path(str(rel))


def _finish(dataset: Dataset) -> Dataset:
    seen: dict[str, int] = {}
    for case in dataset.cases:
        seen[case.id] = seen.get(case.id, 0) + 1
    for case_id, count in seen.items():
        if count > 1:
            dataset.problems.append(f"duplicate case id '{case_id}' ({count} cases)")
    if not dataset.labels:
        dataset.problems.append("no labels declared")
    elif 0 not in dataset.labels:
        dataset.problems.append("labels do not declare 0 (background)")
    if not dataset.cases:
        dataset.problems.append("no cases")
    dataset.splits = _read_splits_file(dataset.root)
    dataset.problems += _split_problems(dataset)
    return dataset
