"""Robustness of a model to imaging artifacts on ≥ 10 test cases (phantom + real).

1. Test cases: the phantom subjects of ``--phantom`` (simulated with a seed the model never
   saw) and the real cases of ``--real``; cases any compared checkpoint trained or validated
   on are dropped (participant + content fingerprint, :mod:`rtfsyn.data.splits`).
2. Real cases are resampled to ``--spacing`` mm first (the bundled model works at 2 mm
   internally anyway) so that 8 artifacts × 3 severities fit a CPU budget; the resampled
   copies live in ``<work>/robustness-real-<spacing>mm``.
3. :func:`rtfsyn.evaluation.evaluate` with every artifact at every severity, seeded by the
   case key (a case gets the same corruption whatever else is evaluated); the drop is
   corrupted − clean PSNR / SSIM per case, reported as mean ± std over the cases.

Writes ``<out>/robustness.json``, the full report under ``<out>/report`` and prints the table.
Usage::

    python benchmarks/robustness.py --model rtfsyn-default \\
        --phantom benchmarks/work/phantom-test-seed2026 --real benchmarks/work/real-test \\
        [--task T1w:T2w] [--kinds motion,blur] [--severities 1,2,3] [--phantom-cases 7]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _common import REPO, command_line, machine


def resample_real(real: Path, dest: Path, spacing: float, models: list[str]) -> Path:
    """Copies of the real test cases at ``spacing`` mm (training / validation cases skipped)."""
    from rtfsyn import io
    from rtfsyn.checkpoint import read_checkpoint_info
    from rtfsyn.data.cases import load_cases
    from rtfsyn.data.splits import SplitIndex

    index = SplitIndex.from_infos(read_checkpoint_info(_path(m)).info for m in models)
    cases = load_cases(real)
    roles = index.roles(cases, real)
    for case in cases:
        if roles[case.subject] in ("training", "validation") or len(case.contrasts) < 2:
            continue
        for path in [*case.images.values(), *([case.mask] if case.mask else [])]:
            out = dest / Path(path).relative_to(real)
            if out.exists():
                continue
            img = io.load_nifti(path)
            order = 0 if path == case.mask else 1
            io.save_nifti(io.resample_to_spacing(img, spacing, order=order), out)
    return dest


def _path(model: str) -> Path:
    from rtfsyn.inference import resolve_model_path

    return resolve_model_path(model)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", default=None, help="repeatable")
    ap.add_argument("--phantom", type=Path, required=True)
    ap.add_argument("--real", type=Path, default=None)
    ap.add_argument("--task", default="T1w:T2w")
    ap.add_argument("--kinds", default="all", help="comma list or 'all'")
    ap.add_argument("--severities", default="1,2,3")
    ap.add_argument("--spacing", type=float, default=2.0)
    ap.add_argument("--phantom-cases", type=int, default=None,
                    help="use only the first N phantom subjects (all real cases are used)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "robustness")
    args = ap.parse_args(argv)

    from rtfsyn.data.cases import load_cases
    from rtfsyn.evaluation import evaluate
    from rtfsyn.evaluation.artifacts import ARTIFACTS
    from rtfsyn.evaluation.report import robustness_drops, write_report
    from rtfsyn.evaluation.runner import case_key, parse_tasks

    models = args.model or ["rtfsyn-default"]
    kinds = list(ARTIFACTS) if args.kinds == "all" else args.kinds.split(",")
    severities = tuple(int(s) for s in args.severities.split(","))
    data = [args.phantom]
    if args.real is not None:
        data.append(resample_real(args.real, args.work / f"robustness-real-{args.spacing:g}mm",
                                  args.spacing, models))
    phantom = [case_key(args.phantom, c.subject) for c in load_cases(args.phantom)]
    chosen = set(phantom[: args.phantom_cases])
    for folder in data[1:]:
        chosen |= {case_key(folder, c.subject) for c in load_cases(folder)}
    t0 = time.perf_counter()
    res = evaluate(models, data, parse_tasks(args.task), artifacts=kinds, severities=severities,
                   cases_only=chosen, tissue=False, device=args.device, seed=args.seed,
                   log=print)
    seconds = time.perf_counter() - t0
    cmd = command_line("robustness.py", argv)
    write_report(res, args.out / "report", command=cmd, machine=machine())
    drops = robustness_drops(res)
    result: dict[str, Any] = {
        "command": cmd, "machine": machine(), "seconds": round(seconds, 1),
        "cases": res.cases, "splits": res.splits, "excluded": res.exclusions,
        "task": args.task, "robustness": drops,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "robustness.json").write_text(json.dumps(result, indent=1))
    print(render_markdown(result))
    return 0


def render_markdown(result: dict[str, Any]) -> str:
    """Drop per artifact × severity (mean ± std over cases) as a markdown table."""
    lines = [f"`{result['command']}` on {result['machine']}, {result['seconds'] / 60:.0f} min; "
             f"{len(result['cases'])} test cases, {result['task']}", "",
             "| model | artifact | severity | n | PSNR dB | ΔPSNR dB (mean ± std) "
             "| ΔSSIM (mean ± std) |", "|---|---|---|---|---|---|---|"]
    for e in result["robustness"]:
        lines.append(f"| {e['model']} | {e['artifact']} | {e['severity']} | {e['n']} | "
                     f"{e['psnr']:.2f} | {e['psnr_drop_mean']:+.2f} ± {e['psnr_drop_std']:.2f} "
                     f"| {e['ssim_drop_mean']:+.4f} ± {e['ssim_drop_std']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
