"""Evaluation report: CSV, JSON, Markdown and HTML with matplotlib figures."""

from __future__ import annotations

import csv
import html
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtfsyn.evaluation.runner import EvalResult, EvalRow, rows_to_json
from rtfsyn.evaluation.stats import mean_std, paired_comparison
from rtfsyn.io import OutputGuard, active_guard, atomic_write

__all__ = ["write_report"]

Table = tuple[list[str], list[list[str]]]


def _fmt(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "–"
    if math.isinf(mean):
        return "inf"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _group(rows: Sequence[EvalRow], cond: str = "clean") -> dict[tuple[str, str], list[EvalRow]]:
    out: dict[tuple[str, str], list[EvalRow]] = defaultdict(list)
    for r in rows:
        if r.condition == cond:
            out[(r.model, r.task)].append(r)
    return out


def _group_split(rows: Sequence[EvalRow],
                 cond: str = "clean") -> dict[tuple[str, str, str], list[EvalRow]]:
    """Rows by (model, task, split): test and explicitly included validation / training
    cases are never averaged together."""
    out: dict[tuple[str, str, str], list[EvalRow]] = defaultdict(list)
    for r in rows:
        if r.condition == cond:
            out[(r.model, r.task, r.split)].append(r)
    return out


_SPLIT_ORDER = {"test": 0, "validation": 1, "training": 2}


def summary_table(result: EvalResult) -> Table:
    """Mean ± std per model × task × split on clean inputs."""
    header = ["model", "task", "split", "n", "PSNR (dB)", "SSIM", "MAE", "NMSE",
              "tissue vol. err", "s / volume"]
    body = []
    for (model, task, split), rs in sorted(
            _group_split(result.rows).items(),
            key=lambda kv: (kv[0][1], _SPLIT_ORDER.get(kv[0][2], 9), kv[0][0])):
        tissue = [r.tissue_error for r in rs if r.tissue_error is not None]
        body.append([
            model, task, split, str(len(rs)),
            _fmt(*mean_std([r.psnr for r in rs]), 2),
            _fmt(*mean_std([r.ssim for r in rs]), 4),
            _fmt(*mean_std([r.mae for r in rs]), 4),
            _fmt(*mean_std([r.nmse for r in rs]), 4),
            _fmt(*mean_std(tissue), 3) if tissue else "–",
            _fmt(*mean_std([r.seconds for r in rs]), 1),
        ])
    return header, body


def paired_table(result: EvalResult) -> Table:
    """First model vs each other model, per task: mean difference and Wilcoxon p."""
    header = ["task", "split", "A", "B", "n", "ΔPSNR (A−B)", "p", "ΔSSIM (A−B)", "p"]
    body = []
    models = list(result.models)
    groups = _group_split(result.rows)
    splits = sorted({r.split for r in result.rows}, key=lambda x: _SPLIT_ORDER.get(x, 9))
    for task in sorted({r.task for r in result.rows}):
        for split in splits:
            for other in models[1:]:
                a = {r.case: r for r in groups.get((models[0], task, split), [])}
                b = {r.case: r for r in groups.get((other, task, split), [])}
                common = sorted(set(a) & set(b))
                if not common:
                    continue
                cp = paired_comparison([a[c].psnr for c in common], [b[c].psnr for c in common])
                cs = paired_comparison([a[c].ssim for c in common], [b[c].ssim for c in common])
                body.append([task, split, models[0], other, str(cp["n"]),
                             f"{cp['mean_diff']:+.2f}", _p(cp["p_wilcoxon"]),
                             f"{cs['mean_diff']:+.4f}", _p(cs["p_wilcoxon"])])
    return header, body


def _p(p: float | None) -> str:
    return "n<5" if p is None else f"{p:.3g}"


def robustness_drops(result: EvalResult) -> list[dict[str, Any]]:
    """Per model × task × split × artifact × severity: the per-case drop from clean
    (corrupted − clean on the same case), its mean ± std over cases, and n."""
    clean = {(r.model, r.task, r.case): r for r in result.rows if r.condition == "clean"}
    grouped: dict[tuple[str, str, str, str, int], list[EvalRow]] = defaultdict(list)
    for r in result.rows:
        if r.condition != "clean":
            kind, sev = r.condition.split(":")
            grouped[(r.model, r.task, r.split, kind, int(sev))].append(r)
    out = []
    for (model, task, split, kind, sev), rs in sorted(grouped.items()):
        pairs = [(r, clean[(r.model, r.task, r.case)]) for r in rs
                 if (r.model, r.task, r.case) in clean]
        dp = [r.psnr - c.psnr for r, c in pairs if math.isfinite(r.psnr - c.psnr)]
        ds = [r.ssim - c.ssim for r, c in pairs]
        out.append({
            "model": model, "task": task, "split": split, "artifact": kind, "severity": sev,
            "n": len(pairs), "psnr": float(np.mean([r.psnr for r in rs])),
            "ssim": float(np.mean([r.ssim for r in rs])),
            "psnr_drop_mean": mean_std(dp)[0], "psnr_drop_std": mean_std(dp)[1],
            "ssim_drop_mean": mean_std(ds)[0], "ssim_drop_std": mean_std(ds)[1],
        })
    return out


def robustness_table(result: EvalResult) -> Table:
    """Mean PSNR / SSIM per model × task × split × artifact × severity, and the per-case
    drop from clean as mean ± std over cases."""
    header = ["model", "task", "split", "artifact", "severity", "n", "PSNR", "ΔPSNR",
              "SSIM", "ΔSSIM"]
    body = [[e["model"], e["task"], e["split"], e["artifact"], str(e["severity"]), str(e["n"]),
             f"{e['psnr']:.2f}", _fmt_signed(e["psnr_drop_mean"], e["psnr_drop_std"], 2),
             f"{e['ssim']:.4f}", _fmt_signed(e["ssim_drop_mean"], e["ssim_drop_std"], 4)]
            for e in robustness_drops(result)]
    return header, body


def _fmt_signed(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:+.{digits}f} ± {std:.{digits}f}"


def efficiency_table(result: EvalResult) -> Table:
    header = ["model", "arch", "params", "GFLOP / window", "window", "s / volume (mean)",
              "peak memory (MB)"]
    body = []
    secs = _group(result.rows)
    for name, info in result.models.items():
        eff = result.efficiency.get(name, {})
        times = [r.seconds for (m, _), rs in secs.items() if m == name for r in rs]
        body.append([
            name, str(info.get("arch")), f"{info.get('params', 0) / 1e6:.2f}M",
            f"{eff['gflops']:.2f}" if "gflops" in eff else "–",
            str(eff.get("window", "–")),
            f"{np.mean(times):.2f}" if times else "–",
            f"{eff['peak_mb']:.0f}" if "peak_mb" in eff else "–",
        ])
    return header, body


def _md_table(table: Table) -> str:
    header, body = table
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _html_table(table: Table) -> str:
    header, body = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _figures(result: EvalResult, fig_dir: Path) -> list[tuple[str, Path]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    figs: list[tuple[str, Path]] = []
    groups = _group(result.rows)
    for (model, task), rs in sorted(groups.items()):
        finite = [r for r in rs if math.isfinite(r.psnr)] or rs
        median = sorted(finite, key=lambda r: r.psnr)[len(finite) // 2]
        sl = result.slices.get((model, task, median.case))
        if sl is None:
            continue
        fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
        err = np.abs(sl["pred"] - sl["real"])
        for ax, img, title, cmap, vmax in (
            (axes[0], sl["source"], f"source ({task.split('->')[0]})", "gray", 1),
            (axes[1], sl["pred"], f"synthesized ({model})", "gray", 1),
            (axes[2], sl["real"], f"real {task.split('->')[1]}", "gray", 1),
            (axes[3], err, "|error|", "magma", 0.5),
        ):
            ax.imshow(img, cmap=cmap, vmin=0, vmax=vmax)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.suptitle(f"{task}, median case {median.case} ({median.split}): "
                     f"PSNR {median.psnr:.2f} dB, "
                     f"SSIM {median.ssim:.3f}", fontsize=10)
        fig.tight_layout()
        path = fig_dir / f"panel_{_safe(model)}_{_safe(task)}.png"
        _save_figure(fig, path)
        plt.close(fig)
        figs.append((f"{model}, {task}: median case", path))
    # metric vs severity
    kinds = sorted({r.condition.split(":")[0] for r in result.rows if r.condition != "clean"})
    for task in sorted({r.task for r in result.rows if r.condition != "clean"}):
        ncol = min(4, len(kinds))
        nrow = math.ceil(len(kinds) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.8 * nrow), squeeze=False)
        for ax, kind in zip(axes.flat, kinds, strict=False):
            for model in result.models:
                corrupted = [r for r in result.rows if r.model == model and r.task == task
                             and r.condition.startswith(f"{kind}:")]
                cases = {r.case for r in corrupted}  # clean point: the same cases
                xs, ys = [], []
                for sev in (0, 1, 2, 3):
                    cond = "clean" if sev == 0 else f"{kind}:{sev}"
                    vals = [r.psnr for r in result.rows if r.model == model and r.task == task
                            and r.condition == cond and r.case in cases
                            and math.isfinite(r.psnr)]
                    if vals:
                        xs.append(sev)
                        ys.append(float(np.mean(vals)))
                ax.plot(xs, ys, marker="o", label=model)
            ax.set_title(kind, fontsize=9)
            ax.set_xticks([0, 1, 2, 3])
            ax.set_xlabel("severity (0 = clean)", fontsize=8)
            ax.set_ylabel("PSNR (dB)", fontsize=8)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(kinds):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"Robustness, {task}", fontsize=10)
        fig.tight_layout()
        path = fig_dir / f"robustness_{_safe(task)}.png"
        _save_figure(fig, path)
        plt.close(fig)
        figs.append((f"PSNR vs artifact severity, {task}", path))
    return figs


def _safe(text: str) -> str:
    text = text.replace("->", "-to-")
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def write_report(result: EvalResult, out_dir: str | Path, command: str = "",
                 machine: str = "") -> dict[str, Path]:
    """Write ``per_case.csv``, ``results.json``, ``report.md``, ``report.html`` and figures.

    Every file goes through the one output check (:class:`rtfsyn.io.OutputGuard`): a report
    is regenerated in place, but never over a model file it scores.
    """
    guard = active_guard() or OutputGuard(overwrite=True)
    for name, info in result.models.items():
        if info.get("path"):
            guard.protect(info["path"], f"the checkpoint of model {name} ({info['path']})")
    with guard:
        return _write_report(result, out_dir, command, machine)


def _write_report(result: EvalResult, out_dir: str | Path, command: str,
                  machine: str) -> dict[str, Path]:


    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def _csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(EvalRow.__dataclass_fields__))
            w.writeheader()
            for r in result.rows:
                w.writerow(r.as_dict())

    paths["csv"] = atomic_write(out / "per_case.csv", _csv)
    payload = {**json.loads(rows_to_json(result)), "robustness": robustness_drops(result)}
    paths["json"] = atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(
        json.dumps(payload, indent=1, default=str)))
    figs = _figures(result, out / "figures")
    sections: list[tuple[str, str, Table | None]] = []
    scope = (f"cases of the held-out site **{result.holdout_site}** (every model's checkpoint "
             "shows it was trained without it)" if result.holdout_site else "cases")
    n_split = {k: sum(v == k for v in result.splits.values())
               for k in ("test", "validation", "training")}
    labelled = "; ".join(f"{n} {k}" for k, n in n_split.items() if n)
    n_ex_val = sum(v == "validation" for v in result.exclusions.values())
    n_ex_train = len(result.excluded) - n_ex_val
    intro = (f"{len(result.cases)} {scope} ({labelled or 'none'}); tasks "
             f"{', '.join(f'{a}→{b}' for a, b in result.tasks)}. Excluded: {n_ex_train} "
             f"training and {n_ex_val} validation case(s) of the compared models (their "
             "checkpoints list them, matched by participant and image content; every session "
             "of such a participant is excluded). 'test' = no compared model trained or "
             "validated on the case"
             + ("; 'validation' / 'training' rows were included on request and are never "
                "averaged with test rows" if n_split["validation"] or n_split["training"]
                else "")
             + ". Metrics inside the brain mask after 0.5–99.5 percentile normalisation of "
             "both volumes (PSNR with data range 1, 3-D SSIM).")
    sections.append(("Quality (clean inputs)", intro, summary_table(result)))
    if len(result.models) > 1:
        sections.append(("Paired comparison", "Wilcoxon signed-rank p-values need ≥ 5 cases.",
                         paired_table(result)))
    rob = robustness_table(result)
    if rob[1]:
        sections.append(("Robustness to artifacts", "Source corrupted at three fixed "
                         "severities, seeded by the case key; Δ = corrupted − clean per case, "
                         "mean ± std over the n cases.", rob))
    sections.append(("Efficiency", "Parameters and FLOPs per window (torch.utils.flop_counter),"
                     " mean seconds per synthesized volume in this run.",
                     efficiency_table(result)))
    md = ["# rtfsyn evaluation report", ""]
    if command:
        md += [f"Command: `{command}`", ""]
    if machine:
        md += [f"Machine: {machine}", ""]
    md += ["Models:", ""]
    md += [f"- **{n}**: {i.get('arch')} ({i.get('path')}, step {i.get('step')})"
           for n, i in result.models.items()]
    md.append("")
    for title, text, table in sections:
        md += [f"## {title}", "", text, ""]
        if table is not None:
            md += [_md_table(table), ""]
    if figs:
        md += ["## Figures", ""]
        md += [f"![{cap}](figures/{p.name})" for cap, p in figs]
    paths["md"] = atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(
        "\n".join(md) + "\n"))
    body = ["<h1>rtfsyn evaluation report</h1>"]
    if command:
        body.append(f"<p>Command: <code>{html.escape(command)}</code></p>")
    if machine:
        body.append(f"<p>Machine: {html.escape(machine)}</p>")
    body.append("<ul>" + "".join(
        f"<li><b>{html.escape(n)}</b>: {html.escape(str(i.get('arch')))} "
        f"({html.escape(str(i.get('path')))}, step {i.get('step')})</li>"
        for n, i in result.models.items()) + "</ul>")
    for title, text, table in sections:
        body.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(text).replace('**', '')}</p>")
        if table is not None:
            body.append(_html_table(table))
    if figs:
        body.append("<h2>Figures</h2>")
        body += [f'<figure><img src="figures/{p.name}" alt="{html.escape(c)}">'
                 f"<figcaption>{html.escape(c)}</figcaption></figure>" for c, p in figs]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:3px 8px;font-size:13px}img{max-width:100%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>rtfsyn report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    paths["html"] = atomic_write(out / "report.html", lambda tmp: Path(tmp).write_text(page))
    paths["figures"] = out / "figures"
    return paths


def summary_dict(result: EvalResult) -> dict[str, Any]:
    """Mean metrics per model × task (clean, test cases) as plain numbers (for model cards)."""
    out: dict[str, Any] = {}
    for (model, task), rs in _group([r for r in result.rows if r.split == "test"]).items():
        out.setdefault(model, {})[task] = {
            "n": len(rs),
            "psnr": mean_std([r.psnr for r in rs])[0],
            "ssim": mean_std([r.ssim for r in rs])[0],
            "mae": mean_std([r.mae for r in rs])[0],
        }
    return out


def _save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"), suffix=".png")
