"""DICOM exports as datasets: pairing by UID, ROI name mapping, honest labels, exact rasterisation, refusals.

Real data: OpenKBP patients exported as a planning system would (CT + RTSTRUCT written by rt-utils, not by
medseg), with ``truth/`` label maps the RTSTRUCTs were drawn from and ``rois.json`` saying what every ROI is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medseg.data.dicom_export import case_labels, scan_export
from medseg.data.roi_names import default_mapping, load_mapping, mapping_for, name_key
from medseg.data.source import is_dicom_export, materialise, open_dataset
from medseg.errors import MedsegError
from medseg.io.dicom import read_series

OKBP_LABELS = {1: "Brainstem", 2: "SpinalCord", 3: "RightParotid", 4: "LeftParotid", 5: "Esophagus", 6: "Larynx",
               7: "Mandible"}
ROOT = Path(__file__).resolve().parents[1]
MAPPING = ROOT / "data_manifests" / "openkbp_rois.yaml"


@pytest.fixture(scope="module")
def export(shared_data) -> Path:
    path = shared_data / "openkbp_dicomrt"
    if not (path / "export").is_dir():
        pytest.skip(f"openkbp_dicomrt not in {shared_data}")
    return path


@pytest.fixture(scope="module")
def rois(export) -> dict:
    return json.loads((export / "truth" / "rois.json").read_text())


def _copy(export: Path, patients: list[str], dest: Path) -> Path:
    for p in patients:
        shutil.copytree(export / "export" / p, dest / p)
    return dest


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _rtstruct(folder: Path) -> Path:
    return next(p for p in folder.rglob("RS.*.dcm"))


@pytest.mark.parametrize("patient", ["HN07000", "HN07001"])  # flat layout, CT/ + RTSTRUCT/ subfolders
def test_pairs_by_series_uid_in_both_layouts(export, rois, patient):
    scan = scan_export(export / "export" / patient)
    assert rois[patient]["layout"] == ("flat" if patient == "HN07000" else "split")
    assert len(scan.cases) == 1 and not scan.left_out and scan.unlabelled == 0
    case = scan.cases[0]
    series_uid = pydicom.dcmread(case.series.files[0], stop_before_pixels=True).SeriesInstanceUID
    assert case.label.series_uids == (series_uid,)
    assert {s.name for s in case.label.structures} == set(rois[patient]["rois"])


def test_label_object_is_paired_by_uid_not_by_folder(export, tmp_path):
    """An RTSTRUCT moved beside another patient's CT still pairs with its own series; one whose series is
    absent is left out with a reason naming it, and the other patients go on."""
    root = _copy(export, ["HN07000", "HN07001", "HN07002"], tmp_path / "export")
    moved = _rtstruct(root / "HN07000")
    shutil.move(moved, root / "HN07001" / "CT" / moved.name)
    shutil.rmtree(root / "HN07002" / "CT")
    scan = scan_export(root)
    assert sorted(len(c.series.files) for c in scan.cases) == [128, 128]
    for case in scan.cases:
        assert case.series.files[0].parent.parent == case.label.path.parent.parent or \
            case.series.files[0].parent == root / "HN07000"
    (line,) = scan.left_out
    assert "HN07002" in line and "not in the export" in line and "\n" not in line


def test_roi_names_map_to_the_right_organ_and_planning_structures_to_nothing(rois):
    """Every ROI name of the shared export, against what rois.json says it is (None: not an organ)."""
    mapping = mapping_for(OKBP_LABELS)
    for patient in rois.values():
        for name, organ in patient["rois"].items():
            value = mapping.label_of(name)
            if organ is None:
                assert value is None, name
            elif organ != "EMPTY":  # an organ's template ROI without contours: maps, is then not contoured
                assert mapping.labels[value] == organ, name


@pytest.mark.parametrize("name", ["Parotid_L", "L Parotid", "LT PAROTID", "Lt_Parotid", "Parotid Left",
                                  "LeftParotid", "Lt. Parotid", "parotid gland (L)"])
def test_laterality_variants_map_to_one_organ(name):
    assert name_key(name) == ("L", "parotid") or name_key(name) == ("L", "parotidgland")
    assert default_mapping([name]).labels == {1: "Parotid_L"}


@pytest.mark.parametrize("name", ["z_Parotid_L_opt", "Parotid_L_PRV3", "Parotid_L-PTV", "PTV70", "Parotid",
                                  "Parotids", "BODY", "Skin", "Brainstem_PRV5"])
def test_planning_structures_and_sideless_names_are_never_organs(name):
    assert mapping_for(OKBP_LABELS).label_of(name) is None
    assert default_mapping([name]).labels == {}


def test_mapping_file_priority_patterns_and_refusals(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("labels:\n  Cord: [Cord, 're:^SC\\d?$']\n  Parotid_R: null\n")
    mapping = load_mapping(path)
    assert mapping.labels == {1: "Cord", 2: "Parotid_R"}
    assert mapping.label_of("SC2") == 1 and mapping.label_of("SC22") is None
    assert mapping.label_of("Spinal_Cord") == 1  # the table's names for the label's own name
    assert mapping.label_of("RT PAROTID") == 2
    assert mapping.rank(1, "cord") == 0 and mapping.rank(1, "SpinalCord") > 1
    path.write_text("labels:\n  A: [Parotid_L]\n  B: [L Parotid]\n")
    with pytest.raises(MedsegError, match="both accept"):
        load_mapping(path)
    path.write_text("labels: [Brainstem]\n")
    with pytest.raises(MedsegError, match=str(path)):
        load_mapping(path)


def test_rasterisation_matches_truth_and_an_independent_reader(export, rois):
    """medseg's masks against the label maps the RTSTRUCTs were drawn from (nibabel) and against a reader
    built on SimpleITK's geometry and matplotlib's polygon test."""
    mapping = mapping_for(OKBP_LABELS)
    for patient in ("HN07001", "HN07003", "HN07007"):
        case = scan_export(export / "export" / patient).cases[0]
        image = read_series(case.series)
        labels = case_labels(case, image, mapping)
        truth = nib.load(export / "truth" / f"{patient}.nii.gz")
        np.testing.assert_allclose(truth.affine, image.affine, atol=1e-4)
        truth_array = np.asarray(truth.dataobj)
        reference = _reference_masks(case)
        for value, roi_name in labels.used.items():
            mine = labels.label.array == value
            assert _dice(mine, truth_array == value) >= 0.97, (patient, roi_name)
            assert _dice(mine, reference[roi_name]) >= 0.99, (patient, roi_name)


def _reference_masks(case) -> dict[str, np.ndarray]:
    """ROI name -> mask: contour points to voxel indices by SimpleITK, each contour filled with its outline by
    Pillow (as OpenCV's fillPoly does in rt-utils' own reader), contours of a slice combined even-odd."""
    from PIL import Image, ImageDraw

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in case.series.files])
    image = reader.Execute()
    ds = pydicom.dcmread(case.label.path)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    out = {}
    for roi in ds.ROIContourSequence:
        mask = np.zeros((image.GetWidth(), image.GetHeight(), image.GetDepth()), dtype=bool)
        for contour in roi.get("ContourSequence", []):
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            index = np.array([image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in points])
            drawing = Image.new("1", (image.GetWidth(), image.GetHeight()))
            xy = [tuple(p) for p in np.round(index[:, :2]).astype(int).tolist()]
            ImageDraw.Draw(drawing).polygon(xy * (2 if len(xy) == 1 else 1), fill=1, outline=1)
            mask[:, :, int(round(index[0, 2]))] ^= np.asarray(drawing).T
        out[names[int(roi.ReferencedROINumber)]] = mask
    return out


def test_empty_template_roi_is_not_contoured(export, rois, tmp_path):
    patient = "HN07002"
    assert rois[patient]["rois"]["Parotid_L"] == "EMPTY"
    dataset = open_dataset(export / "export" / patient, tmp_path, MAPPING)
    (case,) = dataset.cases
    assert 4 not in case.annotated and set(case.annotated) == {1, 2, 3, 7}
    label = np.asarray(nib.load(case.label).dataobj)
    assert 4 not in np.unique(label)


def test_overlapping_rois_follow_the_mapping_order_and_are_measured(export, tmp_path):
    """A copy of the brainstem ROI named Larynx: both map; the earlier label (Brainstem) keeps the voxels and
    the overlap equals the brainstem's volume (SimpleITK's spacing)."""
    root = _copy(export, ["HN07001"], tmp_path / "export")
    rs = _rtstruct(root)
    ds = pydicom.dcmread(rs)
    brainstem = next(r for r in ds.StructureSetROISequence if r.ROIName == "brain stem")
    copy_roi = pydicom.Dataset()
    copy_roi.ROINumber, copy_roi.ROIName = 99, "Larynx"
    copy_roi.ReferencedFrameOfReferenceUID = brainstem.ReferencedFrameOfReferenceUID
    copy_roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence.append(copy_roi)
    contours = next(r for r in ds.ROIContourSequence if int(r.ReferencedROINumber) == int(brainstem.ROINumber))
    duplicate = pydicom.Dataset()
    duplicate.ReferencedROINumber, duplicate.ContourSequence = 99, contours.ContourSequence
    ds.ROIContourSequence.append(duplicate)
    ds.save_as(rs)
    case = scan_export(root).cases[0]
    labels = case_labels(case, read_series(case.series), mapping_for(OKBP_LABELS))
    truth = np.asarray(nib.load(export / "truth" / "HN07001.nii.gz").dataobj)
    assert np.array_equal(labels.label.array == 1, truth == 1) and not (labels.label.array == 6).any()
    voxel = np.prod(sitk.ReadImage(str(case.series.files[0])).GetSpacing()[:2]) * case.series.slice_step
    assert labels.overlaps_mm3[(1, 6)] == pytest.approx((truth == 1).sum() * voxel, rel=1e-6)
    assert any("overlap" in n and "Brainstem kept" in n for n in labels.notes)


def test_damaged_rtstructs_are_refused_in_one_line_and_the_others_go_on(export, tmp_path):
    """Contour points missing (one ROI refused, its organ not contoured), a contour off its slice plane (that
    ROI refused), a reference to an absent series (that patient left out); the third patient is intact."""
    root = _copy(export, ["HN07000", "HN07001", "HN07003"], tmp_path / "export")
    ds = pydicom.dcmread(_rtstruct(root / "HN07000"))
    names = {int(r.ROINumber): r.ROIName for r in ds.StructureSetROISequence}
    cut = next(r for r in ds.ROIContourSequence if names[int(r.ReferencedROINumber)] == "Brainstem")
    cut.ContourSequence[0].ContourData = cut.ContourSequence[0].ContourData[:-3]
    lifted = next(r for r in ds.ROIContourSequence if names[int(r.ReferencedROINumber)] == "SpinalCord")
    data = np.asarray(lifted.ContourSequence[0].ContourData, dtype=float).reshape(-1, 3)
    data[:, 2] += 2.0  # slices 3 mm apart: 2 mm off its own plane
    lifted.ContourSequence[0].ContourData = [f"{v:.4f}" for v in data.ravel()]
    ds.save_as(_rtstruct(root / "HN07000"))
    ds = pydicom.dcmread(_rtstruct(root / "HN07001"))
    ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0] \
        .SeriesInstanceUID = "1.2.3.4.5"
    ds.save_as(_rtstruct(root / "HN07001"))
    dataset = open_dataset(root, tmp_path / "work", MAPPING)
    assert len(dataset.cases) == 2
    left = [n for n in dataset.notes if n.startswith("left out:")]
    assert len(left) == 1 and "HN07001" in left[0] and "not in the export" in left[0]
    refused = [n for n in dataset.notes if "refused" in n]
    assert len(refused) == 2 and all("\n" not in n for n in refused)
    assert any("'Brainstem'" in n and "not 3 x NumberOfContourPoints" in n for n in refused)
    assert any("'SpinalCord'" in n and "off the image plane" in n for n in refused)
    damaged = next(c for c in dataset.cases if 1 not in c.annotated)
    assert 2 not in damaged.annotated and {3, 4, 5, 7} <= set(damaged.annotated)


def test_dicom_seg_labels_pair_and_match_dcmqi_reference(data_path, tmp_path):
    """A DICOM SEG (dcmqi's liver) as a label object: paired with its CT by UID, mask equal to dcmqi's NRRD."""
    ref = data_path("dicom/seg_reference")
    root = tmp_path / "export"
    shutil.copytree(ref / "ct", root / "ct")
    shutil.copy(ref / "liver.dcm", root / "liver.dcm")
    scan = scan_export(root)
    (case,) = scan.cases
    assert case.label.kind == "SEG" and [s.drawn for s in case.label.structures] == [True]
    mapping = load_mapping(_write(tmp_path / "m.yaml", "labels:\n  Liver: []\n"))
    image = read_series(case.series)
    labels = case_labels(case, image, mapping)
    nrrd = sitk.ReadImage(str(ref / "liver_seg.nrrd"))
    reference = sitk.GetArrayFromImage(nrrd).transpose(2, 1, 0) > 0  # (x, y, z) on the NRRD's grid
    z = [int(round(nrrd.TransformPhysicalPointToContinuousIndex(
        (-image.affine[0, 3], -image.affine[1, 3], image.affine[2, 3] + k * image.affine[2, 2]))[2]))
        for k in range(image.spatial_shape[2])]
    assert labels.used and _dice(labels.label.array == 1, reference[:, :, z]) == 1.0


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_convert_writes_nnunet_raw_and_evaluate_reads_the_export_as_truth(export, tmp_path):
    """convert --labels -> an nnU-Net v2 raw folder that medseg reads; predictions equal to truth/ (named as
    medseg infer names DICOM outputs) score Dice 1 against the export's RTSTRUCTs."""
    from typer.testing import CliRunner

    from medseg.cli import app

    root = _copy(export, ["HN07003", "HN07004"], tmp_path / "export")
    assert is_dicom_export(root)
    out = tmp_path / "raw"
    result = CliRunner().invoke(app, ["convert", str(root), str(out), "--labels", str(MAPPING)])
    assert result.exit_code == 0, result.output
    description = json.loads((out / "dataset.json").read_text())
    assert description["labels"] == {"background": 0, **{n: v for v, n in OKBP_LABELS.items()}}
    assert "RightParotid" in result.output and "unmapped" in result.output
    preds = tmp_path / "pred"
    preds.mkdir()
    for case in scan_export(root).cases:
        patient = case.series.files[0].relative_to(root).parts[0]
        truth = nib.load(export / "truth" / f"{patient}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(truth.dataobj).astype(np.uint8), truth.affine), preds / f"{case.id}.nii.gz")
    result = CliRunner().invoke(app, ["evaluate", str(preds), str(root), "--labels", str(MAPPING)])
    assert result.exit_code == 0, result.output
    summary = json.loads((preds / "evaluation" / "summary.json").read_text())
    dice = {name: figures["dice"]["mean"] for name, figures in summary["summary"].items()}
    assert dice and all(v == pytest.approx(1.0) for v in dice.values())


def test_manifest_case_with_an_rtstruct_label(export, shared_data, tmp_path):
    import yaml

    folder = export / "export" / "HN07001"
    manifest = tmp_path / "mixed.yaml"
    hippo = shared_data / "hippocampus"
    manifest.write_text(yaml.safe_dump({
        "name": "mixed", "channels": {0: "CT"}, "labels": {0: "background", **OKBP_LABELS},
        "cases": [{"id": "rt", "images": [str(folder / "CT")], "label": str(_rtstruct(folder))},
                  {"id": "nifti", "images": [str(hippo / "imagesTr" / "hippocampus_001.nii.gz")]}]}))
    path, dataset = materialise(manifest, tmp_path / "work")
    assert path == tmp_path / "work"
    rt = next(c for c in dataset.cases if c.id == "rt")
    truth = np.asarray(nib.load(export / "truth" / "HN07001.nii.gz").dataobj)
    assert np.array_equal(np.asarray(nib.load(rt.label).dataobj), truth)
    assert set(rt.annotated) == set(np.unique(truth)) - {0}
    assert {c.id for c in __import__("medseg").data.load_dataset(path).cases} == {"rt", "nifti"}


def test_medseg_rtstruct_round_trips_through_the_default_table(export, tmp_path):
    """What `medseg infer --rtstruct` writes (ROI names = the model's label names, contours along voxel edges)
    reads back through the built-in table to the same organs and, with the labels' mapping, the same map."""
    from medseg.io.rtstruct import write_rtstruct
    from medseg.types import Volume

    root = _copy(export, ["HN07003"], tmp_path / "export")
    _rtstruct(root).unlink()
    series = scan_export(export / "export" / "HN07003").cases[0].series
    truth = nib.load(export / "truth" / "HN07003.nii.gz")
    array = np.asarray(truth.dataobj).astype(np.uint8)
    files = [root / p.relative_to(export / "export") for p in series.files]
    write_rtstruct(Volume(array, truth.affine), files, OKBP_LABELS, root / "HN07003" / "RS.medseg.dcm")
    scan = scan_export(root)
    present = {OKBP_LABELS[v] for v in np.unique(array) if v}
    table = default_mapping(scan.roi_names())
    assert {table.labels[table.label_of(name)] for name in present} == \
        {{"RightParotid": "Parotid_R", "LeftParotid": "Parotid_L", "Mandible": "Bone_Mandible"}.get(n, n)
         for n in present}
    case = scan.cases[0]
    labels = case_labels(case, read_series(case.series), mapping_for(OKBP_LABELS))
    assert np.array_equal(labels.label.array, array)


def test_evaluate_still_reads_a_plain_folder_of_label_files(tmp_path, phantom):
    """Only DICOM exports and datasets are imported; a folder of label maps stays the truth it always was."""
    from typer.testing import CliRunner

    from medseg.cli import app
    from medseg.io import write_volume

    _, label = phantom
    for folder in ("pred", "truth"):
        write_volume(label, tmp_path / folder / "case.nii.gz")
    assert not is_dicom_export(tmp_path / "truth")
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "truth")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "pred" / "evaluation" / "summary.json").read_text())
    assert all(f["dice"]["mean"] == pytest.approx(1.0) for f in summary["summary"].values())


def test_training_imports_the_export_once_and_honours_partial_annotations(log_lines, export, tmp_path, tiny_config):
    """medseg.train on a DICOM export: imported into RUN/dicom_import (an nnU-Net raw folder with the
    contoured labels) and trained from there."""
    from medseg.data import load_dataset
    from medseg.train import train

    root = _copy(export, ["HN07000", "HN07001", "HN07002"], tmp_path / "export")
    config = tiny_config("train.epochs=1", "train.iterations_per_epoch=2", "train.folds=3", "train.final_mirror=false",
                         "train.precision=fp32")
    lines: list[str] = log_lines
    train(root, tmp_path / "run", config, labels=MAPPING)
    imported = load_dataset(tmp_path / "run" / "dicom_import")
    assert imported.labels == {0: "background", **OKBP_LABELS} and len(imported.cases) == 3
    assert sorted(len(c.annotated) for c in imported.cases) == [4, 4, 6]  # HN07002: left parotid an empty ROI
    assert any(line.startswith("DICOM export: 3 labelled series") for line in lines)
    assert json.loads((tmp_path / "run" / "labels.json").read_text())
