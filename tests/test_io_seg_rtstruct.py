"""DICOM SEG (coded segments, colours, series options) and RTSTRUCT outputs on real series: dciodvfy, read back."""

from __future__ import annotations

import shutil
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest
from highdicom.color import CIELabColor
from pydicom.sr.codedict import codes
from scipy.ndimage import binary_dilation, binary_erosion, find_objects, gaussian_filter

from medseg.errors import MedsegError
from medseg.io import read_dicom_folder
from medseg.io.codes import concept_for, label_concepts, normalise_name, srgb_to_dicom_cielab
from medseg.io.rtstruct import read_rtstruct_labels, write_rtstruct
from medseg.io.seg import read_dicom_seg_labels, write_dicom_seg
from medseg.types import Volume

SCT = codes.SCT
HIPPOCAMPUS = ["5366008", "SCT", "Hippocampus"]  # as a model's JSON label metadata would give it


def _ct_case(root):
    """The JPEG 2000 CT and its reference label map, the NIfTI reoriented onto the DICOM volume's grid."""
    folder = root / "dicom" / "ct_jpeg2000"
    if not folder.exists():
        pytest.skip(f"dicom/ct_jpeg2000 not in {root}")
    volume = read_dicom_folder(folder / "series")
    ref = nib.load(folder / "reference_seg.nii.gz")
    orientations = nib.orientations
    ref = ref.as_reoriented(orientations.ornt_transform(orientations.io_orientation(ref.affine),
                                                        orientations.io_orientation(volume.affine)))
    assert np.abs(ref.affine - volume.affine).max() < 1e-3
    label = volume.with_array(np.asarray(ref.dataobj).astype(np.uint8))
    # TotalSegmentator's classes 1 and 5 are spleen and liver (in its v1 and v2 class maps); the others are
    # left unnamed here, so they get the default coding.
    names = {int(v): f"class_{v}" for v in np.unique(label.array) if v}
    names.update({1: "spleen", 5: "liver"})
    return volume, label, names


def _hippocampus_case(root):
    """The hippocampus MR crop with two synthetic blobs: bright smoothed voxels, split front/back."""
    folder = root / "dicom" / "hippocampus_crops" / "study1"
    if not folder.exists():
        pytest.skip(f"dicom/hippocampus_crops/study1 not in {root}")
    volume = read_dicom_folder(folder)
    smooth = gaussian_filter(volume.array, 1.5)
    blob = smooth > np.percentile(smooth, 85)
    anterior_j = volume.affine[1, 1] < 0  # +j points to the back when the RAS y cosine is negative
    j = np.arange(volume.spatial_shape[1])[None, :, None]
    front = (j < volume.spatial_shape[1] // 2) if anterior_j else (j >= volume.spatial_shape[1] // 2)
    array = np.where(blob, np.where(front, 1, 2), 0).astype(np.uint8)
    return volume, volume.with_array(array)


@pytest.fixture(scope="module")
def ct(shared_data, tmp_path_factory):
    volume, label, names = _ct_case(shared_data)
    out = tmp_path_factory.mktemp("ct")
    files = volume.meta["source_files"]
    seg = write_dicom_seg(label, files, names, out / "ct.seg.dcm", algorithm_version="test-1")
    rt = write_rtstruct(label, files, names, out / "ct.rt.dcm", algorithm_version="test-1")
    return {"volume": volume, "label": label, "names": names, "seg": seg, "rt": rt}


@pytest.fixture(scope="module")
def hippo(shared_data, tmp_path_factory):
    volume, label = _hippocampus_case(shared_data)
    out = tmp_path_factory.mktemp("hippo")
    files = volume.meta["source_files"]
    names = {1: "anterior", 2: "posterior"}
    label_codes = {1: {"category": ["91723000", "SCT", "Anatomical Structure"], "type": HIPPOCAMPUS,
                       "color": [255, 0, 0]},
                   "2": {"category": ["91723000", "SCT", "Anatomical Structure"], "type": HIPPOCAMPUS}}
    options = {"label_codes": label_codes, "series_number": 77, "series_description": "hippocampus test"}
    seg = write_dicom_seg(label, files, names, out / "h.seg.dcm", **options)
    rt = write_rtstruct(label, files, names, out / "h.rt.dcm", **options)
    return {"volume": volume, "label": label, "names": names, "seg": seg, "rt": rt}


# --- coded concepts -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "type_code", "laterality"), [
    ("Brainstem", SCT.BrainStem, None), ("brain_stem", SCT.BrainStem, None),
    ("SpinalCord", SCT.SpinalCord, None), ("spinal cord", SCT.SpinalCord, None),
    ("Parotid_L", SCT.ParotidGland, SCT.Left), ("RightParotid", SCT.ParotidGland, SCT.Right),
    ("left parotid gland", SCT.ParotidGland, SCT.Left), ("Esophagus", SCT.Esophagus, None),
    ("larynx", SCT.Larynx, None), ("Bone_Mandible", SCT.Mandible, None),
    ("hippocampus", SCT.Hippocampus, None), ("Hippocampus_anterior", SCT.Hippocampus, None),
    ("posterior hippocampus", SCT.Hippocampus, None), ("hippocampus-left", SCT.Hippocampus, SCT.Left),
    ("Liver", SCT.Liver, None), ("spleen", SCT.Spleen, None), ("kidney_left", SCT.Kidney, SCT.Left),
    ("R kidney", SCT.Kidney, SCT.Right), ("Lung_R", SCT.Lung, SCT.Right), ("lung left", SCT.Lung, SCT.Left),
    ("heart", SCT.Heart, None), ("urinary_bladder", SCT.Bladder, None), ("Prostate", SCT.Prostate, None),
    ("brain", SCT.Brain, None),
])
def test_organ_names_get_anatomical_snomed_codes(name, type_code, laterality):
    concept = concept_for(name)
    assert concept.type == type_code and concept.laterality == laterality
    assert concept.category == SCT.AnatomicalStructure and concept.category.value == "91723000"
    assert not concept.is_lesion


