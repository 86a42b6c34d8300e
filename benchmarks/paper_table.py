"""The paper's table: rtfsyn vs crossattn vs unet3d, same data, same training budget.

1. Simulate the phantom cohort (24 subjects × 4 sites at 2 mm, seed 0; SiteD = 1.5 T with
   5 mm slices is held out entirely).
2. Train each architecture on the phantom sites A–C plus the real cases in
   ``../shared/data/real`` (three BraTS-space tumour cases and the MNI152 T1/T2 pair) with the
   *same* training config (``train-cpu`` unless ``--train-config``): same steps, batch,
   patches, optimiser, seed; only the model config's ``arch`` differs. Each run's split
   (stratified by site, seeded) is stored in its checkpoint.
3. Evaluate every model with :func:`rtfsyn.evaluation.evaluate` on every case no model
   trained or validated on: the test participants of sites A–C and of the real data
   ("test") and all SiteD subjects ("test, held-out site", zero-shot), tasks T1w→T2w, T1w→FLAIR,
   T1w→PDw (phantom) and T1w→T1Gd (BraTS only); then a robustness pass (8 artifacts × 3
   severities) on T1w→T2w for the first ``--artifact-cases`` held-out cases.
4. Write ``<out>/paper_table.json``, the full evaluation report (``report.md/.html``,
   figures) under ``<out>/report`` and print the table.

Runs resume: a finished run is reused, an interrupted one is resumed from its last
checkpoint. Usage::

    python benchmarks/paper_table.py [--steps 3000] [--work benchmarks/work]
        [--out benchmarks/results/paper_table] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _common import HOLDOUT_SITE, REAL, REPO, TASKS, command_line, machine, split_rows

ARCHS = ("rtfsyn", "crossattn", "unet3d")


def train_all(args: argparse.Namespace, data: list[Path]) -> dict[str, dict[str, Any]]:
    from rtfsyn.models import load_config
    from rtfsyn.training.config import load_train_config
    from rtfsyn.training.trainer import train

    runs: dict[str, dict[str, Any]] = {}
    for arch in args.archs:
        base = load_train_config(args.train_config)
        model = load_config(base.model)
        cfg = load_train_config(
            {**base.model_dump(mode="json"), "model": model.with_arch(arch).to_dict()},
            max_steps=args.steps, seed=args.seed,
        )
        out = args.work / "runs" / arch
        final = out / "checkpoints" / "final.safetensors"
        info_path = out / "paper_table_run.json"
        if final.exists() and info_path.exists():
            print(f"[{arch}] reusing {final}", flush=True)
            runs[arch] = json.loads(info_path.read_text())
            continue
        resume = (out / "checkpoints" / "last.safetensors").exists()
        print(f"[{arch}] training {cfg.max_steps} steps -> {out}" + (" (resume)" if resume
                                                                     else ""), flush=True)
        t0 = time.perf_counter()
        res = train(data, cfg, out, resume=resume, holdout_site=HOLDOUT_SITE,
                    device=args.device, progress=args.progress)
        secs = time.perf_counter() - t0
        runs[arch] = {"checkpoint": str(res.final_checkpoint), "steps": res.step,
                      "train_seconds_this_call": round(secs, 1), "resumed": resume,
                      "val_metrics": res.val_metrics}
        info_path.write_text(json.dumps(runs[arch], indent=1))
    return runs


def eval_cases(models: list[str], data: list[Path], per_site: int,
               holdout: int) -> list[str]:
    """Case keys to evaluate: no model's training or validation case; the first ``per_site`` test
    subjects of each training site (every held-out real case) and ``holdout`` of SiteD."""
    from rtfsyn.checkpoint import read_checkpoint_info
    from rtfsyn.data.cases import load_cases
    from rtfsyn.data.splits import SplitIndex
    from rtfsyn.evaluation.runner import case_key

    index = SplitIndex.from_infos(read_checkpoint_info(m).info for m in models)
    chosen: list[str] = []
    for folder in data:
        by_site: dict[str, list[str]] = {}
        cases = load_cases(folder)
        roles = index.roles(cases, folder)
        for case in cases:
            key = case_key(folder, case.subject)
            if roles[case.subject] not in ("training", "validation"):
                by_site.setdefault(case.site or "", []).append(key)
        for site, keys in sorted(by_site.items()):
            cap = holdout if site == HOLDOUT_SITE else per_site if site else len(keys)
            chosen += sorted(keys)[:cap]
    return chosen


def render_markdown(result: dict[str, Any]) -> str:
    """The table (and robustness, efficiency) as markdown, for the README and notes."""
    lines = [f"`{result['command']}` on {result['machine']} "
             f"({result['seconds'] / 60:.0f} min for this call; training time per model in "
             "the last table — runs finished earlier are reused).", "",
             "| split | task | model | n | PSNR dB | SSIM | MAE | tissue err "
             "| Δ PSNR rtfsyn − this (p) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in result["table"]:
        comp = e.get("rtfsyn_minus_this_psnr")
        cmp_txt = ""
        if comp:
            p = comp.get("p_wilcoxon")
            cmp_txt = f"{comp['mean_diff']:+.2f}" + (f" (p={p:.3f})" if p is not None else "")
        terr = e.get("tissue_error")
        lines.append(
            f"| {e['split']} | {e['task'].replace('->', '→')} | {e['model']} | {e['n']} | "
            f"{e['psnr']:.2f} ± {e['psnr_std']:.2f} | {e['ssim']:.3f} ± {e['ssim_std']:.3f} | "
            f"{e['mae']:.4f} | {'' if terr is None else f'{terr:.3f}'} | {cmp_txt} |")
    lines += ["", "| model | artifact severity | n | PSNR dB | drop from clean |",
              "|---|---|---|---|---|"]
    lines += [f"| {e['model']} | {e['severity']} | {e['n']} | {e['psnr']:.2f} | "
              f"{e['drop_from_clean']:.2f} |" for e in result["robustness"]]
    lines += ["", "| model | steps | training s | params | GFLOP / window | s / 240×240×155 "
              "| peak MB |", "|---|---|---|---|---|---|---|"]
    for name, info in result["models"].items():
        eff = result["efficiency"].get(name, {})
        run = result["runs"].get(info.get("arch") or name, {})
        nan = float("nan")
        lines.append(f"| {info.get('arch')} | {run.get('steps', '')} | "
                     f"{run.get('train_seconds_this_call', nan):.0f} | "
                     f"{info.get('params', 0) / 1e6:.2f} M | {eff.get('gflops', nan):.1f} | "
                     f"{eff.get('seconds', nan):.1f} | {eff.get('peak_mb', nan):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3000, help="training steps per model")
    ap.add_argument("--train-config", default="train-cpu")
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    ap.add_argument("--subjects", type=int, default=24)
    ap.add_argument("--spacing", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--artifact-cases", type=int, default=1,
                    help="held-out cases corrupted by every artifact × severity")
    ap.add_argument("--eval-per-site", type=int, default=3,
                    help="held-out subjects evaluated per training site (all real ones)")
    ap.add_argument("--eval-holdout", type=int, default=8,
                    help="subjects of the held-out site evaluated")
    ap.add_argument("--no-real", action="store_true", help="phantom only")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "paper_table")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--progress", action="store_true", help="rich progress bars")
    ap.add_argument("--render", action="store_true",
                    help="only re-render <out>/paper_table.md from <out>/paper_table.json")
    args = ap.parse_args(argv)
    if args.render:
        result = json.loads((args.out / "paper_table.json").read_text())
        (args.out / "paper_table.md").write_text(render_markdown(result))
        print(render_markdown(result))
        return 0

    from rtfsyn.evaluation import evaluate
    from rtfsyn.evaluation.efficiency import measure_models
    from rtfsyn.evaluation.report import write_report
    from rtfsyn.evaluation.stats import mean_std, paired_comparison
    from rtfsyn.phantom import make_cohort

    t_start = time.perf_counter()
    phantom = args.work / "phantom"
    if not (phantom / "participants.tsv").exists():
        make_cohort(phantom, n_subjects=args.subjects, n_sites=4, spacing=args.spacing,
                    seed=args.seed, progress=False, force=True)
    data = [phantom]
    if REAL.is_dir() and not args.no_real:
        data.append(REAL)
    runs = train_all(args, data)
    models = [runs[a]["checkpoint"] for a in args.archs]
    chosen = eval_cases(models, data, args.eval_per_site, args.eval_holdout)
    print(f"evaluating {len(chosen)} held-out cases: {', '.join(chosen)}", flush=True)

    print("evaluating (clean, all tasks)", flush=True)
    clean = evaluate(models, data, TASKS, device=args.device, log=print, cases_only=chosen)
    print("evaluating (artifacts, T1w->T2w)", flush=True)
    robust = evaluate(models, data, [("T1w", "T2w")], artifacts=True,
                      artifact_cases=args.artifact_cases, tissue=False, device=args.device,
                      log=print, cases_only=chosen)
    robust.rows = [r for r in robust.rows if r.condition != "clean"]
    clean.rows += robust.rows
    print("measuring efficiency (240x240x155 volume per model)", flush=True)
    measure_models(clean, (240, 240, 155), device=args.device)
    cmd = command_line("paper_table.py", argv)
    write_report(clean, args.out / "report", command=cmd, machine=machine())

    table: list[dict[str, Any]] = []
    clean_rows = [r for r in clean.rows if r.condition == "clean"]
    for split, rows in split_rows(clean_rows).items():
        for task in sorted({r.task for r in rows}):
            for arch in args.archs:
                rs = [r for r in rows if r.task == task and clean.models[r.model]["arch"] == arch]
                if not rs:
                    continue
                entry = {"split": split, "task": task, "model": arch, "n": len(rs)}
                for k in ("psnr", "ssim", "mae", "tissue_error"):
                    entry[k], entry[k + "_std"] = mean_std([getattr(r, k) for r in rs])
                if arch != "rtfsyn":
                    ref = sorted((r.case, r.psnr, r.ssim) for r in rows if r.task == task and
                                 clean.models[r.model]["arch"] == "rtfsyn")
                    mine = sorted((r.case, r.psnr, r.ssim) for r in rs)
                    if [c for c, *_ in ref] == [c for c, *_ in mine]:
                        entry["rtfsyn_minus_this_psnr"] = paired_comparison(
                            [p for _, p, _ in ref], [p for _, p, _ in mine])
                        entry["rtfsyn_minus_this_ssim"] = paired_comparison(
                            [s for *_, s in ref], [s for *_, s in mine])
                table.append(entry)
    robustness: list[dict[str, Any]] = []
    for arch in args.archs:
        names = [n for n, m in clean.models.items() if m["arch"] == arch]
        rs = [r for r in robust.rows if r.model in names]
        base_cases = {r.case for r in rs}
        base = [r.psnr for r in clean_rows if r.model in names and r.task == "T1w->T2w"
                and r.case in base_cases]
        for sev in (1, 2, 3):
            vals = [r.psnr for r in rs if r.condition.endswith(f":{sev}")]
            robustness.append({"model": arch, "severity": sev, "n": len(vals),
                               "psnr": mean_std(vals)[0],
                               "drop_from_clean": mean_std(base)[0] - mean_std(vals)[0]})
    result = {"command": cmd, "machine": machine(), "seconds": time.perf_counter() - t_start,
              "data": [str(d) for d in data], "holdout_site": HOLDOUT_SITE,
              "runs": runs, "models": clean.models, "table": table, "robustness": robustness,
              "efficiency": clean.efficiency}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "paper_table.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "paper_table.md").write_text(render_markdown(result))

    print(f"\n{'split':<24} {'task':<12} {'model':<10} {'n':>3} {'PSNR dB':>14} "
          f"{'SSIM':>14} {'MAE':>7} {'tissue err':>10}")
    for e in table:
        print(f"{e['split']:<24} {e['task']:<12} {e['model']:<10} {e['n']:>3} "
              f"{e['psnr']:>7.2f} ± {e['psnr_std']:<4.2f} {e['ssim']:>7.3f} ± "
              f"{e['ssim_std']:<5.3f} {e['mae']:>7.4f} {e['tissue_error']:>10.3f}")
    print(f"\n{'model':<10} {'severity':>8} {'n':>4} {'PSNR dB':>8} {'drop':>6}")
    for e in robustness:
        print(f"{e['model']:<10} {e['severity']:>8} {e['n']:>4} {e['psnr']:>8.2f} "
              f"{e['drop_from_clean']:>6.2f}")
    for arch, r in runs.items():
        print(f"{arch}: {r['steps']} steps, {r['train_seconds_this_call']:.0f} s training")
    print(f"wrote {args.out / 'paper_table.json'} and {args.out / 'report'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
