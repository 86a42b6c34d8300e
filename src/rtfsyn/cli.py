"""Command-line interface: ``rtfsyn COMMAND ...`` (typer + rich).

Errors a user can cause are :class:`rtfsyn.errors.RtfsynError`; they are printed on one line
and the process exits with code 2. ``--debug`` (before the command) shows the traceback.
Heavy imports (torch, nibabel, …) happen inside the commands so that ``--help`` is fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from rtfsyn import __version__
from rtfsyn.errors import RtfsynError

try:  # typer >= 0.24 vendors click
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException as _ClickException

def _plain_flags() -> None:
    """Show boolean flags (``--overwrite``) in ``--help`` without a ``<bool>`` value.

    typer >= 0.24 prints the type of every option, also of flags, which take no value;
    ``--overwrite true`` then looks valid but fails.
    """
    from typer import core

    option = getattr(core, "TyperOption", None)
    original = getattr(option, "display_type_rich", None)
    if original is None or getattr(original, "_rtfsyn_plain_flags", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if getattr(self, "is_flag", False) else original(self, ctx)

    display_type_rich._rtfsyn_plain_flags = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich  # type: ignore[union-attr]


_plain_flags()

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
_INTERRUPTED = 130  # exit status after Ctrl-C (128 + SIGINT), as shells report it


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


# --------------------------------------------------------------------------- demo
@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("rtfsyn-demo"), "--out", "-o", help="Output folder."),
    quick: bool = typer.Option(False, "--quick", help="Smaller, coarser run (for tests)."),
    model: str | None = typer.Option(None, "--model", help="Model (default: bundled)."),
    device: str = typer.Option("auto", "--device", "-d", help="auto, cpu, cuda, mps."),
    force: bool = typer.Option(False, "--force", help="Reuse a non-empty --out folder."),
) -> None:
    """Simulate a held-out phantom subject, synthesize T2w/FLAIR/PDw from T1w, report."""
    from rtfsyn.demo import run_demo

    res = run_demo(out, quick=quick, model=model, device=device, force=force,
                   console=err_console)
    for target, m in res.metrics.items():
        console.print(f"T1w → {target:5s} PSNR {m['psnr']:6.2f} dB  SSIM {m['ssim']:.4f}  "
                      f"MAE {m['mae']:.4f}   (ceiling {m['ceiling_psnr']:.2f} dB / "
                      f"{m['ceiling_ssim']:.3f})")
    console.print(f"report:      {res.report}")
    console.print(f"panel:       {res.panel}")
    console.print(f"synthesized: {res.out_dir / 'synthesized'}")
    console.print(f"done in {res.seconds:.0f} s")


# --------------------------------------------------------------------------- inspect
@app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="Dataset folder (BIDS, BraTS or IXI layout)."),
    layout: str = typer.Option(
        "auto", "--layout", help="auto, bids, brats or ixi."
    ),
    wide: bool = typer.Option(
        False, "--wide", help="Full table (layout, scanner, TR/TE) also on narrow terminals."
    ),
    fields: bool = typer.Option(
        False, "--fields", help="List which acquisition fields are known, assumed or missing."
    ),
) -> None:
    """List subjects × contrasts with key metadata; flag unpaired or mis-registered contrasts."""
    from rtfsyn.data.inspect import inspect_dataset

    inspect_dataset(path, layout=layout, console=console, wide=True if wide else None,
                    fields=fields)


# --------------------------------------------------------------------------- train
@app.command("train")
def train_cmd(
    data: list[Path] = typer.Option(..., "--data", help="Dataset folder (repeatable)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder, e.g. runs/NAME."),
    config: str = typer.Option(
        "train-cpu", "--config", "-c", help="Training YAML, or bundled train-cpu / train-gpu."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    init_from: str | None = typer.Option(
        None, "--init-from", help="Fine-tune: start from this checkpoint or model name."
    ),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Override max_steps."),
    max_minutes: float | None = typer.Option(
        None, "--max-minutes",
        help="Stop after M min; the final weights (EMA if enabled) are still written."),
    holdout_site: str | None = typer.Option(
        None, "--holdout-site", help="Leave this site out (zero-shot test)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Override the config seed."),
    device: str = typer.Option("auto", "--device", "-d", help="auto, cpu, cuda, mps."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Train a synthesis model on one or more datasets (BIDS, BraTS, IXI, phantom)."""
    from rtfsyn.inference import resolve_model_path
    from rtfsyn.training import load_train_config
    from rtfsyn.training.trainer import train

    cfg = load_train_config(config, max_steps=max_steps, max_minutes=max_minutes, seed=seed)
    init = resolve_model_path(init_from) if init_from else None
    result = train(data, cfg, out, resume=resume, holdout_site=holdout_site, device=device,
                   progress=progress, init_from=init, console=err_console)
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
    mask: Path | None = typer.Option(
        None, "--mask", help="Brain mask (default: the non-zero voxels of a skull-stripped "
        "input)."
    ),
    spacing: float | None = typer.Option(
        None, "--spacing", help="Output voxel size in mm, input orientation kept (default: "
        "the input grid)."
    ),
    device: str = typer.Option("auto", "--device", "-d", help="auto, cpu, cuda, mps."),
    overlap: float = typer.Option(0.25, "--overlap", help="Sliding-window overlap [0, 0.9]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    skip_existing: bool = typer.Option(
        False, "--skip-existing", help="Skip inputs whose output exists (says so)."
    ),
    intensity_like: Path | None = typer.Option(
        None, "--intensity-like", help="Scale the [0, 1] output to the intensity range of "
        "this scan (a real scan of the target contrast)."
    ),
    protocol: str | None = typer.Option(
        None, "--protocol", help="Typical protocol filling target fields not given, e.g. "
        "3T-T2w-TSE, 1.5T-FLAIR (default: the target's at the given field, else 3 T; "
        "'none': leave them to the model)."
    ),
    force_metadata: bool = typer.Option(
        False, "--force-metadata", help="Accept TR/TE/TI/FA implausible for the contrast."
    ),
    precision: str = typer.Option(
        "fp32", "--precision", help="fp32, or bf16: bfloat16 autocast on a CPU (faster on "
        "CPUs with bf16 instructions, output within ~0.01 dB; CUDA always uses bf16)."
    ),
) -> None:
    """Synthesize a target contrast from a source NIfTI (or every NIfTI in a folder)."""
    from rtfsyn.synthesis_cli import run_synthesize

    code = run_synthesize(
        input=input, target=target, output=output, meta_file=meta_file, meta=meta,
        source_meta=source_meta, source_contrast=source_contrast, model=model, mask=mask,
        spacing=spacing, device=device, overlap=overlap, overwrite=overwrite,
        skip_existing=skip_existing, console=console, err_console=err_console,
        intensity_like=intensity_like,
        protocol=protocol, force_metadata=force_metadata, precision=precision,
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
        None, "--holdout-site", help="Evaluate only this site (zero-shot); refused for a "
        "model whose checkpoint does not show it was trained without the site."
    ),
    max_cases: int | None = typer.Option(None, "--max-cases", help="At most N cases."),
    efficiency: bool = typer.Option(
        True, "--efficiency/--no-efficiency", help="Measure FLOPs and peak memory."
    ),
    volume_shape: str = typer.Option(
        "240x240x155", "--volume-shape", help="Volume for the latency / memory probe."
    ),
    include_training_cases: bool = typer.Option(
        False, "--include-training-cases", help="Do not exclude the models' training cases "
        "(rows labelled 'training')."
    ),
    include_validation_cases: bool = typer.Option(
        False, "--include-validation-cases", help="Also score the models' validation cases "
        "(rows labelled 'validation'; default: test cases only)."
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
                          include_validation_cases=include_validation_cases,
                          log=err_console.print, progress=report)
    if efficiency:
        from rtfsyn.evaluation.efficiency import measure_models

        measure_models(result, shape, device=device,
                       warn=lambda m: err_console.print(f"[yellow]{m}[/]"))
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


