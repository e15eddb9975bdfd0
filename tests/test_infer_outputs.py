"""The writers of `medseg infer`'s outputs (medseg/infer/outputs.py) on small phantom DICOM series, with a
stand-in predictor (the label map is the phantom's own): which outputs a case gets, their files, and the
reason a case gets none (an enhanced multi-frame series) in the case JSON, the skip rule and the node."""

from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from conftest import collect_log
from pydicom.uid import generate_uid

from medseg.data.phantom import make_phantom
from medseg.dicomnet.node import NodeSettings, segment_folder
from medseg.errors import MedsegError
from medseg.infer.batch import redo_reason
from medseg.infer.case import segment_case
from medseg.infer.inputs import discover
from medseg.infer.options import InferOptions
from medseg.infer.outputs import WRITERS, expected_outputs
from medseg.io import read_volume, write_volume
from medseg.io.dicom_write import write_dicom_series
from medseg.io.seg import read_dicom_seg_labels
from medseg.model.inference import Prediction

LABELS = {0: "background", 1: "organ", 2: "lesion"}
MULTI_FRAME = "enhanced multi-frame sources are not supported yet"


class PhantomPredictor:
    """Predicts the phantom's label map (from its intensities) on the input's grid, with the Predictor's API."""

    model_id, labels, model_dir, temperature = "phantom-model", LABELS, "phantom", 1.0
    plan, fingerprint = SimpleNamespace(channels={0: "MR"}), None

    def settings(self, mirror=None, overlap=None, focus=None) -> dict:
        return {"mirror": False, "overlap": 0.5, "focus": True}

    def predict(self, volume, probabilities=False, mirror=None, overlap=None, focus=None) -> Prediction:
        array = np.asarray(volume.array)
        label = np.where(array > np.percentile(array, 90), 2, array > np.percentile(array, 60)).astype(np.uint8)
        probabilities = np.stack([label == v for v in LABELS]).astype(np.float16) if probabilities else None
        return Prediction(label=volume.with_array(label), trace=None, timings={}, probabilities=probabilities)


@pytest.fixture()
def series_folder(tmp_path):
    image, _ = make_phantom(shape=(32, 28, 8), spacing=(1.5, 1.5, 4.0), seed=4)
    write_dicom_series(image, tmp_path / "in", series_number=3)
    return tmp_path / "in"


@pytest.fixture()
def multi_frame_folder(series_folder, tmp_path):
    """The series as one legacy-converted enhanced MR image."""
    import highdicom as hd

    sources = [pydicom.dcmread(p) for p in sorted(series_folder.iterdir())]
    multi = hd.legacy.LegacyConvertedEnhancedMRImage(sources, series_instance_uid=generate_uid(), series_number=4,
                                                     sop_instance_uid=generate_uid(), instance_number=1)
    (tmp_path / "mf").mkdir()
    multi.save_as(tmp_path / "mf" / "volume.dcm")
    return tmp_path / "mf"


def _case(folder):
    (case,), _ = discover(folder)
    return case


def test_writers_have_unique_names_and_titles():
    assert len({w.name for w in WRITERS}) == len({w.title for w in WRITERS}) == len(WRITERS)


def test_dicom_case_gets_label_map_seg_and_probabilities(series_folder, tmp_path):
    case, out = _case(series_folder), tmp_path / "out"
    out.mkdir()
    options = InferOptions(probabilities=True)
    record = segment_case(PhantomPredictor(), case, out, options)
    assert record["outputs"] == {"label": f"{case.id}.nii.gz", "probabilities": f"{case.id}_probabilities.nii.gz",
                                 "dicom_seg": f"{case.id}.seg.dcm"}
    assert record["warnings"] == [] and expected_outputs(case, options) == list(record["outputs"])
    label = read_volume(out / record["outputs"]["label"], label=True)
    assert read_volume(out / record["outputs"]["probabilities"]).array.shape == (3, *label.spatial_shape)
    back = read_dicom_seg_labels(out / record["outputs"]["dicom_seg"], case.series.files)
    assert np.array_equal(back, label.array)
    assert redo_reason(record, "phantom-model", PhantomPredictor().settings(), options, case, out) == ""


def test_image_file_case_gets_only_its_label_map(tmp_path):
    image, _ = make_phantom(shape=(24, 24, 6), seed=2)
    write_volume(image, tmp_path / "case.nii.gz")
    case, out = _case(tmp_path), tmp_path / "out"
    out.mkdir()
    record = segment_case(PhantomPredictor(), case, out, InferOptions(rtstruct=True))
    assert record["outputs"] == {"label": "case.nii.gz"} and record["warnings"] == []


def test_multi_frame_series_says_why_it_has_no_dicom_output(multi_frame_folder, tmp_path):
    case, out = _case(multi_frame_folder), tmp_path / "out"
    out.mkdir()
    options = InferOptions()
    record = segment_case(PhantomPredictor(), case, out, options)
    assert record["outputs"] == {"label": f"{case.id}.nii.gz"}
    assert record["warnings"] == [f"no DICOM SEG written: {MULTI_FRAME}"]
    # The case holds: a re-run skips it instead of redoing it for a SEG it can never have.
    assert redo_reason(record, "phantom-model", PhantomPredictor().settings(), options, case, out) == ""


def test_node_says_why_a_multi_frame_series_has_nothing_to_send(multi_frame_folder, series_folder, tmp_path):
    settings = NodeSettings(out=tmp_path / "node")
    settings.out.mkdir()
    with pytest.raises(MedsegError, match=f"segmented in .* but no DICOM SEG written: {MULTI_FRAME}"):
        segment_folder(PhantomPredictor(), multi_frame_folder, settings)
    with collect_log("medseg.dicomnet") as lines:
        assert segment_folder(PhantomPredictor(), series_folder, settings) == 1
    assert "segmented in" in lines[-1] and "DICOM SEG in" in lines[-1]


def test_rtstruct_writer_for_dicom_series_that_can_have_one(series_folder, multi_frame_folder, tmp_path):
    from medseg.io.rtstruct import read_rtstruct_labels

    case, out = _case(series_folder), tmp_path / "out"
    out.mkdir()
    options = InferOptions(rtstruct=True, series_number=20, series_description="nightly")
    record = segment_case(PhantomPredictor(), case, out, options)
    assert list(record["outputs"]) == ["label", "dicom_seg", "rtstruct"] == expected_outputs(case, options)
    assert record["outputs"]["rtstruct"] == f"{case.id}.rt.dcm"
    rt = pydicom.dcmread(out / record["outputs"]["rtstruct"])
    assert (rt.Modality, rt.SeriesNumber, rt.SeriesDescription) == ("RTSTRUCT", 21, "nightly RTSTRUCT")
    assert [roi.ROIName for roi in rt.StructureSetROISequence] == ["organ", "lesion"]
    label = read_volume(out / record["outputs"]["label"], label=True).array
    back = read_rtstruct_labels(out / record["outputs"]["rtstruct"], case.series.files)
    assert 2 * ((back == 1) & (label == 1)).sum() / ((back == 1).sum() + (label == 1).sum()) > 0.8
    multi = segment_case(PhantomPredictor(), _case(multi_frame_folder), out, options)
    assert multi["warnings"] == [f"no DICOM SEG written: {MULTI_FRAME}", f"no RTSTRUCT written: {MULTI_FRAME}"]
