"""``rtfsyn synthesize``: single-file and batch (folder) synthesis with progress and provenance.

Batch mode loads the model once, reports each failing input on one line and goes on; the
command exits with 1 if any input failed (naming them), 0 otherwise.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rtfsyn import io
from rtfsyn.errors import RtfsynError

__all__ = ["output_path_for", "run_synthesize"]


def output_path_for(src: Path, target: str, out_dir: Path) -> Path:
    """``out_dir/<stem>_synth-<target>.nii.gz`` for a source file."""
    from rtfsyn.data.cases import strip_nii

    return out_dir / f"{strip_nii(src.name)}_synth-{target}.nii.gz"


def provenance_path(out: Path) -> Path:
    """``OUT.json`` beside ``OUT.nii.gz``."""
    from rtfsyn.data.cases import strip_nii

    return out.with_name(strip_nii(out.name) + ".json")


def run_synthesize(
    *,
    input: Path,
    target: str | None,
    output: Path | None,
    meta_file: Path | None,
    meta: str | None,
    source_meta: str | None,
    source_contrast: str | None,
    model: str | None,
    mask: Path | None,
    spacing: float | None,
    device: str,
    overlap: float,
    overwrite: bool,
    skip_existing: bool,
    console: Console,
    err_console: Console,
) -> int:
    """Run the command; returns the exit code."""
    from rtfsyn.device import resolve_device
    from rtfsyn.inference import as_metadata, load_model, synthesize_image, write_provenance
    from rtfsyn.metadata import Metadata

    if not input.exists():
        raise RtfsynError(f"input {input} does not exist")
    if meta_file is not None and meta is not None:
        raise RtfsynError("give target metadata with either --meta-file or --meta, not both")
    if not 0.0 <= overlap <= 0.9:
        raise RtfsynError(f"--overlap {overlap} is out of range: use a value in [0, 0.9]")
    if spacing is not None and not 0.1 <= spacing <= 10:
        raise RtfsynError(f"--spacing {spacing} is out of range: use 0.1 to 10 mm")
    if target is None and meta_file is None and meta is None:
        raise RtfsynError("say what to synthesize: --target T2w (and optionally --meta)")
    # parse every metadata argument now, so a typo fails before any file or model is read
    target_meta = as_metadata(meta_file if meta_file is not None else meta, target, "target")
    assert target_meta is not None
    tname = target_meta.contrast.value
    src_meta_arg: Metadata | Path | None = None
    if source_meta and source_meta.lower().endswith(".json"):
        src_meta_arg = Path(source_meta)
        if not src_meta_arg.is_file():
            raise RtfsynError(f"--source-meta {source_meta} does not exist")
    elif source_meta:
        src_meta_arg = Metadata.from_string(source_meta)

    if input.is_dir():
        inputs = sorted(p for p in input.iterdir() if io.is_nifti_path(p) and p.is_file())
        if not inputs:
            raise RtfsynError(f"folder {input} holds no .nii/.nii.gz files")
        out_dir = output or input.parent / f"{input.name}_synth-{tname}"
        if out_dir.exists() and not out_dir.is_dir():
            raise RtfsynError(f"batch mode needs an output folder, but {out_dir} is a file")
        jobs = [(p, output_path_for(p, tname, out_dir)) for p in inputs]
    else:
        out = output or output_path_for(input, tname, input.parent)
        if out.is_dir():
            out = output_path_for(input, tname, out)
        jobs = [(input, out)]
        io.load_nifti(input)  # fail fast, before the model is loaded
        if out.exists() and not overwrite and not skip_existing:
            raise RtfsynError(f"output {out} exists: pass --overwrite or choose another -o")
        if out.resolve() == input.resolve():
            raise RtfsynError(f"refusing to overwrite input file {input}: choose another -o")
    protected = [src for src, _ in jobs] + ([mask] if mask else [])

    dev = resolve_device(device)
    lm = load_model(model, dev)
    err_console.print(
        f"model [bold]{lm.name}[/] (step {lm.info.step}, rtfsyn {lm.info.version}) on {dev}",
        highlight=False,
    )
    failures: list[tuple[Path, str]] = []
    done = skipped = 0
    columns = [TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, console=err_console, transient=True) as bar:
        overall = bar.add_task("cases", total=len(jobs), visible=len(jobs) > 1)
        for src, out in jobs:
            if out.exists() and not overwrite:
                if skip_existing:
                    skipped += 1
                    bar.advance(overall)
                    continue
                msg = f"output {out} exists: pass --overwrite or --skip-existing"
                if len(jobs) == 1:
                    raise RtfsynError(msg)
                failures.append((src, msg))
                bar.advance(overall)
                continue
            win = bar.add_task(f"{src.name} → {tname}", total=None)

            def report(i: int, n: int, win: int = win) -> None:
                bar.update(win, completed=i, total=n)

            try:
                result = synthesize_image(
                    src, tname if target else None, target_meta, source_metadata=src_meta_arg,
                    source_contrast=source_contrast, model=lm, mask=mask, spacing=spacing,
                    overlap=overlap, progress=report,
                )
                io.save_nifti(result.image, out, protect=protected)
                write_provenance(provenance_path(out), {**result.provenance, "output": str(out)})
                done += 1
                console.print(f"wrote {out} ({result.provenance['seconds']:.1f} s)",
                              highlight=False)
            except RtfsynError as exc:
                if len(jobs) == 1:
                    raise
                failures.append((src, str(exc)))
                err_console.print(f"[red]failed[/] {src}: {exc}", highlight=False)
            finally:
                bar.remove_task(win)
                bar.advance(overall)
    if len(jobs) > 1:
        console.print(f"{done} written, {skipped} skipped, {len(failures)} failed")
    if failures:
        names = ", ".join(p.name for p, _ in failures)
        err_console.print(f"[bold red]error:[/] {len(failures)} input(s) failed: {names}",
                          highlight=False, soft_wrap=True)
        return 1
    return 0