# --------------------------------------------------------------------------- models
@app.command("models")
def models_cmd() -> None:
    """List available models (bundled, and imported into $RTFSYN_HOME) with their summary."""
    from rich.table import Table

    from rtfsyn.inference import rtfsyn_home
    from rtfsyn.model_store import list_models

    entries = list_models()
    table = Table("name", "source", "arch", "step", "trained with", "summary",
                  title=f"models (RTFSYN_HOME={rtfsyn_home()})")
    for e in entries:
        table.add_row(e.name, e.source, e.arch, str(e.step), e.version, e.summary)
    console.print(table)
    if not entries:
        console.print("no models found: train one with `rtfsyn train` and add it with "
                      "`rtfsyn import-weights`")


@app.command("import-weights")
def import_weights_cmd(
    path: Path = typer.Argument(..., help="Checkpoint (.safetensors) to import."),
    name: str | None = typer.Option(None, "--name", help="Model name (default: file stem)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model of that name."),
) -> None:
    """Validate a checkpoint and copy it into $RTFSYN_HOME/models so --model NAME finds it."""
    from rtfsyn.model_store import import_weights

    dest = import_weights(path, name=name, overwrite=overwrite)
    console.print(f"imported {path} as {dest.stem} ({dest})")


# --------------------------------------------------------------------------- model-info
@app.command("model-info")
def model_info_cmd(
    config: str = typer.Option(
        "cpu-small", "--config", "-c", help="Model config: bundled name or YAML/JSON path."
    ),
    window: int = typer.Option(64, "--window", "-w", min=8, help="Cubic input window size."),
) -> None:
    """Parameters and FLOPs of rtfsyn and the baselines (crossattn, unet3d), same config."""
    from rich.table import Table

    from rtfsyn.models import ARCHS, build_model, load_config, profile_model

    cfg = load_config(config)
    table = Table(title=f"{config}: {window}³ window, batch 1",
                  caption="FLOPs counted by torch.utils.flop_counter (multiply-add = 2)")
    for col in ("arch", "params", "GFLOP", "MFLOP / output voxel", "attention map (MiB)"):
        table.add_column(col, justify="left" if col == "arch" else "right")
    for arch in ARCHS:
        info = profile_model(build_model(cfg.with_arch(arch)), window)
        table.add_row(
            arch, f"{info['params'] / 1e6:.3f}M", f"{info['flops'] / 1e9:.2f}",
            f"{info['flops_per_voxel'] / 1e6:.3f}",
            f"{info['attention_bytes'] / 2**20:.2f}" if info["attention_elements"] else "-",
        )
    console.print(table)


