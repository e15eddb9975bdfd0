"""Datasets: MSD folders, nnU-Net v2 raw folders, MONAI/Auto3DSeg datalists and medseg manifests, all as
one :class:`Dataset`.

A *medseg manifest* is a YAML or JSON file::

    name: Hippocampus
    channels: {0: MR}              # channel index -> modality name
    labels: {0: background, 1: anterior, 2: posterior}
    cases:
      - id: hippocampus_001
        images: [imagesTr/hippocampus_001.nii.gz]   # one path per channel, relative to the manifest
        label: labelsTr/hippocampus_001.nii.gz      # optional
        fold: 0                                     # optional (or split: train|val|test, not both)
        annotated: [1, 2]                           # optional: the label values contoured in this case

Unknown top-level or case keys are errors, so a typo does not silently drop a setting.

An *nnU-Net v2 raw folder* holds ``dataset.json``, ``imagesTr/<id>_<XXXX><ending>`` (one file per channel)
and ``labelsTr/<id><ending>``; its ``imagesTs`` cases (labels from ``labelsTs`` when present) load as
``split: test`` cases.

*Partial annotations*: a case's ``annotated`` lists the label values that were contoured in it; a
foreground label it does not list was not drawn (an organ missing from such a label map is unknown, not
absent). No list means every declared label was contoured. The lists come from the case's ``annotated``
key (manifest case, datalist or MSD ``training`` entry) or from an ``annotated_labels.json`` next to the
description (``{"case id": [label values]}``, as OpenKBP and other nnU-Net-style folders carry). Label
values in them that are not declared, ids in the file that are no case, and a case whose key and file
entry disagree are recorded in :attr:`Dataset.problems`; training and evaluation use the lists
(:mod:`medseg.train.losses`, :mod:`medseg.train.validation`, :mod:`medseg.metrics.evaluate`).

A *MONAI / Auto3DSeg datalist* is a JSON file::

    {"dataroot": "/data/Task04",                    # optional; paths are relative to it, else to the JSON's folder
     "labels": {"0": "background", "1": "anterior"},  # medseg needs these two (a datalist alone has neither)
     "channels": {"0": "MR"},                          # or MSD-style "modality"
     "training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz", "fold": 0}, ...],
     "validation": [{"image": ..., "label": ...}],    # -> split: val
     "testing": [{"image": ...}]}                     # -> split: test (so does an MSD-style "test" list)

``image`` may be a list of channel files. A case's id is its first image's file name without the suffix
(without an nnU-Net ``_0000`` tag when ``image`` is a list); where two entries would share an id, theirs is
the image's path below the data root instead (``case_00000/imaging.nii.gz`` -> ``case_00000_imaging``).

Which format a JSON or YAML description is in, in this order:

1. ``cases``: a medseg manifest.
2. ``channel_names`` or ``file_ending``: an nnU-Net v2 ``dataset.json``.
3. ``validation``, ``testing`` or ``dataroot``, an entry whose ``image`` is a list, or a ``test`` entry that is
   a mapping: a datalist. MSD never has these; MONAI's own MSD-derived datalists (e.g. BTCV's
   ``dataset_0.json``) keep MSD's ``labels``/``modality``/``numTraining``..., which are then read as the
   datalist's labels and channels.
4. ``training`` with any of MSD's ``modality``, ``numTraining``, ``numTest`` or ``tensorImageSize``: an MSD
   ``dataset.json`` (its ``test`` list is not read).
5. ``training`` without those: a datalist.

Splits: a case with ``split: test`` is never trained or validated on (see :mod:`medseg.train.splits`
for how folds, ``split: val`` and an nnU-Net ``splits_final.json`` decide the rest). MSD ``dataset.json``
and datalist training entries may carry a ``fold`` too, and any dataset folder may hold an nnU-Net v2
``splits_final.json`` (``[{"train": [ids], "val": [ids]}, ...]``). Inconsistent split declarations (such as
training folds together with a datalist's ``validation`` list) are recorded in :attr:`Dataset.problems`, so
``medseg check`` lists them and training refuses the dataset.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from medseg.errors import MedsegError, one_line
from medseg.io.paths import image_stem, image_suffix

MANIFEST_NAMES = ("medseg.yaml", "medseg.yml", "medseg.json", "manifest.yaml", "manifest.yml")
_MANIFEST_KEYS = {"name", "description", "channels", "labels", "cases", "file_ending"}
_CASE_KEYS = {"id", "images", "label", "fold", "split", "annotated"}
_SPLITS = ("train", "val", "test")
SPLITS_FILE = "splits_final.json"
ANNOTATED_FILE = "annotated_labels.json"
_DATALIST_KEYS = {"validation", "testing", "dataroot"}  # keys an MSD dataset.json never has
_MSD_KEYS = {"modality", "numTraining", "numTest", "tensorImageSize"}
_DATALIST_SECTIONS = (("training", None), ("validation", "val"), ("testing", "test"), ("test", "test"))
_CHANNEL_TAG = re.compile(r"^(?P<id>.+)_(?P<channel>\d{4})$")
_NAMES_EXAMPLE = {"labels": '"labels": {"0": "background", "1": "<structure>"}',
                  "channels": '"channels": {"0": "CT"} (one entry per image channel; MSD-style "modality" also works)'}


@dataclass(frozen=True)
class Case:
    """One subject: its channel images, optional label map and split.

    ``annotated``: the foreground label values contoured in this case (sorted, without 0), or None when every
    declared label was contoured (module docstring, *Partial annotations*).
    """

    id: str
    images: tuple[Path, ...]
    label: Path | None = None
    fold: int | None = None
    split: str | None = None
    annotated: tuple[int, ...] | None = None

    def contoured(self, value: int) -> bool:
        """Whether label ``value`` was contoured in this case (background always is)."""
        return self.annotated is None or value == 0 or value in self.annotated


@dataclass
class Dataset:
    """A labelled (or partly labelled) set of cases with declared labels and channels.

    Attributes:
        labels: Label value -> name; 0 is background.
        channels: Channel index -> modality name (``CT``, ``MR``...); decides normalisation.
        problems: Problems found while parsing (duplicate ids...), reported by ``medseg check``.
        splits: The folder's ``splits_final.json`` (nnU-Net v2 format), when it has one.
        notes: Lines that do not block training: for a DICOM export, its ROI table, the label objects left
            out and why, and per case the ROIs not used (:mod:`medseg.data.source`).
    """

    name: str
    root: Path
    source: str  # "msd", "nnunet", "datalist", "manifest"
    labels: dict[int, str]
    channels: dict[int, str]
    cases: list[Case]
    problems: list[str] = field(default_factory=list)
    splits: list[dict[str, list[str]]] | None = None
    notes: list[str] = field(default_factory=list)

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

    @property
    def partially_annotated(self) -> bool:
        """Whether any case carries a list of contoured labels (``Case.annotated``)."""
        return any(c.annotated is not None for c in self.cases)

    def contoured_counts(self) -> dict[int, int]:
        """Foreground label value -> how many labelled cases contoured it."""
        return {v: sum(c.contoured(v) for c in self.labelled) for v in sorted(self.foreground_labels)}


def load_dataset(path: str | Path) -> Dataset:
    """Load a dataset from a folder (MSD, nnU-Net v2 or one holding a manifest), a manifest or a datalist file.

    Raises:
        MedsegError: when the path is not a dataset or its description cannot be parsed.
    """
    path = Path(path)
    if not path.exists():
        raise MedsegError("dataset not found", path)
    if path.is_file():
        if image_suffix(path):
            raise MedsegError("this is an image, not a dataset; expected an MSD or nnU-Net folder (with "
                              "dataset.json), a manifest (.yaml/.json) or a datalist (.json); `medseg info` "
                              "describes an image", path)
        if path.suffix.lower() not in (".yaml", ".yml", ".json"):
            raise MedsegError("not a dataset: expected an MSD or nnU-Net folder (with dataset.json), a manifest "
                              "(.yaml, .yml or .json) or a datalist (.json)", path)
        data = _read_structured(path)
        kind = description_kind(data)
        return _load_manifest(path, data) if kind == "manifest" else _load_description(kind, data, path)
    for name in MANIFEST_NAMES:
        if (path / name).is_file():
            return _load_manifest(path / name, _read_structured(path / name))
    desc = path / "dataset.json"
    if not desc.is_file():
        raise MedsegError("not a dataset folder (no dataset.json, medseg.yaml or manifest.yaml)", path)
    data = _read_structured(desc)
    kind = description_kind(data)
    if kind == "manifest":
        raise MedsegError("dataset.json is neither MSD (no 'training'), nnU-Net v2 (no 'channel_names') nor a "
                          "datalist (no 'training', 'validation' or 'testing')", desc)
    return _load_description(kind, data, desc)


def is_dataset_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder that :func:`load_dataset` reads as a dataset (not a folder of images)."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in ("dataset.json", *MANIFEST_NAMES))


def description_kind(data: dict) -> str:
    """``manifest``, ``nnunet``, ``datalist`` or ``msd``: the format of a parsed description (module docstring).

    A description matching none of them is called a manifest, whose loader then names the unknown keys.
    """
    if "cases" in data:
        return "manifest"
    if "channel_names" in data or "file_ending" in data:
        return "nnunet"
    if _DATALIST_KEYS & set(data) or _has_datalist_entries(data):
        return "datalist"
    if "training" in data:
        return "msd" if _MSD_KEYS & set(data) else "datalist"
    return "manifest"


def _has_datalist_entries(data: dict) -> bool:
    """A training entry whose image is a list of channel files, or a test entry that is a mapping."""
    training = data.get("training") if isinstance(data.get("training"), list) else []
    test = data.get("test") if isinstance(data.get("test"), list) else []
    return (any(isinstance(e, dict) and isinstance(e.get("image"), list) for e in training)
            or any(isinstance(e, dict) for e in test))


def channel_tag(path: str | Path) -> tuple[str, int] | None:
    """``(id, channel)`` of an nnU-Net channel file name ``<id>_<4 digits><suffix>``, else None."""
    match = _CHANNEL_TAG.match(image_stem(path))
    return (match["id"], int(match["channel"])) if match else None


def _load_description(kind: str, data: dict, desc: Path) -> Dataset:
    """An nnU-Net, MSD or datalist description (``desc``, read into ``data``) as a dataset."""
    if kind == "nnunet":
        return _load_nnunet(desc.parent, data, desc)
    if kind == "msd":
        return _load_msd(desc.parent, data, desc)
    return _load_datalist(data, desc)


def read_json(path: Path):
    """A JSON (or, by suffix, YAML) file's content; a one-line MedsegError naming the file when it cannot be
    read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
        return yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
    except Exception as exc:
        raise MedsegError(f"cannot parse ({one_line(exc)})", path) from None


