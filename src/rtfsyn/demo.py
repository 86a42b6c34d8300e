"""``rtfsyn demo``: from install to pictures with no data of your own.

1. simulate a small phantom cohort with a seed the bundled model never saw (held-out
   subjects by construction);
2. synthesize T2w, FLAIR and PDw from the T1w of one subject with the bundled model;
3. compare with the simulated truth (PSNR / SSIM / MAE in the brain mask);
4. write the NIfTIs, a PNG panel and an HTML report, and say where they are.

Results on the phantom are results on simulated data and are labelled as such.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from rtfsyn import __version__, io
from rtfsyn.errors import RtfsynError

__all__ = ["DemoResult", "run_demo"]

DEMO_SEED = 20261125  # differs from the seeds the bundled model was trained on
TARGETS = ("T2w", "FLAIR", "PDw")


@dataclass
class DemoResult:
    out_dir: Path
    report: Path
    panel: Path
    outputs: dict[str, Path]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0


def run_demo(
    out_dir: str | Path = "rtfsyn-demo",
    *,
    quick: bool = False,
    model: str | Path | None = None,
    device: str = "auto",
    force: bool = False,
    console: Console | None = None,
) -> DemoResult:
    """Run the demo; ``quick`` uses a coarser, smaller cohort (for tests / CI)."""
    console = console or Console(stderr=True)
    t0 = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise RtfsynError(f"{out} is not empty: pass --force to reuse it or choose --out DIR")
    # every file below goes through one output check; the folder is empty or --force was given
    guard = io.OutputGuard(overwrite=True)
    if model is not None and Path(model).is_file():
        guard.protect(Path(model), f"the model file {model}")
    out.mkdir(parents=True, exist_ok=True)
    with guard:
        return _run(out, guard, quick=quick, model=model, device=device, console=console,
                    t0=t0)


def _run(out: Path, guard: io.OutputGuard, *, quick: bool, model: str | Path | None,
         device: str, console: Console, t0: float) -> DemoResult:
    from rich.progress import Progress

    from rtfsyn.data import load_cases
    from rtfsyn.device import resolve_device
    from rtfsyn.inference import load_model, provenance_path, synthesize_image, write_provenance
    from rtfsyn.metrics import all_metrics
    from rtfsyn.phantom import get_sites, make_cohort, sample_subject, simulate_noise_free
    from rtfsyn.preprocess import robust_normalize

    spacing = 4.0 if quick else 2.0
    n_subjects, n_sites = (1, 1) if quick else (2, 2)
    lm = load_model(model, resolve_device(device))
    console.print(f"model [bold]{lm.name}[/] ({lm.info.config.get('model', {}).get('arch')}, "
                  f"step {lm.info.step}) on {lm.device}", highlight=False)
    phantom_dir = out / "phantom"
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("simulating phantom cohort", total=None)
        make_cohort(phantom_dir, n_subjects=n_subjects, n_sites=n_sites, spacing=spacing,
                    seed=DEMO_SEED, progress=False, force=True)
        bar.update(task, total=1, completed=1)
    case = load_cases(phantom_dir)[0]
    for path in case.images.values():
        guard.protect_input(path)
    mask_img = io.load_nifti(case.mask) if case.mask else None
    mask = np.asarray(mask_img.dataobj) > 0.5 if mask_img is not None else None
    outputs: dict[str, Path] = {}
    metrics: dict[str, dict[str, float]] = {}
    tiles: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    # the best any model could do on this subject: its targets without their noise
    params = sample_subject(DEMO_SEED, 0, get_sites(n_sites)[0], n_subjects=n_subjects)
    noise_free = simulate_noise_free(params, spacing).images
    src_img = io.load_nifti(case.images["T1w"])
    src_norm, _ = robust_normalize(np.asarray(src_img.dataobj), mask)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("synthesizing", total=len(TARGETS))
        for target in TARGETS:
            bar.update(task, description=f"synthesizing {target} from T1w")
            res = synthesize_image(case.images["T1w"], target, case.metadata[target],
                                   source_metadata=case.metadata["T1w"], model=lm,
                                   mask=case.mask)
            path = io.save_nifti(res.image, out / "synthesized" /
                                 f"{case.subject}_synth-{target}.nii.gz",
                                 protect=case.images.values())
            write_provenance(provenance_path(path), res.provenance)
            outputs[target] = path
            pred, _ = robust_normalize(np.asarray(res.image.dataobj), mask)
            real, _ = robust_normalize(np.asarray(io.load_nifti(case.images[target]).dataobj),
                                       mask)
            metrics[target] = {k: float(v) for k, v in all_metrics(pred, real, mask).items()}
            ideal, _ = robust_normalize(noise_free[target], mask)
            best = all_metrics(ideal, real, mask)
            metrics[target]["ceiling_psnr"] = float(best["psnr"])
            metrics[target]["ceiling_ssim"] = float(best["ssim"])
            metrics[target]["seconds"] = float(res.provenance["seconds"])
            tiles.append((target, src_norm, pred, real))
            bar.advance(task)
    panel = _panel(tiles, out / "demo_panel.png", metrics)
    report = _report(out, case, lm, outputs, metrics, panel, spacing)
    summary = json.dumps({"subject": case.subject, "site": case.site, "spacing_mm": spacing,
                          "model": str(lm.info.path), "metrics": metrics}, indent=1)
    io.atomic_write(out / "demo_metrics.json", lambda tmp: Path(tmp).write_text(summary))
    return DemoResult(out, report, panel, outputs, metrics, time.perf_counter() - t0)


def _panel(tiles: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], path: Path,
           metrics: dict[str, dict[str, float]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(tiles), 4, figsize=(10, 2.8 * len(tiles)), squeeze=False)
    for row, (target, src, pred, real) in enumerate(tiles):
        z = src.shape[2] // 2
        images = [src[:, :, z], pred[:, :, z], real[:, :, z], np.abs(pred - real)[:, :, z]]
        titles = ["source T1w", f"synthesized {target}", f"simulated {target}", "|error|"]
        for col, (img, title) in enumerate(zip(images, titles, strict=True)):
            ax = axes[row, col]
            ax.imshow(np.rot90(img), cmap="magma" if col == 3 else "gray", vmin=0,
                      vmax=0.5 if col == 3 else 1)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        m = metrics[target]
        axes[row, 1].set_xlabel(f"PSNR {m['psnr']:.1f} dB  SSIM {m['ssim']:.3f}", fontsize=8)
        axes[row, 1].axis("on")
        axes[row, 1].set_xticks([])
        axes[row, 1].set_yticks([])
    fig.suptitle("rtfsyn demo (simulated phantom subject, held out)", fontsize=10)
    fig.tight_layout()
    io.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"), suffix=".png")
    plt.close(fig)
    return path


def _report(out: Path, case: Any, lm: Any, outputs: dict[str, Path],
            metrics: dict[str, dict[str, float]], panel: Path, spacing: float) -> Path:
    rows = "".join(
        f"<tr><td>T1w → {t}</td><td>{m['psnr']:.2f}</td><td>{m['ssim']:.4f}</td>"
        f"<td>{m['mae']:.4f}</td><td>{m['ceiling_psnr']:.2f} / {m['ceiling_ssim']:.3f}</td>"
        f"<td>{m['seconds']:.1f}</td>"
        f"<td>{html.escape(str(outputs[t].relative_to(out)))}</td></tr>"
        for t, m in metrics.items()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>rtfsyn demo</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px}}
img{{max-width:100%}}</style></head><body>
<h1>rtfsyn demo</h1>
<p>rtfsyn {__version__}; model <code>{html.escape(lm.name)}</code> (step {lm.info.step}).
Subject <code>{html.escape(case.subject)}</code> (site {html.escape(str(case.site))}) of a
phantom cohort simulated at {spacing:g} mm with a seed the model was not trained on.
<b>Simulated data</b>: these numbers say the software works end to end, not how it performs
on real scans.</p>
<table><tr><th>task</th><th>PSNR (dB)</th><th>SSIM</th><th>MAE</th>
<th>ceiling PSNR / SSIM</th><th>seconds</th><th>output</th></tr>{rows}</table>
<p>Metrics inside the brain mask after 0.5–99.5 percentile normalisation of both volumes.
<i>Ceiling</i>: the same metrics for the simulated target without its Rician noise, which
no model can predict; no synthesis can score above it on this subject.</p>
<img src="{panel.name}" alt="demo panel">
</body></html>"""
    return io.atomic_write(out / "demo_report.html", lambda tmp: Path(tmp).write_text(page),
                           suffix=".html")
