"""The ``medseg`` command. It only parses arguments and calls library functions; heavy imports
happen inside each command so ``medseg --help`` stays instant."""

from __future__ import annotations

from pathlib import Path

import typer

from medseg._cli_util import one_line_errors, setup_logging

app = typer.Typer(
    help="Segment 3D medical scans (CT, MR): read DICOM/NIfTI with exact geometry, check datasets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print informational messages.")):
    setup_logging(verbose)


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
):
    """Convert every DICOM series in a folder to NIfTI. Names come from series number and a sanitised
    description. Exit code 1 when any series was refused or failed."""
    from medseg.io.convert import convert_dicom_folder

    results = convert_dicom_folder(dicom_dir, out_dir, overwrite=overwrite)
    for r in results:
        if r.error:
            typer.echo(f"error: {r.error}", err=True)
        else:
            typer.echo(f"{r.series} -> {r.output}" + (" (exists, kept)" if r.kept else ""))
    failed = sum(r.error is not None for r in results)
    typer.echo(f"converted {len(results) - failed} of {len(results)} series")
    if failed or not results:
        raise typer.Exit(1)


@app.command()
@one_line_errors
def check(dataset: Path = typer.Argument(..., help="MSD or nnU-Net v2 folder, or a medseg manifest.")):
    """Validate a dataset and list every problem; exit code 1 when there is any error."""
    from medseg.data import check_dataset, load_dataset

    report = check_dataset(load_dataset(dataset))
    for problem in report.problems:
        typer.echo(str(problem))
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)


@app.command()
@one_line_errors
def demo(
    out_dir: Path = typer.Argument(Path("medseg-demo"), help="Folder for the example's files."),
):
    """Run medseg's main job on a built-in synthetic example (no network, no real data needed)."""
    from medseg.demo import run_demo

    run_demo(out_dir, echo=typer.echo)


if __name__ == "__main__":
    app()