@pytest.mark.parametrize(("name", "type_code", "region"), [
    ("lung nodule", SCT.Nodule, SCT.Lung), ("nodule", SCT.Nodule, None), ("Lesion", SCT.Lesion, None),
    ("tumour", SCT.Neoplasm, None), ("Tumor", SCT.Neoplasm, None), ("lung_tumor", SCT.Neoplasm, SCT.Lung),
])
def test_lesion_names_are_morphologically_abnormal_structures(name, type_code, region):
    concept = concept_for(name)
    assert concept.type == type_code and concept.region == region and concept.is_lesion
    assert concept.category.value == "49755003" and concept.category.scheme_designator == "SCT"


def test_unknown_names_default_to_tissue_with_a_palette_colour():
    a, b = concept_for("class_42", 1), concept_for("anterior", 2)
    for concept in (a, b):
        assert concept.category == SCT.Tissue and concept.type == SCT.Tissue and concept.category.value == "85756007"
        assert concept.laterality is None and concept.region is None
    assert a.color != b.color
    assert normalise_name("Kidney_L") == ("kidney", SCT.Left) and normalise_name("L") == ("l", None)


def test_label_metadata_overrides_the_table_and_bad_metadata_is_refused():
    concepts = label_concepts({1: "liver", 2: "x"}, {"2": {"category": list(HIPPOCAMPUS), "type": HIPPOCAMPUS,
                                                           "modifier": ["7771000", "SCT", "Left"],
                                                           "color": [1, 2, 3]}})
    assert concepts[1].type == SCT.Liver
    assert concepts[2].type == SCT.Hippocampus and concepts[2].laterality == SCT.Left and concepts[2].color == (1, 2, 3)
    for bad in ({3: {"color": [1, 2, 3]}}, {1: {"type": HIPPOCAMPUS}}, {1: {"colour": [1, 2, 3]}},
                {1: {"color": [1, 2, 300]}}, {1: {"category": ["1", "SCT"], "type": HIPPOCAMPUS}}):
        with pytest.raises(MedsegError) as info:
            label_concepts({1: "liver"}, bad)
        assert "\n" not in str(info.value)


def test_srgb_to_dicom_cielab():
    assert srgb_to_dicom_cielab((255, 255, 255)) == CIELabColor(100.0, 0.0, 0.0).value
    assert srgb_to_dicom_cielab((0, 0, 0)) == CIELabColor(0.0, 0.0, 0.0).value
    # Pure sRGB red is L*a*b* (53.24, 80.09, 67.20) under D65.
    ours, reference = srgb_to_dicom_cielab((255, 0, 0)), CIELabColor(53.2408, 80.0925, 67.2032).value
    assert max(abs(a - b) for a, b in zip(ours, reference, strict=True)) <= 2


# --- read back ----------------------------------------------------------------------------------------

