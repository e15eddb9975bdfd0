"""The model folder: its files, their checksums, the model's id, loading, and export for sharing.

``medseg train`` writes a *run folder*; ``medseg export`` copies from it a *model folder* (or ``.zip``)
holding only what inference needs:

- ``config.yaml`` (the resolved run config, post-processing rules included), ``plan.json``,
  ``weights.pt`` (best validation weights), ``labels.json``, ``versions.json`` and ``SHA256SUMS``;
- ``postprocess.json``, the post-processing rules chosen on validation and what they gained, and the
  temperature that calibrates the probabilities (models trained before medseg chose them have none; the
  config's rules override them label by label);
- ``fingerprint.json`` cut down to dataset-level statistics (no case ids, no per-case sizes), which
  ``medseg qa`` compares label volumes with.

A run folder also holds training records (``splits.json``, ``validation.json``, ``log.jsonl`` and the full
fingerprint, all checksummed) and, unchecksummed because they change while training runs,
``checkpoint_last.pt`` and ``cache/`` (the preprocessed training images). Export never copies those.

This package sits below ``train`` and ``infer``: it imports neither.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as md
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml

from medseg.config import RunConfig, config_from_dict
from medseg.errors import MedsegError
from medseg.io.atomic import atomic_path, current_umask, write_text_atomic
from medseg.model.networks import network_entry
from medseg.preprocess.plan import Plan

CONFIG, PLAN, WEIGHTS, LABELS, VERSIONS = "config.yaml", "plan.json", "weights.pt", "labels.json", "versions.json"
FINGERPRINT, SUMS, POSTPROCESS = "fingerprint.json", "SHA256SUMS", "postprocess.json"
IDENTITY_FILES = (CONFIG, PLAN, WEIGHTS)  # what every model has and its id hashes (with postprocess.json)
INFERENCE_FILES = (*IDENTITY_FILES, LABELS, VERSIONS, POSTPROCESS)
RUN_FILES = (*INFERENCE_FILES, FINGERPRINT, "splits.json", "validation.json", "log.jsonl")  # checksummed
SHAREABLE_FINGERPRINT = ("ranges", "median_spacing", "median_shape", "intensity", "label_voxels_median",
                         "label_volume_mm3", "cases_with_label", "label_border_fraction")
VERSIONED_PACKAGES = ("medseg", "torch", "monai", "numpy", "nibabel", "SimpleITK", "pydicom")
MAX_ZIP_BYTES = 8 * 2**30  # uncompressed; a 5-fold ensemble of the largest planned network is ~1 GB
MAX_ZIP_MEMBERS = 1000


class ModelFolder:
    """One trained model on disk (a run folder or an exported model folder)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._digests: dict[str, str] = {}

    def digest(self, name: str) -> str:
        """SHA-256 (hex) of the file ``name``, computed once per instance."""
        if name not in self._digests:
            sha = hashlib.sha256()
            with open(self.path / name, "rb") as fh:
                for block in iter(lambda: fh.read(2**20), b""):
                    sha.update(block)
            self._digests[name] = sha.hexdigest()
        return self._digests[name]

    @property
    def model_id(self) -> str:
        """16 hex digits of a SHA-256 over the digests of config, plan, weights and, when the folder has one,
        ``postprocess.json``.

        Two models differ in id whenever any of them differs, e.g. same config but another seed or another
        number of epochs, or post-processing chosen again (``medseg tune-postprocess``) with another result, so
        results (a DICOM SEG's AlgorithmVersion) change with the id. A folder without ``postprocess.json``
        (trained before medseg chose post-processing) keeps the id it had.
        """
        names = [*IDENTITY_FILES, *([POSTPROCESS] if (self.path / POSTPROCESS).is_file() else [])]
        text = "".join(f"{self.digest(name)}  {name}\n" for name in names)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def recorded_sums(self) -> dict[str, str]:
        """File name -> digest as listed in ``SHA256SUMS`` (sha256sum format)."""
        sums = {}
        for line in (self.path / SUMS).read_text().splitlines():
            digest, _, name = line.partition("  ")
            if not name or "/" in name or "\\" in name or name in (".", ".."):
                raise MedsegError(f"{SUMS}: malformed line '{line[:80]}'", self.path)
            sums[name] = digest
        return sums

    def write_sha256sums(self, names: list[str]) -> None:
        """Write ``SHA256SUMS`` for the named files (hashed afresh)."""
        self._digests.clear()
        write_text_atomic(self.path / SUMS, "".join(f"{self.digest(n)}  {n}\n" for n in sorted(names)))

    def verify(self) -> list[str]:
        """Names listed in ``SHA256SUMS`` whose content no longer matches (or that are missing)."""
        self._digests.clear()
        return [name for name, digest in self.recorded_sums().items()
                if not (self.path / name).is_file() or self.digest(name) != digest]

    def check(self) -> None:
        """Refuse a folder that lacks a file inference needs, or whose files changed since they were summed."""
        missing = [n for n in (*IDENTITY_FILES, SUMS) if not (self.path / n).is_file()]
        if missing:
            raise MedsegError(f"model folder is incomplete: {', '.join(missing)} missing", self.path)
        if bad := self.verify():
            raise MedsegError(f"model files changed since training (SHA256SUMS mismatch: {', '.join(bad)})",
                              self.path)
        if unlisted := [n for n in IDENTITY_FILES if n not in self.recorded_sums()]:
            raise MedsegError(f"SHA256SUMS does not cover {', '.join(unlisted)}", self.path)

    def compatibility_warnings(self) -> list[str]:
        """Why this model may not behave as it did in training: other major versions of torch or MONAI, or
        a plan made before inputs were reoriented to RAS (such a model saw arrays in stored order)."""
        warnings = []
        try:
            trained = json.loads((self.path / VERSIONS).read_text())
        except (OSError, ValueError):
            trained = {}
        for package in ("torch", "monai"):
            then, now = str(trained.get(package) or ""), md.version(package)
            if then and then.split(".")[0] != now.split(".")[0]:
                warnings.append(f"trained with {package} {then}, running {now}: results may differ; retrain or "
                                f"install {package}=={then}")
        if not self.load_plan().orientation:
            warnings.append("planned before medseg reoriented inputs to RAS: results may depend on how scans are "
                            "stored; retrain with this version")
        return warnings

    def load_fingerprint(self) -> dict | None:
        """The training fingerprint (dataset-level statistics), or None when the folder has none."""
        try:
            return json.loads((self.path / FINGERPRINT).read_text())
        except (OSError, ValueError):
            return None

    def load_plan(self) -> Plan:
        """The plan, its keys and types checked."""
        return Plan.read(self.path / PLAN)

    def load_config(self) -> RunConfig:
        """The resolved run config (validated: unknown keys, bad post-processing rules and a network the
        registry does not hold are errors)."""
        config = config_from_dict(yaml.safe_load((self.path / CONFIG).read_text()) or {}, str(self.path / CONFIG))
        network_entry(config.model.name, self.path / CONFIG)
        return config

    def load_weights(self) -> dict:
        """The network's state dict, loaded with ``weights_only=True`` (a model file never runs code)."""
        return torch.load(self.path / WEIGHTS, map_location="cpu", weights_only=True)

    def seal(self, labels: dict) -> str:
        """End of training: write ``versions.json``, ``labels.json`` and ``SHA256SUMS``; return the model id."""
        versions = {}
        for pkg in VERSIONED_PACKAGES:
            try:
                versions[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                versions[pkg] = None
        write_text_atomic(self.path / VERSIONS, json.dumps(versions, indent=2))
        write_text_atomic(self.path / LABELS, json.dumps({str(k): v for k, v in labels.items()}, indent=2))
        self.reseal()
        return self.model_id

    def reseal(self) -> None:
        """Sum afresh the files of a run folder that exist (after training, or after its post-processing
        was chosen again); ``versions.json`` keeps the versions training ran with."""
        self.write_sha256sums([n for n in RUN_FILES if (self.path / n).exists()])

    def write_postprocess(self, rules: dict[int, dict], choice: dict, calibration: dict | None = None) -> None:
        """Write ``postprocess.json``: the chosen ``rules`` (label value -> rule mapping, as in the config),
        the ``choice`` report (per label name: rule, Dice before/after, gain) and the probability
        ``calibration`` fitted on the same fold (:func:`medseg.model.calibration.fit_temperature`)."""
        data = {"rules": {str(k): v for k, v in sorted(rules.items())}, "choice": choice,
                **({"calibration": calibration} if calibration else {})}
        write_text_atomic(self.path / POSTPROCESS, json.dumps(data, indent=1))

    def load_temperature(self) -> float:
        """The temperature of ``postprocess.json``'s calibration (1.0 without one: uncalibrated). Call after
        :meth:`load_postprocess`, which checks the file."""
        try:
            value = json.loads((self.path / POSTPROCESS).read_text())["calibration"]["temperature"]
        except (OSError, ValueError, KeyError, TypeError):
            return 1.0
        return float(value) if isinstance(value, int | float) and 0 < value < float("inf") else 1.0

    def load_postprocess(self) -> dict | None:
        """The rules of ``postprocess.json`` (label value as text -> rule mapping), or None without the file.

        Raises:
            MedsegError: the file is not covered by ``SHA256SUMS`` or is not such a mapping.
        """
        if not (self.path / POSTPROCESS).is_file():
            return None
        if POSTPROCESS not in self.recorded_sums():
            raise MedsegError(f"{POSTPROCESS} is not listed in {SUMS}: medseg did not write it", self.path)
        try:
            rules = json.loads((self.path / POSTPROCESS).read_text())["rules"]
        except (ValueError, KeyError, TypeError):
            rules = None
        if not isinstance(rules, dict):
            raise MedsegError(f"{POSTPROCESS} has no 'rules' mapping", self.path)
        return rules


def find_model_folders(root: str | Path) -> list[ModelFolder]:
    """``root`` itself when it is a model folder, else its sub-folders that are (one per fold).

    A folder holding nothing but one sub-folder (a zip of a folder of folds) is looked into.
    """
    root = Path(root)
    if (root / PLAN).exists():
        return [ModelFolder(root)]
    folders = [ModelFolder(p.parent) for p in sorted(root.glob(f"*/{PLAN}"))]
    children = [p for p in root.iterdir() if not p.name.startswith(".")] if root.is_dir() else []
    if not folders and len(children) == 1 and children[0].is_dir():
        return find_model_folders(children[0])
    if not folders:
        raise MedsegError("not a model folder (no plan.json)", root)
    return folders


def combined_id(folders: list[ModelFolder]) -> str:
    """The id of one model, or of an ensemble of folds (a hash of their ids, in folder order)."""
    if len(folders) == 1:
        return folders[0].model_id
    return hashlib.sha256("\n".join(f.model_id for f in folders).encode()).hexdigest()[:16]


@contextlib.contextmanager
def open_model(path: str | Path) -> Iterator[list[ModelFolder]]:
    """The model folders of ``path``: a model folder, a folder of fold folders, or a ``.zip`` of either.

    A zip is extracted (safely, see :func:`extract_zip`) into a temporary folder that is removed when the
    block ends: load everything needed inside it.
    """
    path = Path(path)
    if not path.exists():
        raise MedsegError("model not found", path)
    if path.is_dir():
        yield find_model_folders(path)
        return
    if path.suffix.lower() != ".zip":
        raise MedsegError("a model is a folder or a .zip file", path)
    with tempfile.TemporaryDirectory(prefix="medseg-model-") as tmp:
        extract_zip(path, Path(tmp))
        yield find_model_folders(tmp)


def extract_zip(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest``, refusing member paths outside ``dest``, links, more than
    :data:`MAX_ZIP_MEMBERS` members and more than :data:`MAX_ZIP_BYTES` bytes in all."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > MAX_ZIP_MEMBERS:
                raise MedsegError(f"zip has {len(members)} members (a model has at most {MAX_ZIP_MEMBERS})",
                                  archive)
            if (total := sum(m.file_size for m in members)) > MAX_ZIP_BYTES:
                raise MedsegError(f"zip unpacks to {total} bytes, over the {MAX_ZIP_BYTES} allowed", archive)
            for member in members:
                _extract_member(zf, member, dest, archive)
    except zipfile.BadZipFile as exc:
        raise MedsegError(f"not a readable zip ({exc})", archive) from None


def _extract_member(zf: zipfile.ZipFile, member: zipfile.ZipInfo, dest: Path, archive: Path) -> None:
    name = member.filename
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise MedsegError(f"zip member '{name[:80]}' points outside the archive's folder", archive)
    if (member.external_attr >> 16) & 0o170000 == 0o120000:
        raise MedsegError(f"zip member '{name[:80]}' is a link", archive)
    target = dest / name
    if member.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(member) as src, open(target, "wb") as dst:
        for block in iter(lambda: src.read(2**20), b""):
            written += len(block)
            if written > member.file_size:  # never trust the declared size alone
                raise MedsegError(f"zip member '{name[:80]}' is larger than declared", archive)
            dst.write(block)


def export_model(source: str | Path, out: str | Path) -> str:
    """Copy what inference needs from a run folder (or a folder of fold folders) to ``out``.

    ``out`` ending in ``.zip`` gives a zip file, anything else a folder; it must not exist yet. Files are
    verified against the run's ``SHA256SUMS`` first, staged beside ``out`` and moved into place at the end,
    so an interrupted export leaves no ``out``. Returns the model id (the same as the run folder's).
    """
    out = Path(out)
    if out.exists():
        raise MedsegError("already exists; export writes a new folder or zip", out)
    with open_model(source) as folders:
        for folder in folders:
            folder.check()
        single = len(folders) == 1
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp", dir=out.parent))
        try:
            for folder in folders:
                _stage_folder(folder, stage if single else stage / folder.path.name)
            model_id = combined_id(find_model_folders(stage))
            if model_id != combined_id(folders):
                raise MedsegError("model files changed while exporting (is training still running?)", source)
            if out.suffix.lower() == ".zip":
                _zip_folder(stage, out)
            else:
                os.chmod(stage, 0o777 & ~current_umask())  # mkdtemp's 0700 would hide the model from colleagues
                os.rename(stage, out)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return model_id


def _stage_folder(folder: ModelFolder, dest: Path) -> None:
    """Copy the inference files byte for byte, the shareable part of the fingerprint, and sum them."""
    dest.mkdir(parents=True, exist_ok=True)
    names = [n for n in INFERENCE_FILES if (folder.path / n).is_file()]
    for name in names:
        shutil.copyfile(folder.path / name, dest / name)
    if (folder.path / FINGERPRINT).is_file():
        full = json.loads((folder.path / FINGERPRINT).read_text())
        shared = {k: full[k] for k in SHAREABLE_FINGERPRINT if k in full}
        write_text_atomic(dest / FINGERPRINT, json.dumps(shared, indent=1))
        names.append(FINGERPRINT)
    ModelFolder(dest).write_sha256sums(names)


def _zip_folder(folder: Path, out: Path) -> None:
    with atomic_path(out, overwrite=False) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(folder).as_posix())