def _read_structured(path: Path) -> dict:
    data = read_json(path)
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
                          fold=_fold(entry.get("fold"), desc, f"training entry {i}"),
                          annotated=_annotated(entry.get("annotated"), desc, f"training entry {i}")))
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
    training = _nnunet_cases(root / "imagesTr", root / "labelsTr", ending, channels, None)
    test = _nnunet_cases(root / "imagesTs", root / "labelsTs", ending, channels, "test")
    dataset = Dataset(name=str(data.get("name", root.name)), root=root, source="nnunet",
                      labels=labels, channels=channels, cases=training + test)
    declared = data.get("numTraining")
    if declared is not None and int(declared) != len(training):
        dataset.problems.append(f"dataset.json declares numTraining={declared} but imagesTr has {len(training)} "
                                "cases")
    return _finish(dataset)


def _nnunet_cases(images_dir: Path, labels_dir: Path, ending: str, channels: dict[int, str],
                  split: str | None) -> list[Case]:
    """The cases of one nnU-Net image folder: ids from ``<id>_0000<ending>``, one file per declared channel.

    A training case always names its label (a missing one is a check error); a test case only an existing one.
    """
    ids = sorted({p.name[: -len(ending) - 5] for p in images_dir.glob(f"*_0000{ending}")})
    cases = []
    for case_id in ids:
        label = labels_dir / f"{case_id}{ending}"
        images = tuple(images_dir / f"{case_id}_{c:04d}{ending}" for c in sorted(channels))
        cases.append(Case(id=case_id, images=images, label=label if split is None or label.is_file() else None,
                          split=split))
    return cases


