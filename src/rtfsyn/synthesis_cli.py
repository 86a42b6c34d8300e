"""``rtfsyn synthesize``: single-file and batch (folder) synthesis with progress and provenance.

Every output path is validated before the model is loaded (see :class:`rtfsyn.io.OutputGuard`).
Batch mode loads the model once, reports each failing input on one line and goes on; the
command exits with 1 if any input failed (naming them), 0 otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rtfsyn import io
from rtfsyn.errors import OutputPathError, RtfsynError

__all__ = ["output_path_for", "provenance_path", "run_synthesize"]


def output_path_for(src: Path, target: str, out_dir: Path) -> Path:
    """``out_dir/<stem>_synth-<target>.nii.gz`` for a source file."""
    from rtfsyn.data.cases import strip_nii

    return out_dir / f"{strip_nii(src.name)}_synth-{target}.nii.gz"


def provenance_path(out: Path) -> Path:
    """``OUT.rtfsyn.json`` beside ``OUT.nii.gz`` (never a BIDS sidecar name)."""
    from rtfsyn.inference import provenance_path as _prov

    return _prov(out)


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
    intensity_like: Path | None = None,
    protocol: str | None = None,
    force_metadata: bool = False,
    precision: str = "fp32",
) -> int:
    """Run the command; returns the exit code.

    Every output path (image and ``OUT.rtfsyn.json``) is validated before the model is
    loaded: a NIfTI name, a writable folder, not an input / mask / metadata file / sidecar of
    an input, not existing unless ``overwrite``, not claimed by two inputs of a batch.
    """
    from rtfsyn.device import resolve_device
    from rtfsyn.inference import (
        as_metadata,
        check_precision,
        complete_target_metadata,
        load_model,
        synthesize_image,
        write_provenance,
    )
    from rtfsyn.metadata import normalize_contrast

    if not input.exists():
        raise RtfsynError(f"input {input} does not exist")
    if meta_file is not None and meta is not None:
        raise RtfsynError("give target metadata with either --meta-file or --meta, not both")
    check_precision(precision, "--precision")
    if not 0.0 <= overlap <= 0.9:
        raise RtfsynError(f"--overlap {overlap} is out of range: use a value in [0, 0.9]")
    if spacing is not None and not 0.1 <= spacing <= 10:
        raise RtfsynError(f"--spacing {spacing} is out of range: use 0.1 to 10 mm")
    if target is None and meta_file is None and meta is None and protocol not in (None, "none"):
        from rtfsyn.protocols import get_protocol

        target = get_protocol(protocol).contrast  # --protocol 3T-FLAIR names the target
    if target is None and meta_file is None and meta is None:
        raise RtfsynError("say what to synthesize: --target T2w (and optionally --meta)")
    # parse every metadata argument now, so a typo fails before any file or model is read
    target_meta = as_metadata(meta_file if meta_file is not None else meta, target, "target")
    assert target_meta is not None
    tname = target_meta.contrast.value
    if source_contrast is not None:
        source_contrast = normalize_contrast(source_contrast)
    src_meta_arg: Path | str | None = None
    src_checked = None
    if source_meta and source_meta.lower().endswith(".json"):
        src_meta_arg = Path(source_meta)
        if not src_meta_arg.is_file():
            raise RtfsynError(f"--source-meta {source_meta} does not exist")
    elif source_meta:
        src_meta_arg = source_meta
        # check the string now; its contrast may come from -s or, per input, from the name
        has_contrast = "contrast" in source_meta.lower() or source_contrast is not None
        src_checked = as_metadata(
            source_meta, source_contrast or ("T1w" if not has_contrast else None), "source")
    # implausible values (TE=0.09 ms for a T2w) and an unknown --protocol fail here, too
    complete_target_metadata(target_meta, src_checked, protocol=protocol,
                             force_metadata=force_metadata)
    for name, path in (("--mask", mask), ("--intensity-like", intensity_like)):
        if path is not None and not path.is_file():
            raise RtfsynError(f"{name} {path} does not exist")

    guard = io.OutputGuard(overwrite=overwrite)
    for path in (mask, meta_file, intensity_like,
                 src_meta_arg if isinstance(src_meta_arg, Path) else None):
        if path is not None:
            guard.protect(path, f"{path}, given as an input of this command")
    if model is not None and Path(model).is_file():
        guard.protect(Path(model), f"the model file {model}")

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
    for src, _ in jobs:
        guard.protect_input(src)
    jobs, skipped = _plan_outputs(jobs, guard, skip_existing=skip_existing and not overwrite,
                                  err_console=err_console)
    if not jobs:
        console.print(f"nothing to do: {skipped} output(s) exist (--skip-existing)")
        return 0
    ref_range = None
    if intensity_like is not None:
        from rtfsyn.preprocess import intensity_range

        ref_range = intensity_range(np.asarray(io.load_nifti(intensity_like).dataobj))
    protected = [src for src, _ in jobs] + ([mask] if mask else [])

    dev = resolve_device(device)
    lm = load_model(model, dev)
    err_console.print(
        f"model [bold]{lm.name}[/] (step {lm.info.step}, rtfsyn {lm.info.version}) on {dev}",
        highlight=False,
    )
    failures: list[tuple[Path, str]] = []
    done = 0
    said: set[str] = set()
    columns = [TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
               TimeRemainingColumn()]
    with guard, Progress(*columns, console=err_console, transient=True) as bar:
        overall = bar.add_task("cases", total=len(jobs), visible=len(jobs) > 1)
        for src, out in jobs:
            win = bar.add_task(f"{src.name} → {tname}", total=None)

            def report(i: int, n: int, win: int = win) -> None:
                bar.update(win, completed=i, total=n)

            try:
                result = synthesize_image(
                    src, tname if target else None, target_meta, source_metadata=src_meta_arg,
                    source_contrast=source_contrast, model=lm, mask=mask, spacing=spacing,
                    overlap=overlap, progress=report, protocol=protocol,
                    force_metadata=force_metadata, precision=precision,
                )
                prov = result.provenance
                err_console.print(
                    f"{src.name}: source contrast {prov['source_metadata']['contrast']} (from "
                    f"{prov['source_contrast_from']})", highlight=False, soft_wrap=True)
                for warning in prov.get("warnings", []):
                    err_console.print(f"[yellow]warning:[/] {src.name}: {warning}",
                                      highlight=False, soft_wrap=True)
                said = _say_assumption(prov, err_console, said)
                image = result.image
                if ref_range is not None:
                    image, prov = _scale_like(image, prov, ref_range, intensity_like)
                io.save_nifti(image, out, protect=protected, overwrite=overwrite)
                write_provenance(provenance_path(out), {**prov, "output": str(out)})
                done += 1
                console.print(f"wrote {out} ({prov['seconds']:.1f} s)", highlight=False)
            except RtfsynError as exc:
                if len(jobs) == 1 and not skipped:
                    raise
                failures.append((src, str(exc)))
                err_console.print(f"[red]failed[/] {src}: {exc}", highlight=False)
            finally:
                bar.remove_task(win)
                bar.advance(overall)
    if len(jobs) + skipped > 1:
        console.print(f"{done} written, {skipped} skipped, {len(failures)} failed")
    if failures:
        names = ", ".join(p.name for p, _ in failures)
        err_console.print(f"[bold red]error:[/] {len(failures)} input(s) failed: {names}",
                          highlight=False, soft_wrap=True)
        return 1
    return 0


def _plan_outputs(
    jobs: list[tuple[Path, Path]], guard: io.OutputGuard, *, skip_existing: bool,
    err_console: Console,
) -> tuple[list[tuple[Path, Path]], int]:
    """Validate every output (image + provenance) before any work; drop skipped ones.

    Raises one :class:`OutputPathError` naming the first bad output (and how many more).
    """
    kept: list[tuple[Path, Path]] = []
    errors: list[str] = []
    skipped = 0
    for src, out in jobs:
        if skip_existing and out.exists():
            skipped += 1
            err_console.print(f"skipped {src.name}: {out} exists (--skip-existing)",
                              highlight=False, soft_wrap=True)
            continue
        try:
            guard.plan(out, nifti=True, what=f"the output of {src.name}")
            guard.plan(provenance_path(out), what=f"the provenance of {src.name}")
        except OutputPathError as exc:
            errors.append(str(exc))
            continue
        kept.append((src, out))
    if errors:
        more = f" (and {len(errors) - 1} more output(s))" if len(errors) > 1 else ""
        hint = " (--skip-existing skips existing outputs)" if any(
            "exists" in e for e in errors) else ""
        raise OutputPathError(f"{errors[0]}{more}{hint}; nothing was synthesized")
    return kept, skipped


def _scale_like(image: nib.Nifti1Image, prov: dict[str, Any], ref_range: tuple[float, float],
                ref: Path | None) -> tuple[nib.Nifti1Image, dict[str, Any]]:
    """Map the [0, 1] brain intensities linearly to a reference scan's 0.5–99.5 % range."""
    from rtfsyn.inference import describe_output

    lo, hi = ref_range
    data = np.asarray(image.dataobj, dtype=np.float32)
    inside = data > 0
    scaled = np.where(inside, lo + data * (hi - lo), 0.0).astype(np.float32)
    out = io.like(scaled, image)
    contrast = prov.get("target_metadata", {}).get("contrast", "")
    out.header["descrip"] = describe_output(contrast, f"scaled like {Path(str(ref)).name}")
    units = f"scanner-like: [0, 1] mapped linearly to [{lo:.6g}, {hi:.6g}], the 0.5-99.5 " \
            f"percentile range of {ref} in its brain"
    return out, {**prov, "output_units": units, "intensity_like": str(ref)}


def _say_assumption(provenance: dict, err_console: Console, said: set[str]) -> set[str]:
    """Print the 'TR/TE not given: assuming ...' line once per distinct assumption."""
    line = provenance.get("assumption")
    if line and line not in said:
        err_console.print(f"[yellow]note:[/] {line}", highlight=False, soft_wrap=True)
        said.add(line)
    return said