def _segment_numbers(label: np.ndarray, names: dict[int, str]) -> np.ndarray:
    lookup = np.zeros(int(label.max()) + 1, dtype=np.int64)
    for number, value in enumerate(sorted(names), start=1):
        lookup[value] = number
    return lookup[label]


@pytest.mark.parametrize("case", ["ct", "hippo"])
def test_seg_reads_back_pixel_identical(case, request):
    c = request.getfixturevalue(case)
    back = read_dicom_seg_labels(c["seg"], c["volume"].meta["source_files"])
    assert np.array_equal(back, _segment_numbers(c["label"].array, c["names"]))


@pytest.mark.parametrize("case", ["ct", "hippo"])
def test_rtstruct_contours_rasterise_back_within_one_voxel(case, request):
    c = request.getfixturevalue(case)
    back = read_rtstruct_labels(c["rt"], c["volume"].meta["source_files"])
    label = c["label"].array
    in_plane = np.ones((3, 3, 1), dtype=bool)
    for value, box in enumerate(find_objects(label), start=1):
        if value not in c["names"] or box is None:
            continue
        box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in box)  # room for the 1-voxel band
        truth, ours = label[box] == value, back[box] == value
        assert ours.sum() == (back == value).sum(), f"label {value}: voxels outside its bounding box"
        dice = 2 * (truth & ours).sum() / (truth.sum() + ours.sum())
        band = binary_dilation(truth, in_plane) & ~binary_erosion(truth, in_plane)
        assert dice >= 0.9, (value, dice)
        assert not ((truth != ours) & ~band).any(), f"label {value}: a voxel more than 1 voxel off the boundary"


def test_rtstruct_points_are_lps_on_voxel_edges_of_the_referenced_slice(ct):
    """Independent of the reader: each vertex, taken LPS -> RAS -> voxel index with the Volume's affine, lies
    in its referenced slice, on the edge between a voxel of the label and one outside it."""
    label, files = ct["label"], ct["volume"].meta["source_files"]
    uids = [pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID for f in files]
    ds = pydicom.dcmread(ct["rt"])
    to_index = np.linalg.inv(label.affine)
    checked = 0
    for roi in ds.ROIContourSequence:
        mask = label.array == int(roi.ReferencedROINumber)
        for contour in roi.get("ContourSequence", [])[:20]:
            k = uids.index(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)
            lps = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            ras = np.c_[-lps[:, 0], -lps[:, 1], lps[:, 2], np.ones(len(lps))]
            index = (to_index @ ras.T)[:3].T
            assert np.abs(index[:, 2] - k).max() < 1e-3
            halves = np.round(index[:, :2] * 2) / 2  # vertices sit at voxel centres +- 0.5 along one axis
            assert np.abs(index[:, :2] - halves).max() < 1e-3
            for i, j in halves:
                a, b = {int(np.floor(i)), int(np.ceil(i))}, {int(np.floor(j)), int(np.ceil(j))}
                cells = [(x, y) for x in a for y in b]
                assert len(cells) == 2 and mask[cells[0][0], cells[0][1], k] != mask[cells[1][0], cells[1][1], k]
            checked += 1
    assert checked > 50


# --- DICOM conformance ----------------------------------------------------------------------------------

def _dciodvfy(path) -> tuple[list[str], list[str]]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    result = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


def test_dciodvfy_passes_on_the_ct_outputs(ct):
    source = pydicom.dcmread(ct["volume"].meta["source_files"][0], stop_before_pixels=True)
    # Warnings the source images cause: their PatientID and StudyID are empty (anonymised), and a code
    # of theirs with a local coding scheme, SECTRA, is copied into the SEG's procedure code sequence.
    assert source.PatientID == "" and source.StudyID == ""
    assert source.ProcedureCodeSequence[0].CodingSchemeDesignator == "SECTRA"
    allowed = ("</PatientID(0010,0020)> - Missing attribute or value that would be needed to build DICOMDIR",
               "</StudyID(0020,0010)> - Missing attribute or value that would be needed to build DICOMDIR",
               "</ProcedureCodeSequence(0008,1032)[1]/CodingSchemeDesignator(0008,0102)[1]> - Unrecognized "
               "defined term = <SECTRA>")
    for path in (ct["seg"], ct["rt"]):
        errors, warnings = _dciodvfy(path)
        assert not errors, errors
        assert all(any(a in w for a in allowed) for w in warnings), warnings