def _load_datalist(data: dict, desc: Path) -> Dataset:
    """A MONAI / Auto3DSeg datalist (module docstring): training, validation and test entries."""
    labels, channels = _datalist_names(data, desc)
    base = _resolve(desc.parent, data["dataroot"]) if data.get("dataroot") else desc.parent
    written, cases = [], []
    for key, split in _DATALIST_SECTIONS:
        section = data.get(key) or []
        if not isinstance(section, list):
            raise MedsegError(f"'{key}' must be a list of entries", desc)
        for i, entry in enumerate(section):
            first, case = _datalist_case(entry, base, split, desc, f"{key} entry {i}")
            written.append(first)
            cases.append(case)
    counts = Counter(c.id for c in cases)
    cases = [replace(c, id=_path_id(w)) if counts[c.id] > 1 else c for w, c in zip(written, cases, strict=True)]
    return _finish(Dataset(name=str(data.get("name", desc.stem)), root=desc.parent, source="datalist",
                           labels=labels, channels=channels, cases=cases))


def _datalist_names(data: dict, desc: Path) -> tuple[dict[int, str], dict[int, str]]:
    """The labels and channels a datalist must carry for medseg (a plain datalist has neither)."""
    if data.get("channels") and data.get("modality"):
        raise MedsegError("give 'channels' or 'modality', not both", desc)
    missing = [name for name, keys in (("labels", ("labels",)), ("channels", ("channels", "modality")))
               if not any(data.get(k) for k in keys)]
    if missing:
        raise MedsegError(f"a datalist names no {' and no '.join(missing)}; add "
                          f"{' and '.join(_NAMES_EXAMPLE[m] for m in missing)} to it", desc)
    key = "channels" if data.get("channels") else "modality"
    return _int_keys(data["labels"], desc, "labels"), _int_keys(data[key], desc, key)


