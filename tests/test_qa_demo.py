"""The README's main command end to end, then evaluate, qa and the notebook on its results."""

from pathlib import Path

import pytest
from conftest import collect_log
from typer.testing import CliRunner

from medseg.cli import app
from medseg.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    with collect_log() as lines:
        result = run_demo(tmp_path_factory.mktemp("demo") / "medseg-demo")
    return result, lines


@pytest.mark.slow
def test_demo_trains_infers_evaluates_and_reports(demo):
    result, lines = demo
    assert result["dice"]["organ"] > 0.85, lines
    assert lines[-1].startswith("demo finished") and "qa_report.html" in lines[-1]
    results = result["results"]
    assert len(list(results.glob("*.seg.dcm"))) == 1 and (results / "summary.csv").exists()
    html = result["report"].read_text()
    assert "Phantom" not in html and "Anonymous" not in html
    # one picture per case (three against ground truth) and the training curve; no probabilities were saved
    assert html.count("data:image/png;base64,") == 5 and "alt='training progress" in html
    assert html.count("alt='prediction against ground truth") == 3 and html.count("No probabilities saved") == 4


@pytest.mark.slow
def test_evaluate_and_qa_commands(demo, tmp_path):
    result, _ = demo
    truth = result["results"].parent / "test" / "labels"
    out = runner.invoke(app, ["evaluate", str(result["results"]), str(truth), "--out", str(tmp_path / "ev")])
    assert out.exit_code == 0, out.output  # the DICOM case has no ground truth: not paired, not an error
    assert (tmp_path / "ev" / "metrics.csv").exists() and "| organ |" in (tmp_path / "ev" / "summary.md").read_text()
    out = runner.invoke(app, ["qa", str(result["results"]), "--gt", str(truth), "--out", str(tmp_path / "r.html")])
    assert out.exit_code == 0, out.output
    assert "4 cases" in out.output


def _run_notebook(results, truth, monkeypatch) -> list:
    """Execute docs/qa_review.ipynb top to bottom on ``results`` (``truth``: MEDSEG_GT, or None); its outputs."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "docs" / "qa_review.ipynb", as_version=4)
    monkeypatch.setenv("MEDSEG_RESULTS", str(results))  # the kernel inherits the environment
    if truth is None:
        monkeypatch.delenv("MEDSEG_GT", raising=False)
    else:
        monkeypatch.setenv("MEDSEG_GT", str(truth))
    resources = {"metadata": {"path": str(ROOT / "docs")}}
    NotebookClient(nb, timeout=300, kernel_name="python3", resources=resources).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    return outputs


def _text(outputs) -> str:
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)


@pytest.mark.slow
def test_notebook_executes(demo, monkeypatch):
    result, _ = demo
    outputs = _run_notebook(result["results"], result["results"].parent / "test" / "labels", monkeypatch)
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert any("text/markdown" in o.get("data", {}) for o in outputs)  # the metrics table
    assert "mean Dice" in _text(outputs)


@pytest.mark.slow
def test_notebook_executes_without_ground_truth(demo, monkeypatch, tmp_path):
    import shutil

    result, _ = demo
    results = shutil.copytree(result["results"], tmp_path / "results")  # no test labels beside this copy
    outputs = _run_notebook(results, None, monkeypatch)
    text = _text(outputs)
    assert "ground truth: none" in text and "no ground truth (set MEDSEG_GT" in text and "mean Dice" not in text
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert not any("text/markdown" in o.get("data", {}) for o in outputs)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(demo, tmp_path):
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    result, _ = demo
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1000,1600",
                    result["report"].resolve().as_uri()], capture_output=True, timeout=120)
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.size == (1000, 1600)
    assert len(image.getcolors(256)) > 50  # overlays drawn, not a blank page
