"""Command-line interface: ``rtfsyn COMMAND ...`` (typer + rich).

Errors a user can cause are :class:`rtfsyn.errors.RtfsynError`; they are printed on one line
and the process exits with code 2. ``--debug`` (before the command) shows the traceback.
Heavy imports (torch, nibabel, …) happen inside the commands so that ``--help`` is fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from rtfsyn import __version__
from rtfsyn.errors import RtfsynError

app = typer.Typer(
    name="rtfsyn",
    help="Metadata-guided cross-modality 3D MRI synthesis (RTFSyn).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()
err_console = Console(stderr=True)

_STATE = {"debug": False}


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"rtfsyn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version_callback, is_eager=True,
        help="Print the version and exit.",
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Metadata-guided cross-modality 3D MRI synthesis (RTFSyn)."""
    _STATE["debug"] = debug or os.environ.get("RTFSYN_DEBUG", "") not in ("", "0")


# --------------------------------------------------------------------------- inspect
@app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="Dataset folder (BIDS, BraTS or IXI layout)."),
    layout: str = typer.Option(
        "auto", "--layout", help="auto, bids, brats or ixi."
    ),
) -> None:
    """List subjects × contrasts with key metadata; flag unpaired or mis-registered contrasts."""
    from rtfsyn.data.inspect import inspect_dataset

    inspect_dataset(path, layout=layout, console=console)


# --------------------------------------------------------------------------- train
@app.command("train")
def train_cmd(
    data: list[Path] = typer.Option(..., "--data", help="Dataset folder (repeatable)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder, e.g. runs/NAME."),
    config: str = typer.Option(
        "train-cpu", "--config", "-c", help="Training YAML, or bundled train-cpu / train-gpu."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Override max_steps."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", help="Stop after M min."),
    holdout_site: str | None = typer.Option(
        None, "--holdout-site", help="Leave this site out (zero-shot test)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Override the config seed."),
    device: str = typer.Option("auto", "--device", "-d", help="auto, cpu, cuda, mps."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Train a synthesis model on one or more datasets (BIDS, BraTS, IXI, phantom)."""
    from rtfsyn.training import load_train_config
    from rtfsyn.training.trainer import train

    cfg = load_train_config(config, max_steps=max_steps, max_minutes=max_minutes, seed=seed)
    result = train(data, cfg, out, resume=resume, holdout_site=holdout_site, device=device,
                   progress=progress, console=err_console)
    console.print(f"checkpoint: {result.final_checkpoint or result.last_checkpoint}")


# --------------------------------------------------------------------------- synthesize
@app.command("synthesize")
def synthesize_cmd(
    input: Path = typer.Option(..., "--input", "-i", help="Source NIfTI, or a folder of them."),
    target: str | None = typer.Option(
        None, "--target", "-t", help="Target contrast: T1w, T1Gd, T2w, FLAIR, PDw."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Output .nii.gz (a folder in batch mode)."
    ),
    meta_file: Path | None = typer.Option(
        None, "--meta-file", "-m", help="Target metadata as a BIDS JSON sidecar."
    ),
    meta: str | None = typer.Option(
        None, "--meta", help="Target metadata, e.g. \"TR=3000,TE=90\" (ms)."
    ),
    source_meta: str | None = typer.Option(
        None, "--source-meta", help="Source sidecar JSON or key=value string (default: the "
        "sidecar beside the input)."
    ),
    source_contrast: str | None = typer.Option(
        None, "--source-contrast", "-s", help="Source contrast if no sidecar says it."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Checkpoint or model name (default: bundled model)."
    ),
    mask: Path | None = typer.Option(None, "--mask", help="Brain mask (default: non-zero)."),
    spacing: float | None = typer.Option(
        None, "--spacing", help="Output voxel size in mm (default: the input grid)."
    ),
    device: str = typer.Option("auto", "--device", "-d", help="auto, cpu, cuda, mps."),
    overlap: float = typer.Option(0.25, "--overlap", help="Sliding-window overlap [0, 0.9]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    skip_existing: bool = typer.Option(
        False, "--skip-existing", help="Batch mode: skip inputs whose output exists."
    ),
) -> None:
    """Synthesize a target contrast from a source NIfTI (or every NIfTI in a folder)."""
    from rtfsyn.synthesis_cli import run_synthesize

    code = run_synthesize(
        input=input, target=target, output=output, meta_file=meta_file, meta=meta,
        source_meta=source_meta, source_contrast=source_contrast, model=model, mask=mask,
        spacing=spacing, device=device, overlap=overlap, overwrite=overwrite,
        skip_existing=skip_existing, console=console, err_console=err_console,
    )
    if code:
        raise typer.Exit(code)


# --------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning user errors into one-line messages."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("RTFSYN_DEBUG", "") not in ("", "0")
    try:
        app(args=args, prog_name="rtfsyn", standalone_mode=True)
    except RtfsynError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
