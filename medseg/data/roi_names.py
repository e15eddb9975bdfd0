"""ROI names as planners type them -> dataset labels: a built-in TG-263 table and a user's mapping file.

Matching is exact after normalisation, never by substring. A name is split into lower-case words at spaces,
underscores, hyphens, dots and camelCase steps (``BrainStem`` -> ``brain stem``, ``LeftParotid`` -> ``left
parotid``); a first or last word ``l``/``lt``/``left`` or ``r``/``rt``/``right`` is its side and the other
words, joined, its body. ``Parotid_L``, ``L Parotid``, ``LT PAROTID``, ``Lt_Parotid``, ``Parotid Left`` and
``LeftParotid`` all become ``(L, parotid)``; ``Parotid_L_PRV3``, ``z_Parotid_L_opt`` and ``Parotid_L-PTV``
keep their extra words and match nothing.

A mapping file (YAML)::

    labels:                     # label values 1, 2, ... in this order; earlier labels win where ROIs overlap
      Brainstem: []             # [] or null: the built-in table's names for this label
      SpinalCord: [Cord, "re:^SC( |_)?\\d*$"]   # names (normalised) or re: patterns (whole raw name,
      LeftParotid: [Parotid_L]                 # case-insensitive), in priority order, then the table's names

A label takes the built-in table's names when its own name or one of its listed names is in the table.
Without a file, every table organ that some patient has becomes a label (TG-263 names, table order).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from medseg.errors import MedsegError, one_line

_SIDES = {"l": "L", "lt": "L", "left": "L", "r": "R", "rt": "R", "right": "R"}
_CAMEL = (re.compile(r"([a-z0-9])([A-Z])"), re.compile(r"([A-Z])([A-Z][a-z])"))

# TG-263 primary name -> other bodies (normalised words joined) naming the same organ. Names ending in
# "_L/_R" are one entry per side; their other names are side-less bodies ("parotid" for Parotid_L/_R).
_TABLE: dict[str, tuple[str, ...]] = {
    "Brainstem": ("brainstem",), "SpinalCord": ("cord", "spinalcanal"), "Parotid_L": ("parotid", "parotidgland"),
    "Parotid_R": ("parotid", "parotidgland"), "Esophagus": ("oesophagus",), "Larynx": ("glotticlarynx",),
    "Bone_Mandible": ("mandible", "jaw"), "Glnd_Submand_L": ("submandibular", "submandibulargland", "submand"),
    "Glnd_Submand_R": ("submandibular", "submandibulargland", "submand"),
    "Cavity_Oral": ("oralcavity",), "Lips": ("lip",), "OpticChiasm": ("chiasm", "opticchiasma"),
    "OpticNrv_L": ("opticnerve", "opticnrv"), "OpticNrv_R": ("opticnerve", "opticnrv"),
    "Eye_L": ("globe", "eyeball"), "Eye_R": ("globe", "eyeball"), "Lens_L": (), "Lens_R": (),
    "Cochlea_L": (), "Cochlea_R": (), "Brain": (), "Pituitary": ("pituitarygland", "hypophysis"),
    "Glnd_Thyroid": ("thyroid", "thyroidgland"), "BrachialPlex_L": ("brachialplexus",),
    "BrachialPlex_R": ("brachialplexus",), "Musc_Constrict": ("constrictors", "pharyngealconstrictors", "pcm"),
    "Trachea": (), "Glnd_Lacrimal_L": ("lacrimalgland",), "Glnd_Lacrimal_R": ("lacrimalgland",),
    "Hippocampus_L": (), "Hippocampus_R": (), "Lung_L": (), "Lung_R": (), "Lungs": ("lungtotal", "totallung"),
    "Heart": (), "Liver": (), "Kidney_L": (), "Kidney_R": (), "Spleen": (), "Stomach": (), "Pancreas": (),
    "Duodenum": (), "Bowel_Small": ("smallbowel",), "Bowel": ("bowelbag",), "Colon": ("largebowel",),
    "Bladder": ("urinarybladder",), "Rectum": (), "Prostate": (), "SeminalVes": ("seminalvesicles",),
    "Femur_Head_L": ("femoralhead", "femurhead", "headoffemur"),
    "Femur_Head_R": ("femoralhead", "femurhead", "headoffemur"),
}


def name_key(name: str) -> tuple[str, str]:
    """``(side, body)`` of an ROI name: side ``L``, ``R`` or ``""``; body the other words joined."""
    text = str(name)
    for pattern in _CAMEL:
        text = pattern.sub(r"\1 \2", text)
    words = [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]
    if len(words) > 1 and words[0] in _SIDES:
        return _SIDES[words[0]], "".join(words[1:])
    if len(words) > 1 and words[-1] in _SIDES:
        return _SIDES[words[-1]], "".join(words[:-1])
    return "", "".join(words)


def _table_keys() -> dict[str, set[tuple[str, str]]]:
    """TG-263 name -> every (side, body) key that names it."""
    keys = {}
    for name, others in _TABLE.items():
        side, body = name_key(name)
        keys[name] = {(side, body), *((side, other) for other in others)}
    return keys


_KEYS = _table_keys()


@dataclass(frozen=True)
class _Accept:
    key: tuple[str, str] | None = None
    pattern: re.Pattern | None = None

    def matches(self, name: str) -> bool:
        return bool(self.pattern.fullmatch(name)) if self.pattern else name_key(name) == self.key


@dataclass(frozen=True)
class LabelMapping:
    """Dataset labels and, per label, the ROI names it accepts in priority order.

    ``labels``: value -> label name (1, 2, ... in priority order: an earlier label wins where ROIs overlap).
    """

    labels: dict[int, str]
    accepts: dict[int, tuple[_Accept, ...]]
    source: str  # the mapping file, or "built-in TG-263 table"

    def label_of(self, roi_name: str) -> int | None:
        """The label an ROI name maps to, or None (never a guess)."""
        for value, accepts in self.accepts.items():
            if any(a.matches(roi_name) for a in accepts):
                return value
        return None

    def rank(self, value: int, roi_name: str) -> int:
        """Position of the first of label ``value``'s accepted names that ``roi_name`` matches (0 = best)."""
        return next(i for i, a in enumerate(self.accepts[value]) if a.matches(roi_name))


