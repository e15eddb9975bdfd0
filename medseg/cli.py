"""The ``medseg`` command. It only parses arguments and calls library functions; heavy imports
happen inside each command so ``medseg --help`` stays instant."""

from __future__ import annotations

from pathlib import Path

import typer

from medseg._cli_util import one_line_errors
from medseg.logs import log_to_console

MAX_OVERLAP = 0.95  # = medseg.config.MAX_OVERLAP (checked by tests/test_house_names.py; config is not imported here)
DATASET_HELP = ("MSD or nnU-Net v2 folder, a medseg manifest or datalist, or a folder of DICOM exports (images with "
                "RTSTRUCT or DICOM SEG labels).")

app = typer.Typer(
    help="Segment 3D medical scans (CT, MR): read DICOM/NIfTI with exact geometry, check and plan datasets, train, "
    "segment folders, DICOM studies or a DICOM node, export shareable models, evaluate and review results.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


EXIT_CODES = """Exit codes: 0 success; 1 some cases failed or were refused (or an input error); 2 usage error;
3 nothing to segment; 4 model invalid (missing, incomplete, changed since training)."""


def _version(value: bool) -> None:
    if value:
        from medseg import __version__

        typer.echo(f"medseg {__version__}")
        raise typer.Exit()


@app.callback(epilog=EXIT_CODES)
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print debugging details."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only warnings, flags, refusals and errors "
                                     "(scripts read summary.json)."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    log_to_console(verbose, quiet)


@app.command()
@one_line_errors
def info(path: Path = typer.Argument(..., help="An image file (.nii, .nii.gz, .nrrd, .mha) or a DICOM folder.")):
    """Describe a scan, or every DICOM series found in a folder (never patient names or IDs)."""
    if path.is_dir():
        from medseg.io.describe import describe_scan
        from medseg.io.dicom import scan_dicom

        scan = scan_dicom(path)
        typer.echo(f"{path}: {len(scan.series)} series")
        for line in describe_scan(scan):
            typer.echo(f"  {line}")
        return
    from medseg.io.describe import describe_volume
    from medseg.io.volume_io import read_volume

    volume = read_volume(path)
    typer.echo(f"{path}:")
    for line in describe_volume(volume):
        typer.echo(f"  {line}")


@app.command()
@one_line_errors
def convert(
    dicom_dir: Path = typer.Argument(..., help="Folder with DICOM files (searched recursively, any order)."),
    out_dir: Path = typer.Argument(..., help="Where to write one NIfTI per series."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace outputs that already exist."),
    labels: Path | None = typer.Option(None, "--labels", help="Write an nnU-Net v2 raw dataset of the series "
                                       "that RTSTRUCT/SEG objects label, ROI names mapped by this YAML file "
                                       "('tg263': the built-in table); see docs/dicom_rt.md."),
):
    """Convert every DICOM series in a folder to NIfTI, each with a JSON sidecar. Names come from the series
    number, a hash of its SeriesInstanceUID and the sanitised description. With --labels, write the labelled
    series as an nnU-Net v2 raw dataset instead. Exit code 1 when any series (or label object) was refused or
    failed, or when the folder holds no DICOM series."""
    from medseg.io.convert import convert_dicom_folder

    if labels is not None:
        _convert_dataset(dicom_dir, out_dir, labels, overwrite)
        return

    if any(r.error for r in convert_dicom_folder(dicom_dir, out_dir, overwrite=overwrite)):
        raise typer.Exit(1)


def _convert_dataset(dicom_dir: Path, out_dir: Path, labels: Path, overwrite: bool) -> None:
    from medseg.data.dicom_export import import_export, scan_export
    from medseg.data.roi_names import default_mapping, load_mapping
    from medseg.data.source import BUILTIN, roi_table

    scan = scan_export(dicom_dir)
    mapping = default_mapping(scan.roi_names()) if str(labels) == BUILTIN else load_mapping(labels)
    result = import_export(scan, mapping, out_dir, overwrite=overwrite)
    for line in roi_table(scan, mapping) + [f"left out: {x}" for x in result["left_out"]]:
        typer.echo(line)
    typer.echo(f"wrote {len(result['cases'])} cases to {out_dir} (nnU-Net v2 raw)")
    if result["left_out"]:
        raise typer.Exit(1)


@app.command()
@one_line_errors
def check(dataset: Path = typer.Argument(..., help=DATASET_HELP),
    labels: Path | None = typer.Option(None, "--labels", help="For DICOM exports (RTSTRUCT/SEG labels): a "
                                       "YAML mapping of labels to ROI names, or 'tg263' for the built-in table "
                                       "(the default); see docs/dicom_rt.md."),
):
    """Validate a dataset and list every problem; exit code 1 when there is any error. For a DICOM export, the
    table of every ROI name found (cases, cases with contours, the label it maps to) comes first."""
    import tempfile

    from medseg.data import check_dataset
    from medseg.data.source import open_dataset

    with tempfile.TemporaryDirectory(prefix="medseg-check-") as work:
        data = open_dataset(dataset, work, labels)
        for line in data.notes:
            typer.echo(line)
        report = check_dataset(data)
        for problem in report.problems:
            typer.echo(str(problem))
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)


@app.command()
@one_line_errors
def plan(
    dataset: Path = typer.Argument(..., help=DATASET_HELP),
    labels: Path | None = typer.Option(None, "--labels", help="For DICOM exports (RTSTRUCT/SEG labels): a "
                                       "YAML mapping of labels to ROI names, or 'tg263' for the built-in table "
                                       "(the default); see docs/dicom_rt.md."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML run config (see configs/)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value: section.key=value."),
    time_budget: str | None = typer.Option(None, "--time-budget", help="e.g. 30m: measure candidate plans on "
                                           "this machine and pick one that fits train.min_steps steps in it "
                                           "(default: the config's train.time_budget)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
):
    """Fingerprint a dataset and print the training plan (spacing, patch, network, normalisation) as JSON;
    with a time budget, the candidates measured and why the plan was chosen go to stderr first."""
    import tempfile

    from medseg.config import load_config, parse_duration
    from medseg.data import load_dataset
    from medseg.data.source import materialise
    from medseg.model.device import resolve_device
    from medseg.preprocess import fingerprint
    from medseg.train.budget import plan_for_budget

    with tempfile.TemporaryDirectory(prefix="medseg-plan-") as work:
        data = load_dataset(materialise(dataset, work, labels)[0])
        fingerprinted = fingerprint(data.without_test())
    cfg = load_config(config, set_ + ([f"train.time_budget={time_budget}"] if time_budget else []))
    choice = plan_for_budget(fingerprinted, data.channels, data.labels, cfg,
                             resolve_device(device), parse_duration(cfg.train.time_budget))
    for candidate in choice.candidates:
        typer.echo(f"  {candidate.line()}", err=True)
    typer.echo(f"plan: {choice.reason}", err=True)
    typer.echo(choice.plan.to_json())


@app.command()
@one_line_errors
def train(
    dataset: Path = typer.Argument(..., help=DATASET_HELP),
    labels: Path | None = typer.Option(None, "--labels", help="For DICOM exports (RTSTRUCT/SEG labels): a "
                                       "YAML mapping of labels to ROI names, or 'tg263' for the built-in table "
                                       "(the default); see docs/dicom_rt.md."),
    out: Path = typer.Option(Path("runs/model"), "--out", "-o", help="Model folder to write."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML run config (see configs/)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value: section.key=value."),
    fold: int = typer.Option(0, "--fold", help="Validation fold (of train.folds, 5 by default)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Number of epochs (overrides the config)."),
    time_budget: str | None = typer.Option(None, "--time-budget", help="Wall-clock budget, e.g. 30m."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed."),
    deterministic: bool = typer.Option(False, "--deterministic", help="Deterministic algorithms (slower)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
):
    """Train a 3D U-Net on a dataset; the dataset is checked first and refused if it has errors.
    Launched by torchrun (e.g. `torchrun --nproc_per_node=4 -m medseg.cli train ...`) it trains with
    DistributedDataParallel; see docs/distributed.md."""
    from medseg.config import load_config
    from medseg.train import train as run_training

    overrides = list(set_)
    if epochs is not None:
        overrides += [f"train.epochs={epochs}", "train.time_budget=null"]
    if time_budget is not None:
        overrides.append(f"train.time_budget={time_budget}")
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    if deterministic:
        overrides.append("train.deterministic=true")
    run_training(dataset, out, load_config(config, overrides), fold=fold, resume=resume, device=device, labels=labels)


@app.command()
@one_line_errors
def infer(
    model: Path = typer.Argument(..., help="Model folder from `medseg train` or `medseg export`, its .zip, or a "
                                 "folder of fold folders."),
    input_path: Path = typer.Argument(..., metavar="INPUT",
                                      help="Image file, folder of images, DICOM folder (any studies), or manifest."),
    out_dir: Path = typer.Argument(..., metavar="OUTPUT_DIR", help="Where to write results."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo cases whose outputs already exist."),
    probabilities: bool = typer.Option(False, "--probabilities",
                                       help="Also write probability maps (<id>_probabilities.nii.gz, float32)."),
    dicom_seg: bool = typer.Option(True, "--dicom-seg/--no-dicom-seg", help="DICOM SEG for DICOM inputs."),
    rtstruct: bool = typer.Option(False, "--rtstruct", help="Also an RTSTRUCT (one ROI per label) for DICOM inputs."),
    series_number: int = typer.Option(9000, "--series-number", help="SeriesNumber of the DICOM SEG (the RTSTRUCT "
                                      "takes the next one)."),
    series_description: str = typer.Option("medseg", "--series-description",
                                           help="SeriesDescription of the DICOM SEG and RTSTRUCT."),
    fail_on_flags: bool = typer.Option(False, "--fail-on-flags", help="Count cases with plausibility flags "
                                       "(input unlike the training data, implausible volumes) as failed."),
    mirror: bool | None = typer.Option(None, "--mirror/--no-mirror", "--tta/--no-tta",
                                       help="Mirroring test-time augmentation (2x slower per mirrored axis, up to "
                                       "8x; default: the model config's infer.mirror)."),
    overlap: float | None = typer.Option(None, "--overlap", help=f"Sliding-window overlap, 0-{MAX_OVERLAP} "
                                         "(default: the model config's infer.overlap)."),
    focus: bool | None = typer.Option(None, "--focus/--full-pass",
                                      help="Run only the sliding windows that can reach the foreground (same labels, "
                                      "fewer windows) or every window (default: the model config's infer.focus)."),
    modality: str | None = typer.Option(None, "--modality", help="DICOM: only series of this modality."),
    description: str | None = typer.Option(None, "--description",
                                           help="DICOM: only series whose description matches this regex."),
    min_slices: int = typer.Option(3, "--min-slices", help="DICOM: skip series with fewer slices."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
    precision: str = typer.Option("auto", "--precision", help="auto, bf16, fp16 or fp32."),
    shard: str | None = typer.Option(None, "--shard", help="I/N: segment only every N-th case starting at I "
                                     "(0-based); under torchrun each rank takes its shard automatically."),
    send_to: str | None = typer.Option(None, "--send-to", metavar="AE@HOST:PORT",
                                       help="After the batch, C-STORE every DICOM SEG (and RTSTRUCT) listed in "
                                       "OUTPUT_DIR to this DICOM node (e.g. a PACS)."),
):
    """Segment every case under INPUT into OUTPUT_DIR: one uint8 NIfTI label map per case on the input's
    exact grid, a DICOM SEG (and RTSTRUCT) for DICOM series, a JSON per case, summary.csv and summary.json
    (status per case: done, skipped, failed or refused; plausibility flags). A finished case is skipped
    when the same model and settings made it, else redone (--overwrite redoes all); a failing case is
    reported and the rest go on. Exit codes: 0 all done or skipped, 1 some failed or refused, 2 usage
    error, 3 nothing to segment, 4 model invalid."""
    import os

    from medseg.dicomnet.client import parse_peer, send_results
    from medseg.infer.batch import InferOptions, run_batch
    from medseg.infer.inputs import SeriesFilter

    options = InferOptions(overwrite=overwrite, probabilities=probabilities, dicom_seg=dicom_seg,
                           rtstruct=rtstruct, series_number=series_number, series_description=series_description,
                           mirror=mirror, overlap=overlap, focus=focus,
                           series=SeriesFilter(modality, description, min_slices), shard=_parse_shard(shard),
                           fail_on_flags=fail_on_flags)
    peer = parse_peer(send_to) if send_to else None  # parsed first: a mistyped peer fails before the batch
    summary = run_batch(model, input_path, out_dir, options, device=device, precision=precision)
    if peer is not None and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 sends every shard's
        send_results(out_dir, peer)
    if summary["counts"]["failed"] or summary["counts"]["refused"]:
        raise typer.Exit(1)


@app.command()
@one_line_errors
def export(
    run: Path = typer.Argument(..., metavar="RUN", help="Run folder from `medseg train` (or a folder of fold "
                               "folders)."),
    out: Path = typer.Argument(..., metavar="OUT", help="New folder to write, or a file name ending in .zip."),
):
    """Write a copy of a model that is safe to share: weights, plan, config (post-processing rules
    included), labels, versions, dataset-level statistics and SHA256SUMS. Never the preprocessed training
    images (cache/), the training checkpoint, the splits or the per-case logs."""
    from medseg.model.folder import export_model

    model_id = export_model(run, out)
    typer.echo(f"model {model_id} exported to {out}")


@app.command("tune-postprocess")
@one_line_errors
def tune_postprocess(
    run: Path = typer.Argument(..., metavar="RUN_DIR", help="Run folder from `medseg train`."),
    dataset: Path = typer.Option(..., "--dataset", help="The dataset the run was trained on (MSD or nnU-Net v2 "
                                 "folder, or a medseg manifest); the run folder does not record where it is."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
):
    """Choose post-processing on a run's validation fold, for models trained before `medseg train` did it:
    the final validation is run again, and each label keeps the connected-component rule (none, keep the
    largest 1-3, drop small components) that raised its Dice there (never lowering lesion detection).
    Writes postprocess.json (used by `medseg infer`, copied by `medseg export`), updates validation.json and
    SHA256SUMS. The config's postprocess.rules still win for their labels."""
    from medseg.train.run import tune_postprocess as tune

    tune(run, dataset, device=device)


@app.command()
@one_line_errors
def evaluate(
    pred: Path = typer.Argument(..., help="Folder of predicted label maps (<id>.nii.gz, e.g. from medseg infer)."),
    gt: Path = typer.Argument(..., help="Folder of ground-truth label maps, a dataset/manifest, or a DICOM "
                              "export whose RTSTRUCT/SEG objects are the truth (paired by series)."),
    labels: Path | None = typer.Option(None, "--labels", help="For DICOM exports (RTSTRUCT/SEG labels): a "
                                       "YAML mapping of labels to ROI names, or 'tg263' for the built-in table "
                                       "(the default); see docs/dicom_rt.md."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write metrics (default: PRED/evaluation)."),
    tolerance: float = typer.Option(1.0, "--tolerance", help="Surface Dice tolerance in mm."),
    min_lesion: float = typer.Option(0.0, "--min-lesion-mm3", min=0.0, help="Truth components under this "
                                     "volume are not lesions to find (e.g. 14.1 for LIDC, which outlines "
                                     "nodules of 3 mm and more); Dice still counts their voxels."),
):
    """Dice, IoU, HD95, ASSD, surface Dice, volume difference and lesion-wise detection per case and label;
    per-lesion Dice, pooled sensitivity and false positives per case, small lesions (< 100 mm^3) apart:
    metrics.csv, lesions.csv, summary.json and summary.md. Labels a case did not contour are not scored.
    Grid mismatches are errors (exit code 1), never scores."""
    import tempfile

    from medseg.data.source import materialise
    from medseg.metrics.evaluate import evaluate_folder, markdown_table
    from medseg.metrics.lesions import lesion_markdown

    with tempfile.TemporaryDirectory(prefix="medseg-truth-") as work:
        truth, _ = materialise(gt, work, labels)
        result = evaluate_folder(pred, truth, out or pred / "evaluation", tolerance_mm=tolerance,
                                 min_lesion_mm3=min_lesion)
    typer.echo(markdown_table(result["summary"]) + "\n" + lesion_markdown(result["lesions"], min_lesion))
    if result["errors"]:
        raise typer.Exit(1)


@app.command()
@one_line_errors
def compare(
    a: Path = typer.Argument(..., help="Evaluation A: a `medseg evaluate` output folder (or the folder above it)."),
    b: Path = typer.Argument(..., help="Evaluation B of the same cases (e.g. another run on the same test split)."),
    metric: str = typer.Option("dice", "--metric", help="A metrics.csv column: dice, nsd, hd95, ..."),
    level: float = typer.Option(0.95, "--level", help="Confidence level of the bootstrap interval."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write the comparison as JSON here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
):
    """Paired per-case comparison of two evaluations: per label B - A, its bootstrap confidence interval over
    cases, and how many cases went each way; case/label pairs scored by one side only are listed, never
    dropped silently. Exit code 1 if an evaluation is missing or the two share no case."""
    import json

    from medseg.io.atomic import write_text_atomic
    from medseg.metrics.compare import compare_folders, comparison_markdown

    result = compare_folders(a, b, metric, level)
    typer.echo(comparison_markdown(result))
    if out is not None:
        write_text_atomic(out, json.dumps(result, indent=1), overwrite=overwrite)


@app.command()
@one_line_errors
def qa(
    results: Path = typer.Argument(..., help="Output folder of medseg infer."),
    gt: Path | None = typer.Option(None, "--gt", help="Ground truth (folder of label maps or a dataset)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="HTML file (default: RESULTS/qa_report.html)."),
):
    """Write a self-contained HTML review report: overlays, volumes, metrics and flags, worst cases first."""
    from medseg.qa.report import build_report

    build_report(results, gt=gt, out=out)


@app.command()
@one_line_errors
def demo(
    out_dir: Path = typer.Argument(Path("medseg-demo"), help="Folder for the example's files."),
):
    """Run medseg's main job on a built-in synthetic example (no network, no real data needed)."""
    from medseg.demo import run_demo

    run_demo(out_dir)


@app.command()
@one_line_errors
def serve(
    model: Path = typer.Argument(..., help="Model folder from `medseg train` or `medseg export`, or its .zip."),
    ae_title: str = typer.Option("MEDSEG", "--ae-title", help="This node's AE title (calls to others are refused)."),
    host: str | None = typer.Option(None, "--host", help="Address to listen on (default: every interface with "
                                    "an allow list, else 127.0.0.1: this machine only)."),
    port: int = typer.Option(11112, "--port", help="TCP port to listen on."),
    allow: list[str] | None = typer.Option(None, "--allow", metavar="AE@HOST[:PORT]",
                                           help="A peer that may associate (repeatable); others are refused."),
    allow_file: Path | None = typer.Option(None, "--allow-file", help="YAML list of AE@HOST[:PORT] peers."),
    send_to: str | None = typer.Option(None, "--send-to", metavar="AE@HOST:PORT",
                                       help="C-STORE each DICOM SEG to this node (e.g. the PACS that sent it)."),
    out: Path = typer.Option(Path("medseg-node"), "--out", "-o", help="Output folder (as `medseg infer` writes it)."),
    store: Path | None = typer.Option(None, "--store", help="Folder for received instances (default: OUT/incoming)."),
    quiet_seconds: float = typer.Option(10.0, "--quiet-seconds", help="A series is complete when nothing arrived "
                                        "for it for this many seconds."),
    max_store: float | None = typer.Option(None, "--max-store", metavar="GB", help="Refuse instances (status "
                                           "0xA700, before writing) once the store holds this much."),
    min_free: float = typer.Option(0.0, "--min-free", metavar="GB", help="Refuse instances that would leave less "
                                   "than this free on the store's disk."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="PEM certificate: listen (and send) over TLS only."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert."),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", help="PEM CA: callers must present a certificate it "
                                       "signed, and --send-to's is checked against it."),
    retry_seconds: float = typer.Option(30.0, "--retry-seconds", help="Wait before sending a SEG again after a "
                                        "failed send; doubles each time, up to an hour."),
    modality: str | None = typer.Option(None, "--modality", help="Only series of this modality."),
    description: str | None = typer.Option(None, "--description",
                                           help="Only series whose description matches this regex."),
    min_slices: int = typer.Option(3, "--min-slices", help="Skip series with fewer slices."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
    precision: str = typer.Option("auto", "--precision", help="auto, bf16, fp16 or fp32."),
):
    """Run a DICOM node (C-STORE and C-ECHO): store every received instance, segment each series once it has
    been quiet for --quiet-seconds (the checks and outputs of `medseg infer`), and send its DICOM SEG to
    --send-to (queued on disk: retried until accepted, then never again, across restarts). Only --allow peers
    may call (without any: this machine only). A failing series is logged and the node goes on; SIGTERM or
    Ctrl-C stops it (exit code 0)."""
    from medseg.dicomnet.access import parse_allowed, read_allow_file
    from medseg.dicomnet.client import parse_peer
    from medseg.dicomnet.node import NodeSettings, run_node, stop_on_signals
    from medseg.dicomnet.tls import TlsFiles
    from medseg.errors import UsageError
    from medseg.infer.inputs import SeriesFilter

    entries = list(allow or []) + (read_allow_file(allow_file) if allow_file else [])
    if (max_store is not None and max_store <= 0) or min_free < 0:
        raise UsageError("--max-store must be more than 0 GB and --min-free at least 0 GB")
    if (tls_cert is None) != (tls_key is None) or (tls_ca is not None and tls_cert is None):
        raise UsageError("TLS needs both --tls-cert and --tls-key (--tls-ca adds checking the peers' certificates)")
    settings = NodeSettings(ae_title=ae_title, host=host, port=port, out=out, store=store,
                            send_to=parse_peer(send_to) if send_to else None, quiet_s=quiet_seconds,
                            series=SeriesFilter(modality, description, min_slices), device=device,
                            precision=precision, allowed=[parse_allowed(entry) for entry in entries],
                            retry_s=retry_seconds, max_store_gb=max_store, min_free_gb=min_free,
                            tls=TlsFiles(tls_cert, tls_key, tls_ca) if tls_cert and tls_key else None)
    run_node(model, settings, stop_on_signals())

def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    from medseg.errors import UsageError

    index, _, count = text.partition("/")
    try:
        return int(index), int(count)
    except ValueError:
        raise UsageError(f"--shard expects I/N (e.g. 0/4), got '{text}'") from None


if __name__ == "__main__":
    app()