def _datalist_case(entry, base: Path, split: str | None, desc: Path, what: str) -> tuple[str, Case]:
    """One datalist entry (a mapping, or a bare image path as in MSD's ``test``) and its first image as written."""
    if isinstance(entry, str):
        entry = {"image": entry}
    if not isinstance(entry, dict) or not entry.get("image"):
        raise MedsegError(f"{what} has no 'image'", desc)
    images = [str(p) for p in (entry["image"] if isinstance(entry["image"], list) else [entry["image"]])]
    if split is not None and entry.get("fold") is not None:
        raise MedsegError(f"{what}: 'fold' is read on training entries only", desc)
    tag = channel_tag(images[0]) if len(images) > 1 else None
    label = entry.get("label")
    return images[0], Case(id=tag[0] if tag and tag[1] == 0 else image_stem(images[0]),
                           images=tuple(_resolve(base, p) for p in images),
                           label=_resolve(base, label) if label else None,
                           fold=_fold(entry.get("fold"), desc, what), split=split,
                           annotated=_annotated(entry.get("annotated"), desc, what))


def _path_id(written: str) -> str:
    """An id from an image path below the data root: ``case_00000/imaging.nii.gz`` -> ``case_00000_imaging``."""
    folders = [part for part in Path(written).parent.parts if part not in (Path(written).anchor, ".", "..")]
    return "_".join([*folders, image_stem(written)])


def _load_manifest(path: Path, data: dict) -> Dataset:
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
            annotated=_annotated(entry.get("annotated"), path, f"case {i}"),
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


def _annotated(value, where: Path, what: str) -> tuple[int, ...] | None:
    """A list of contoured label values as a sorted tuple without background (0), or None when not given."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise MedsegError(f"{what}: 'annotated' must be a list of label values (integers)", where)
    return tuple(sorted(set(value) - {0}))


def _read_annotated_file(root: Path) -> dict[str, tuple[int, ...]] | None:
    """The folder's ``annotated_labels.json`` (case id -> contoured label values), or None when absent."""
    path = root / ANNOTATED_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise MedsegError('expected {"case id": [label values], ...}', path)
    return {str(k): _annotated(v, path, f"case '{k}'") for k, v in data.items()}


def _apply_annotated_file(dataset: Dataset) -> None:
    """Set ``Case.annotated`` from the folder's ``annotated_labels.json``; record disagreements as problems."""
    listed = _read_annotated_file(dataset.root)
    if listed is None:
        return
    cases = []
    for case in dataset.cases:
        from_file = listed.get(case.id)
        if from_file is not None and case.annotated not in (None, from_file):
            dataset.problems.append(f"case '{case.id}': 'annotated' {list(case.annotated)} differs from "
                                    f"{ANNOTATED_FILE} {list(from_file)}")
        cases.append(replace(case, annotated=from_file) if from_file is not None and case.annotated is None
                     else case)
    dataset.cases = cases
    if unknown := sorted(set(listed) - {c.id for c in cases}):
        dataset.problems.append(f"{ANNOTATED_FILE} names case(s) {unknown[:5]} that are not cases")


def _annotated_problems(dataset: Dataset) -> list[str]:
    """Contoured-label lists naming label values the dataset does not declare."""
    return [f"case '{c.id}': annotated label value(s) {sorted(set(c.annotated) - set(dataset.labels))} are not "
            f"among the declared labels {sorted(dataset.labels)}"
            for c in dataset.cases if c.annotated is not None and set(c.annotated) - set(dataset.labels)]


def _read_splits_file(root: Path) -> list[dict[str, list[str]]] | None:
    """The folder's ``splits_final.json`` as ``[{"train": [...], "val": [...]}]``, or None when absent."""
    path = root / SPLITS_FILE
    if not path.is_file():
        return None
    data = read_json(path)
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
        problems.append("cases give both 'fold' and 'split: val' (in a datalist: training folds and a "
                        "'validation' list); use one way of splitting")
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
    _apply_annotated_file(dataset)
    dataset.problems += _annotated_problems(dataset)
    return dataset