def default_mapping(roi_names: Iterable[str]) -> LabelMapping:
    """The built-in table restricted to the organs some of ``roi_names`` name, in table order."""
    found = {name_key(n) for n in roi_names}
    organs = [name for name, keys in _KEYS.items() if keys & found]
    return _mapping({name: () for name in organs}, "built-in TG-263 table")


def mapping_for(labels: dict[int, str]) -> LabelMapping:
    """A mapping for a dataset's declared labels (value -> name; 0 ignored): each accepts its own name and,
    when that name is in the built-in table, the table's names for it."""
    foreground = {v: n for v, n in sorted(labels.items()) if v}
    return _mapping({n: () for n in foreground.values()}, "declared label names + built-in table",
                    values=list(foreground))


def load_mapping(path: str | Path) -> LabelMapping:
    """Read a mapping file (module docstring).

    Raises:
        MedsegError: naming the file when it is not a mapping of this form.
    """

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise MedsegError(f"cannot read the label mapping ({one_line(exc, 150)})", path) from exc
    if not isinstance(data, dict) or set(data) != {"labels"} or not isinstance(data["labels"], dict) \
            or not data["labels"]:
        raise MedsegError("a label mapping holds one key, labels: {label name: [accepted ROI names]}", path)
    labels = {}
    for name, accepted in data["labels"].items():
        accepted = [] if accepted is None else accepted
        if not isinstance(accepted, list) or not all(isinstance(a, str) and a.strip() for a in accepted):
            raise MedsegError(f"label {name!r}: accepted names must be a list of names or re: patterns", path)
        labels[str(name)] = tuple(accepted)
    return _mapping(labels, str(path), path)


def _mapping(labels: dict[str, tuple[str, ...]], source: str, path: Path | None = None,
             values: list[int] | None = None) -> LabelMapping:
    values = values or list(range(1, len(labels) + 1))
    accepts = {}
    for value, (name, listed) in zip(values, labels.items(), strict=True):
        own = [_accept(a, path) for a in listed]
        keys = {name_key(name)} | {a.key for a in own if a.key}
        table = [k for organ, organ_keys in _KEYS.items() if organ_keys & keys for k in sorted(organ_keys)]
        if not own and not table:
            own = [_Accept(key=name_key(name))]  # not in the table: the label's own name
        accepts[value] = tuple(own) + tuple(_Accept(key=k) for k in table)
    _refuse_shared_names(accepts, dict(zip(values, labels, strict=True)), path)
    return LabelMapping(dict(zip(values, labels, strict=True)), accepts, source)


def _accept(text: str, path: Path | None) -> _Accept:
    if not text.startswith("re:"):
        return _Accept(key=name_key(text))
    try:
        return _Accept(pattern=re.compile(text[3:], re.IGNORECASE))
    except re.error as exc:
        raise MedsegError(f"bad pattern {text!r} ({exc})", path) from exc


def _refuse_shared_names(accepts: dict[int, tuple[_Accept, ...]], names: dict[int, str],
                         path: Path | None) -> None:
    """Two labels accepting the same normalised name would make the mapping decide by order alone: refused."""
    seen: dict[tuple[str, str], int] = {}
    for value, items in accepts.items():
        for key in {a.key for a in items if a.key}:
            if key in seen and seen[key] != value:
                raise MedsegError(f"labels {names[seen[key]]!r} and {names[value]!r} both accept the "
                                  f"name {' '.join(key).strip()!r}", path)
            seen[key] = value
