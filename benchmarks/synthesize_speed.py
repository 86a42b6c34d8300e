"""Whole-volume synthesis speed and peak memory: rtfsyn vs crossattn vs unet3d, one run.

Every model synthesizes the same synthetic 240×240×155 head at 1 mm (the BraTS grid) with
the real pipeline (:func:`rtfsyn.inference.synthesize_image`: reorientation, resampling to
the model's training spacing, normalisation, Gaussian-weighted sliding window with overlap
0.25, resampling back to the input grid), each in its own fresh subprocess
(:func:`rtfsyn.evaluation.efficiency.measure_volume`) so that peak memory (``VmHWM``) is
that model's own. Speed does not depend on the weights, so by default the bundled model is
compared with untrained twins of the other architectures built from *its* config (same
encoder widths, window and spacing); ``--model`` compares any checkpoints instead.

DESIGN.md target: a whole volume in ≤ 60 s on 2 CPU cores. Absolute seconds depend on the
machine and its load; the ratios between models measured in one run are what to compare.

Usage::

    python benchmarks/synthesize_speed.py [--shape 240 240 155] [--repeats 2]
        [--model CKPT ...] [--device cpu] [--out benchmarks/results/synthesize_speed.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from _common import REPO, command_line, machine

ARCHS = ("rtfsyn", "crossattn", "unet3d")


def twins(reference: Path, folder: Path) -> dict[str, Path]:
    """The reference checkpoint plus untrained crossattn / unet3d with its config."""
    from rtfsyn.checkpoint import read_checkpoint_info, save_checkpoint
    from rtfsyn.models import ModelConfig, build_model

    info = read_checkpoint_info(reference)
    out = {"rtfsyn": reference}
    for arch in ARCHS[1:]:
        cfg = ModelConfig(**{**info.config["model"], "arch": arch})
        torch.manual_seed(0)
        out[arch] = save_checkpoint(folder / f"{arch}.safetensors", build_model(cfg),
                                    {**info.config, "model": cfg.model_dump(mode="json")})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    ap.add_argument("--repeats", type=int, default=2, help="runs per model (median reported)")
    ap.add_argument("--model", action="append", help="checkpoint(s); default: bundled + twins")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "results" / "synthesize_speed.json")
    args = ap.parse_args(argv)

    from rtfsyn.evaluation.efficiency import measure_volume
    from rtfsyn.inference import resolve_model_path

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            models = {Path(m).stem: resolve_model_path(m) for m in args.model}
        else:
            models = twins(resolve_model_path(None), Path(tmp))
        rows = []
        for name, path in models.items():
            runs = [measure_volume(path, args.shape, device=args.device)
                    for _ in range(args.repeats)]
            rows.append({"model": name, "seconds": statistics.median(r["seconds"] for r in runs),
                         "seconds_all": [r["seconds"] for r in runs],
                         "peak_mb": max(r["peak_mb"] for r in runs),
                         "device": runs[0]["device"], "threads": runs[0]["threads"]})
    ref = rows[0]
    for r in rows:
        r["seconds_vs_first"] = r["seconds"] / ref["seconds"]
        r["meets_60s_target"] = r["seconds"] <= 60.0
    result = {"command": command_line("synthesize_speed.py", argv), "machine": machine(),
              "shape": args.shape, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=1))
    tmp_out.replace(args.out)
    print(f"{'model':<12} {'seconds':>8} {'× first':>8} {'peak MB':>8}  ≤60 s")
    for r in rows:
        print(f"{r['model']:<12} {r['seconds']:>8.1f} {r['seconds_vs_first']:>8.2f} "
              f"{r['peak_mb']:>8.0f}  {'yes' if r['meets_60s_target'] else 'NO'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