def test_dciodvfy_passes_on_the_mr_outputs_without_warnings(hippo, tmp_path):
    files = hippo["volume"].meta["source_files"]
    names = {1: "Kidney_L", 2: "lung nodule", 3: "mystery"}
    paths = [hippo["seg"], hippo["rt"], write_dicom_seg(hippo["label"], files, names, tmp_path / "s.dcm"),
             write_rtstruct(hippo["label"], files, names, tmp_path / "r.dcm")]
    for path in paths:
        assert _dciodvfy(path) == ([], [])


# --- content: codes, colours, series --------------------------------------------------------------------

def test_hippocampus_outputs_carry_codes_colours_and_series_options(hippo):
    seg = pydicom.dcmread(hippo["seg"], stop_before_pixels=True)
    assert (seg.SeriesNumber, seg.SeriesDescription) == (77, "hippocampus test")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["anterior", "posterior"]
    for segment in seg.SegmentSequence:
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "5366008"
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert tuple(seg.SegmentSequence[0].RecommendedDisplayCIELabValue) == srgb_to_dicom_cielab((255, 0, 0))
    assert tuple(seg.SegmentSequence[1].RecommendedDisplayCIELabValue) == srgb_to_dicom_cielab(
        concept_for("posterior", 2).color)
    rt = pydicom.dcmread(hippo["rt"])
    assert (rt.SeriesNumber, rt.SeriesDescription, rt.Modality) == (77, "hippocampus test", "RTSTRUCT")
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["anterior", "posterior"]
    assert list(rt.ROIContourSequence[0].ROIDisplayColor) == [255, 0, 0]
    assert [o.RTROIInterpretedType for o in rt.RTROIObservationsSequence] == ["ORGAN", "ORGAN"]


def test_laterality_region_lesion_and_default_codes_with_default_series(hippo, tmp_path):
    files = hippo["volume"].meta["source_files"]
    names = {1: "Kidney_L", 2: "lung nodule", 3: "mystery"}  # label 3 is absent from the map
    seg = pydicom.dcmread(write_dicom_seg(hippo["label"], files, names, tmp_path / "s.dcm"), stop_before_pixels=True)
    assert (seg.SeriesNumber, seg.SeriesDescription) == (9000, "medseg")
    kidney, nodule, mystery = seg.SegmentSequence
    modifier = kidney.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
    assert (modifier.CodeValue, modifier.CodeMeaning) == ("7771000", "Left")
    assert nodule.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert nodule.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"
    assert nodule.AnatomicRegionSequence[0].CodeValue == "39607008"
    assert mystery.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"
    rt = pydicom.dcmread(write_rtstruct(hippo["label"], files, names, tmp_path / "r.dcm"))
    assert (rt.SeriesNumber, rt.SeriesDescription) == (9001, "medseg RTSTRUCT")
    assert [o.RTROIInterpretedType for o in rt.RTROIObservationsSequence] == ["ORGAN", "GTV", "ORGAN"]
    assert "ContourSequence" not in rt.ROIContourSequence[2]
    assert list(rt.ROIContourSequence[0].ROIDisplayColor) == list(concept_for("Kidney_L").color)


def test_ct_segments_coded_from_names(ct):
    seg = pydicom.dcmread(ct["seg"], stop_before_pixels=True)
    by_label = {s.SegmentLabel: s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence}
    assert by_label["spleen"] == "78961009" and by_label["liver"] == "10200004" and by_label["class_20"] == "85756007"
    rt = pydicom.dcmread(ct["rt"], stop_before_pixels=True)
    assert {r.ROINumber for r in rt.StructureSetROISequence} == set(ct["names"])


def test_outputs_on_another_grid_are_refused(hippo, tmp_path):
    files = hippo["volume"].meta["source_files"]
    label = hippo["label"]
    for axis, voxels in ((2, 2.0), (0, 1.0)):  # two slices along the normal; one column sideways
        shift = np.eye(4)
        shift[axis, 3] = voxels
        with pytest.raises(MedsegError, match="off the label grid"):
            write_rtstruct(Volume(label.array, label.affine @ shift, label.meta), files, hippo["names"],
                           tmp_path / "r.dcm")
    for writer in (write_rtstruct, write_dicom_seg):
        with pytest.raises(MedsegError, match="slices"):
            writer(label, files[:-1], hippo["names"], tmp_path / "x.dcm")
        with pytest.raises(MedsegError, match="integers"):
            writer(label.with_array(label.array.astype(np.float32)), files, hippo["names"], tmp_path / "x.dcm")
    assert not list(tmp_path.iterdir())