# --------------------------------------------------------------------------- phantom
@app.command("phantom")
def phantom_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create (BIDS)."),
    subjects: int = typer.Option(12, "--subjects", "-n", help="Number of subjects (≥ 1)."),
    sites: int = typer.Option(4, "--sites", help="Number of sites, 1–4 (SiteA…SiteD)."),
    spacing: float = typer.Option(1.0, "--spacing", help="Grid spacing in mm, [0.5, 8]."),
    seed: int = typer.Option(0, "--seed", help="Random seed (≥ 0)."),
    lesions: bool = typer.Option(False, "--lesions", help="Add 1–3 WM lesions per subject."),
    preview: bool = typer.Option(False, "--preview", help="Also write DIR/preview.png."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    protocol_jitter: float = typer.Option(
        0.0, "--protocol-jitter",
        help="Each subject's TR/TE/TI/FA drawn within ± this fraction of its site's (0–0.5).",
    ),
) -> None:
    """Simulate a multi-site phantom cohort (T1w, T2w, FLAIR, PDw) as a BIDS dataset."""
    from rtfsyn.phantom import make_cohort

    paths = make_cohort(out, n_subjects=subjects, n_sites=sites, spacing=spacing, seed=seed,
                        lesions=lesions, progress=progress, force=force, preview=preview,
                        protocol_jitter=protocol_jitter)
    console.print(f"phantom cohort (simulated): {len(paths)} subject"
                  f"{'' if len(paths) == 1 else 's'} in {out}"
                  + (f"; preview {out / 'preview.png'}" if preview else ""))


# --------------------------------------------------------------------------- simulate
@app.command("simulate")
def simulate_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create (BIDS)."),
    sources: list[Path] = typer.Option(
        [], "--from", help="Dataset folder of co-registered real cases (repeatable)."),
    subjects: int = typer.Option(
        8, "--subjects", "--pairs", "-n",
        help="Simulated subjects (each: T1w, T2w, FLAIR, PDw [+T1Gd], own protocols)."),
    phantom: int = typer.Option(0, "--phantom", help="Also use N deformed phantom anatomies."),
    spacing: float | None = typer.Option(None, "--spacing", help="Grid spacing in mm "
                                         "(default: the cases' own)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (≥ 0)."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty folder."),
) -> None:
    """Real-anatomy simulation with continuous protocols, written as BIDS for `rtfsyn train`."""
    from rtfsyn.phantom.realsim import simulate_dataset

    if not sources and phantom < 1:
        raise RtfsynError("nothing to simulate from: give --from DIR and/or --phantom N")
    if seed < 0:
        raise RtfsynError(f"--seed {seed} is invalid: give a non-negative integer")
    paths = simulate_dataset(out, sources, n_subjects=subjects, seed=seed, phantom=phantom,
                             spacing=spacing, force=force,
                             say=lambda s: err_console.print(s, highlight=False))
    console.print(f"simulated (not patient data): {len(paths)} subject"
                  f"{'' if len(paths) == 1 else 's'} in {out}")


# --------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning user errors into one-line messages."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("RTFSYN_DEBUG", "") not in ("", "0")
    _STATE["argv"] = args
    try:
        # standalone_mode=False: we print the messages (typer/click say "Aborted!" on Ctrl-C
        # with exit 1, or return 130 without a word)
        code = app(args=args, prog_name="rtfsyn", standalone_mode=False)
        if code == _INTERRUPTED:  # typer turns KeyboardInterrupt into Exit(130)
            raise KeyboardInterrupt
    except RtfsynError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        # temporary files are removed by atomic_write on the way out; nothing half-written
        err_console.print("[yellow]interrupted[/] (Ctrl-C): no partial output was left",
                          highlight=False)
        sys.exit(_INTERRUPTED)
    except _ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
