"""Build the bundled default model: train (or reuse), evaluate on held-out data, bundle.

Recipe (CPU, 2 cores; about 1.5 h in all):

1. stage 1 — the ``rtfsyn`` run of ``benchmarks/paper_table.py`` found in ``--work``
   (``train-cpu`` on the phantom cohort sites A–C + ``../shared/data/real``; SiteD held out;
   the bundled model used ``python benchmarks/paper_table.py --steps 700 --archs rtfsyn``);
2. stages 2, 3, … — fine-tune it with ``train-cpu`` for each of ``--steps`` more steps on the
   same data and split (``rtfsyn train --init-from`` the previous stage; a fresh warm-up and
   cosine schedule per stage), all contrast directions the data has;
3. evaluate the result with :func:`rtfsyn.evaluation.evaluate` on every case neither stage
   trained or validated on — test participants of sites A–C and the real data, and the
   held-out site —
   for T1w→T2w/FLAIR/PDw/T1Gd;
4. write the card summary into the checkpoint and copy it atomically to
   ``src/rtfsyn/weights/rtfsyn-default.safetensors``; metrics to
   ``benchmarks/results/default_model.json``.

Usage::

    python benchmarks/default_model.py [--steps 1500 [1500 ...]] [--work benchmarks/work]
        [--max-minutes M] [--no-bundle]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from _common import HOLDOUT_SITE, REAL, REPO, TASKS, command_line, machine, split_rows


def summarize(rows: list[Any]) -> list[dict[str, Any]]:
    from rtfsyn.evaluation.stats import mean_std

    out = []
    for split, rs in split_rows(rows).items():
        for task in sorted({r.task for r in rs}):
            t = [r for r in rs if r.task == task]
            psnr, psnr_sd = mean_std([r.psnr for r in t])
            ssim, ssim_sd = mean_std([r.ssim for r in t])
            out.append({"split": split, "task": task, "n": len(t), "psnr": psnr,
                        "psnr_std": psnr_sd, "ssim": ssim, "ssim_std": ssim_sd,
                        "mae": mean_std([r.mae for r in t])[0]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[1500],
                    help="steps of each fine-tuning stage (2, 3, ...)")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="wall-clock cap per stage (the stage then ends early)")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work")
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "results" / "default_model.json")
    ap.add_argument("--no-bundle", action="store_true", help="evaluate only")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    from rtfsyn.checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
    from rtfsyn.evaluation import evaluate
    from rtfsyn.inference import default_model_path
    from rtfsyn.io import atomic_write
    from rtfsyn.training.config import load_train_config
    from rtfsyn.training.trainer import train

    t0 = time.perf_counter()
    data = [args.work / "phantom", REAL]
    stage1 = args.work / "runs" / "rtfsyn" / "checkpoints" / "final.safetensors"
    if not stage1.exists():
        raise SystemExit(f"{stage1} missing: run benchmarks/paper_table.py first (stage 1)")
    previous = stage1
    stage_infos = []
    for k, steps in enumerate(args.steps, start=2):
        run = args.work / "runs" / ("default" if k == 2 else f"default-stage{k}")
        final = run / "checkpoints" / "final.safetensors"
        if not final.exists():
            cfg = load_train_config("train-cpu", max_steps=steps, max_minutes=args.max_minutes)
            resume = (run / "checkpoints" / "last.safetensors").exists()
            train(data, cfg, run, resume=resume, holdout_site=HOLDOUT_SITE,
                  device=args.device, init_from=None if resume else previous, progress=False)
        stage_infos.append(read_checkpoint_info(final))
        previous = final
    info = stage_infos[-1]
    stage1_info = read_checkpoint_info(stage1)
    steps_done = [stage1_info.step] + [i.step for i in stage_infos]

    result = evaluate([final], data, TASKS, device=args.device, log=print)
    table = summarize(result.rows)
    t2 = next((e for e in table if e["split"] == "test"
               and e["task"] == "T1w->T2w"), None)
    summary = (f"cpu-small, {'+'.join(map(str, steps_done))} CPU steps on the phantom (sites A–C) "
               "+ 3 BraTS cases + MNI152; not for clinical use"
               + (f"; held-out T1w→T2w {t2['psnr']:.1f} dB / SSIM {t2['ssim']:.3f}" if t2 else ""))
    out = {"command": command_line("default_model.py", argv), "machine": machine(),
           "seconds": time.perf_counter() - t0,
           "checkpoint": str(final), "stage1_steps": stage1_info.step,
           "fine_tune_steps": steps_done[1:], "cases": result.cases, "excluded": result.excluded,
           "table": table, "rows": [r.as_dict() for r in result.rows], "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(json.dumps(out, indent=1)))

    print(f"\n{'split':<24} {'task':<12} {'n':>3} {'PSNR dB':>14} {'SSIM':>14} {'MAE':>7}")
    for e in table:
        print(f"{e['split']:<24} {e['task']:<12} {e['n']:>3} {e['psnr']:>7.2f} ± "
              f"{e['psnr_std']:<4.2f} {e['ssim']:>7.3f} ± {e['ssim_std']:<5.3f} {e['mae']:>7.4f}")
    md = ["| split | task | n | PSNR dB | SSIM | MAE |", "|---|---|---|---|---|---|"]
    md += [f"| {e['split']} | {e['task'].replace('->', '→')} | {e['n']} | {e['psnr']:.2f} ± "
           f"{e['psnr_std']:.2f} | {e['ssim']:.3f} ± {e['ssim_std']:.3f} | {e['mae']:.4f} |"
           for e in table]
    md_path = args.out.with_suffix(".md")
    atomic_write(md_path, lambda tmp: Path(tmp).write_text(
        f"`{out['command']}` on {out['machine']}\n\n" + "\n".join(md) + "\n"))
    if not args.no_bundle:
        weights, _ = load_checkpoint(final)
        stages = [str(stage1)] + [str(i.path) for i in stage_infos]
        card = {"summary": summary, "stages": stages,
                "held_out": table, "model_card": "MODEL_CARD.md"}
        dest = default_model_path()
        with_card = args.work / "rtfsyn-default.safetensors"
        save_checkpoint(with_card, weights, info.config, step=sum(steps_done),
                        info={**info.info, "card": card})
        atomic_write(dest, lambda tmp: shutil.copyfile(with_card, tmp))
        print(f"bundled {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
