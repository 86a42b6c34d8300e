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

_STATE: dict[str, object] = {"debug": False, "argv": []}


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


# --------------------------------------------------------------------------- evaluate
@app.command("evaluate")
def evaluate_cmd(
    model: list[str] = typer.Option(..., "--model", help="Checkpoint or name (repeatable)."),
    data: list[Path] = typer.Option(..., "--data", help="Dataset folder (repeatable)."),
    tasks: str = typer.Option("T1w:T2w,T1w:FLAIR", "--tasks", help="SOURCE:TARGET list."),
    out: Path = typer.Option(Path("report"), "--out", "-o", help="Report folder."),
    artifacts: bool = typer.Option(False, "--artifacts", help="Also corrupted sources."),
    artifact_kinds: str | None = typer.Option(
        None, "--artifact-kinds", help="Subset, e.g. motion,rician_noise (implies --artifacts)."
    ),
    artifact_cases: int | None = typer.Option(
        None, "--artifact-cases", help="Use only the first N cases for artifacts."
    ),
    holdout_site: str | None = typer.Option(
        None, "--holdout-site", help="Evaluate only this site (zero-shot)."
    ),
    max_cases: int | None = typer.Option(None, "--max-cases", help="At most N cases."),
    efficiency: bool = typer.Option(
        True, "--efficiency/--no-efficiency", help="Measure FLOPs and peak memory."
    ),
    volume_shape: str = typer.Option(
        "240x240x155", "--volume-shape", help="Volume for the latency / memory probe."
    ),
    include_training_cases: bool = typer.Option(
        False, "--include-training-cases", help="Do not exclude the models' training cases."
    ),
    device: str = typer.Option("auto", "--device", "-d", help="auto, cpu, cuda, mps."),
    seed: int = typer.Option(0, "--seed", help="Artifact seed."),
) -> None:
    """Evaluate models: PSNR/SSIM/MAE/NMSE, robustness, tissue volumes, efficiency report."""
    import shlex

    from rich.progress import Progress

    from rtfsyn.evaluation.report import summary_table, write_report
    from rtfsyn.evaluation.runner import evaluate, parse_tasks

    kinds: bool | list[str] = artifacts
    if artifact_kinds:
        kinds = [k.strip() for k in artifact_kinds.split(",") if k.strip()]
    try:
        shape = tuple(int(v) for v in volume_shape.lower().split("x"))
        assert len(shape) == 3 and min(shape) >= 8
    except (ValueError, AssertionError):
        raise RtfsynError(f"--volume-shape {volume_shape!r} must look like 240x240x155") from None
    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("evaluating", total=None)

        def report(i: int, n: int, what: str) -> None:
            bar.update(task, completed=i, total=n, description=what[:60])

        result = evaluate(model, data, parse_tasks(tasks), artifacts=kinds,
                          artifact_cases=artifact_cases, holdout_site=holdout_site,
                          max_cases=max_cases, device=device, seed=seed,
                          include_training_cases=include_training_cases,
                          log=err_console.print, progress=report)
    if efficiency:
        from rtfsyn.evaluation.efficiency import measure_volume, window_flops
        from rtfsyn.inference import load_model

        for name, info in result.models.items():
            lm = load_model(info["path"], "cpu")
            eff = {"window": lm.window, "gflops": window_flops(lm.model, lm.window) / 1e9}
            try:
                eff.update(measure_volume(info["path"], shape, device=device))
            except Exception as exc:  # report, do not lose the evaluation
                err_console.print(f"[yellow]memory probe failed for {name}: {exc}[/]")
            result.efficiency[name] = eff
    import platform

    machine = f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)"
    paths = write_report(result, out, command="rtfsyn " + shlex.join(_STATE["argv"]),
                         machine=machine)
    from rich.table import Table

    header, body = summary_table(result)
    table = Table(*header, title="clean inputs")
    for row in body:
        table.add_row(*row)
    console.print(table)
    console.print(f"report: {paths['md']} and {paths['html']}")


# --------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning user errors into one-line messages."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("RTFSYN_DEBUG", "") not in ("", "0")
    _STATE["argv"] = args
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
