"""Coded concepts (SNOMED CT) and display colours for label names, for DICOM SEG and RTSTRUCT outputs.

A label name such as ``"Kidney_L"``, ``"left kidney"`` or ``"ParotidRight"`` is normalised (camel case split,
lower case, underscores/dashes/spaces as word breaks, a ``left``/``l``/``right``/``r`` word at either end
taken as laterality) and looked up in a small table of common organs and lesions. Every code is a pydicom
``codes.SCT`` concept listed in the DICOM context groups for segmentation (CID 7150 categories, CID 7151
types, CID 244 laterality, CID 4 anatomic regions). Unknown names get category and type "Tissue" and a
colour from a fixed palette. A model's own label metadata overrides the table (:func:`segment_concept`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from medseg.errors import MedsegError

RGB = tuple[int, int, int]

ANATOMY = codes.SCT.AnatomicalStructure  # 91723000, CID 7150
# 49755003, CID 7150; older tables call it "Morphologically Altered Structure".
LESION = codes.SCT.MorphologicallyAbnormalStructure
TISSUE = codes.SCT.Tissue  # 85756007, CID 7150 and 7151


@dataclass(frozen=True)
class SegmentConcept:
    """What one label is, coded, and how to show it.

    Attributes:
        category: Segmented property category (CID 7150), e.g. Anatomical Structure.
        type: Segmented property type (CID 7151), e.g. Kidney.
        laterality: Type modifier (CID 244: Left or Right), or None.
        region: Anatomic region the type lies in (e.g. Lung for a lung nodule), or None.
        color: Recommended display colour, sRGB 0-255 per channel.
    """

    category: Code
    type: Code
    laterality: Code | None
    region: Code | None
    color: RGB

    @property
    def is_lesion(self) -> bool:
        """True for morphologically abnormal structures (nodules, lesions, tumours)."""
        return self.category == LESION


@dataclass(frozen=True)
class _Entry:
    type: Code
    category: Code
    color: RGB
    region: Code | None = None


# Keys are normalised names with the spaces removed (see normalise_name). Colours are medseg's own choice:
# conventional hues (liver brown, bone off-white, lesions green...), distinct between neighbouring organs.
_TABLE: dict[str, _Entry] = {}


def _add(names: str, entry: _Entry) -> None:
    for name in names.split(","):
        _TABLE[name.replace(" ", "")] = entry


_add("brainstem", _Entry(codes.SCT.BrainStem, ANATOMY, (143, 188, 143)))
_add("spinal cord", _Entry(codes.SCT.SpinalCord, ANATOMY, (244, 214, 49)))
_add("parotid,parotid gland", _Entry(codes.SCT.ParotidGland, ANATOMY, (255, 140, 0)))
_add("esophagus,oesophagus", _Entry(codes.SCT.Esophagus, ANATOMY, (211, 171, 141)))
_add("larynx", _Entry(codes.SCT.Larynx, ANATOMY, (0, 151, 206)))
_add("mandible,bone mandible", _Entry(codes.SCT.Mandible, ANATOMY, (241, 214, 145)))
_add("hippocampus", _Entry(codes.SCT.Hippocampus, ANATOMY, (220, 216, 20)))
_add("hippocampus anterior,anterior hippocampus", _Entry(codes.SCT.Hippocampus, ANATOMY, (220, 216, 20)))
_add("hippocampus posterior,posterior hippocampus", _Entry(codes.SCT.Hippocampus, ANATOMY, (60, 140, 220)))
_add("liver", _Entry(codes.SCT.Liver, ANATOMY, (221, 130, 101)))
_add("spleen", _Entry(codes.SCT.Spleen, ANATOMY, (157, 108, 162)))
_add("kidney", _Entry(codes.SCT.Kidney, ANATOMY, (185, 102, 83)))
_add("lung", _Entry(codes.SCT.Lung, ANATOMY, (197, 165, 145)))
_add("heart", _Entry(codes.SCT.Heart, ANATOMY, (206, 110, 84)))
_add("bladder,urinary bladder", _Entry(codes.SCT.Bladder, ANATOMY, (222, 198, 101)))
_add("prostate,prostate gland", _Entry(codes.SCT.Prostate, ANATOMY, (230, 158, 140)))
_add("brain", _Entry(codes.SCT.Brain, ANATOMY, (250, 250, 225)))
_add("nodule", _Entry(codes.SCT.Nodule, LESION, (0, 200, 70)))
_add("lung nodule,pulmonary nodule", _Entry(codes.SCT.Nodule, LESION, (0, 200, 70), codes.SCT.Lung))
_add("lesion", _Entry(codes.SCT.Lesion, LESION, (0, 200, 70)))
_add("lung lesion,pulmonary lesion", _Entry(codes.SCT.Lesion, LESION, (0, 200, 70), codes.SCT.Lung))
_add("tumour,tumor,neoplasm", _Entry(codes.SCT.Neoplasm, LESION, (0, 200, 70)))
_add("lung tumour,lung tumor,lung neoplasm", _Entry(codes.SCT.Neoplasm, LESION, (0, 200, 70), codes.SCT.Lung))

# Colours for names the table does not know, by label value (cycled): well separated hues.
_PALETTE: tuple[RGB, ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
)

_LEFT, _RIGHT = ("left", "l"), ("right", "r")


def normalise_name(name: str) -> tuple[str, Code | None]:
    """Split a label name into its table key and laterality.

    Returns:
        (key, laterality): ``key`` is the lower-case name without word breaks or laterality words
        (``"Spinal_Cord"`` -> ``"spinalcord"``); ``laterality`` is ``codes.SCT.Left``/``Right`` when a
        ``left``/``l``/``right``/``r`` word starts or ends the name, else None.
    """
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", str(name)).lower()
    tokens = [t for t in re.split(r"[^a-z0-9]+", words) if t]
    laterality = None
    for index in (0, -1):
        if len(tokens) > 1 and tokens[index] in _LEFT + _RIGHT:
            laterality = codes.SCT.Left if tokens.pop(index) in _LEFT else codes.SCT.Right
            break
    return "".join(tokens), laterality


def concept_for(name: str, value: int = 1) -> SegmentConcept:
    """The coded concept and colour of a label name: the table's, or Tissue/Tissue for unknown names.

    Args:
        name: Label name as the model calls it.
        value: Label value; picks the palette colour of an unknown name.
    """
    key, laterality = normalise_name(name)
    entry = _TABLE.get(key)
    if entry is None:
        return SegmentConcept(TISSUE, TISSUE, None, None, _PALETTE[(int(value) - 1) % len(_PALETTE)])
    return SegmentConcept(entry.category, entry.type, laterality, entry.region, entry.color)


def segment_concept(name: str, value: int, metadata: Mapping | None = None) -> SegmentConcept:
    """:func:`concept_for` overridden by a model's label metadata.

    Args:
        name: Label name.
        value: Label value.
        metadata: Optional ``{"category": code, "type": code, "modifier": code, "color": (r, g, b)}``; each
            code is ``(value, scheme designator, meaning)`` or a pydicom ``Code``. ``category`` and ``type``
            come together; ``modifier`` (laterality) only with them; ``color`` may come alone.

    Raises:
        MedsegError: for unknown keys, a lone category or type, or a malformed code or colour.
    """
    concept = concept_for(name, value)
    if not metadata:
        return concept
    unknown = set(metadata) - {"category", "type", "modifier", "color"}
    if unknown:
        raise MedsegError(f"label {value} ({name}): unknown code keys {sorted(unknown)}; "
                          "expected category, type, modifier, color")
    if ("category" in metadata) != ("type" in metadata):
        raise MedsegError(f"label {value} ({name}): give both category and type codes, or neither")
    if "modifier" in metadata and "type" not in metadata:
        raise MedsegError(f"label {value} ({name}): a modifier code needs category and type codes")
    if "type" in metadata:
        modifier = metadata.get("modifier")
        concept = replace(concept, category=_code(metadata["category"], value, name),
                          type=_code(metadata["type"], value, name), region=None,
                          laterality=None if modifier is None else _code(modifier, value, name))
    if "color" in metadata:
        concept = replace(concept, color=_color(metadata["color"], value, name))
    return concept


def label_concepts(label_names: Mapping[int, str], label_codes: Mapping | None = None) -> dict[int, SegmentConcept]:
    """:func:`segment_concept` of every foreground label, in label order.

    Args:
        label_names: Label value -> name (0, the background, is skipped).
        label_codes: Optional label value (int, or its string as JSON has it) -> code metadata.

    Raises:
        MedsegError: when ``label_codes`` names a label that ``label_names`` lacks, or has bad metadata.
    """
    metadata: dict[int, Mapping] = {}
    for key, item in (label_codes or {}).items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            value = None
        if value is None or value not in {int(v) for v in label_names} or value == 0:
            raise MedsegError(f"label codes given for {key!r}, which is not a foreground label")
        metadata[value] = item
    return {int(v): segment_concept(str(label_names[v]), int(v), metadata.get(int(v)))
            for v in sorted(label_names, key=int) if int(v) != 0}


def _code(item, value: int, name: str) -> Code:
    if isinstance(item, Code):
        return item
    if isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 3 and all(
            isinstance(part, str) and part.strip() for part in item):
        return Code(value=item[0].strip(), scheme_designator=item[1].strip(), meaning=item[2].strip())
    raise MedsegError(f"label {value} ({name}): a code must be (value, scheme designator, meaning), got {item!r}")


def _color(item, value: int, name: str) -> RGB:
    if (isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 3
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in item)):
        return int(item[0]), int(item[1]), int(item[2])
    raise MedsegError(f"label {value} ({name}): a colour must be three integers 0-255, got {item!r}")


def srgb_to_dicom_cielab(rgb: RGB) -> tuple[int, int, int]:
    """Convert an sRGB colour (0-255) to DICOM's scaled CIELab (RecommendedDisplayCIELabValue).

    sRGB is linearised (IEC 61966-2-1), taken to CIE XYZ and then to L*a*b* relative to the D65 white
    point; DICOM (PS3.3 C.10.7.1.1) maps L* 0..100 and a*, b* -128..127 linearly onto 0..65535.

    Returns:
        (L, a, b) as unsigned 16-bit integers.
    """
    linear = []
    for channel in rgb:
        c = channel / 255.0
        linear.append(c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4)
    r, g, b = linear
    x = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / 0.95047
    y = 0.2126729 * r + 0.7151522 * g + 0.0721750 * b
    z = (0.0193339 * r + 0.1191920 * g + 0.9503041 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1.0 / 3.0) if t > (6.0 / 29.0) ** 3 else t / (3.0 * (6.0 / 29.0) ** 2) + 4.0 / 29.0

    lightness = 116.0 * f(y) - 16.0
    a_star, b_star = 500.0 * (f(x) - f(y)), 200.0 * (f(y) - f(z))
    scaled = (lightness / 100.0 * 65535.0, (a_star + 128.0) / 255.0 * 65535.0, (b_star + 128.0) / 255.0 * 65535.0)
    return tuple(int(round(min(max(v, 0.0), 65535.0))) for v in scaled)  # type: ignore[return-value]
