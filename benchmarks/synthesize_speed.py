"""Whole-volume synthesis speed, memory and FLOP rate: rtfsyn (fast / general decoder path),
crossattn, unet3d and optionally the baseline commit's rtfsyn, from one run.

Every row synthesizes the same synthetic head (``--shape``, 1 mm, written once as a
``.nii.gz`` so each row reads it like a user's file) with the real pipeline
(:func:`rtfsyn.inference.synthesize_image`), each in its own fresh subprocess so that peak
RSS (``VmHWM``) is that row's own. Per row: seconds, peak RSS, FLOPs per output voxel
(``torch.utils.flop_counter`` on one window × the windows run ÷ output voxels), achieved
GFLOP/s (those FLOPs ÷ seconds), and the max abs difference of its output from the first
rtfsyn row. ``rtfsyn-bf16`` is the fast path with ``precision="bf16"`` (bfloat16 autocast on
the CPU; not run with ``--device cuda``, where every row is bf16). Also, in the same run,
the GFLOP/s of a plain large ``conv3d`` (the practical ceiling of this machine for dense
float32 work).

The rtfsyn rows use MONAI's blending (``blend="monai"``) so that their output can be
compared with the baseline commit's (which used MONAI); the default ``gaussian`` blending
(issue 13) runs the same windows with other weights, at the same cost. Speed does not
depend on the weights, so the bundled model is compared with untrained twins of the other
architectures built from its config (same encoder widths, window and spacing).

Absolute seconds depend on the machine and its load (the 2-core VM is shared by several
jobs); the ratios measured in one run are what to compare.

``--device cuda``: every row loads its model on the GPU (``load_model(..., "cuda")``;
:func:`~rtfsyn.inference.predict_volume` then always runs bf16 autocast), synthesizes the
input once untimed (CUDA / cuDNN initialisation), then the timed run, ending with
``torch.cuda.synchronize()``; ``peak_gpu_mb`` is ``torch.cuda.max_memory_allocated()`` of
the timed run. The conv3d reference runs on the GPU in float32 (TF32 as cuDNN allows) and
bfloat16; rows are compared with the bf16 one. The ``baseline`` row (old commit, needs
git) runs on cuda only when ``--rows`` names it.

Usage::

    python benchmarks/synthesize_speed.py [--shape 240 240 155] [--baseline 845de79]
        [--rows rtfsyn,unet3d,rtfsyn-general,rtfsyn-bf16,crossattn,baseline] [--threads N]
        [--device cpu|cuda] [--out benchmarks/results/synthesize_speed.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, command_line, machine

ARCHS = ("rtfsyn", "crossattn", "unet3d")
ROWS = ("rtfsyn", "unet3d", "rtfsyn-general", "rtfsyn-bf16", "crossattn", "baseline")


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


def conv3d_gflops(threads: int, repeats: int = 3, device: str = "cpu",
                  dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of a plain conv3d, 32→32 channels, 3³ kernel, on a 96³ volume (float32 on
    CPU by default; on cuda, timed after ``torch.cuda.synchronize()``)."""
    if threads > 0:
        torch.set_num_threads(threads)
    cuda = device == "cuda"
    conv = torch.nn.Conv3d(32, 32, 3, padding=1).to(device, dtype)
    x = torch.randn(1, 32, 96, 96, 96, device=device, dtype=dtype)
    flops = 2 * 32 * 32 * 27 * 96**3
    best = math.inf
    with torch.inference_mode():
        conv(x)
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            conv(x)
            if cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    del conv, x
    if cuda:
        torch.cuda.empty_cache()
    return flops / best / 1e9


# ------------------------------------------------------------------ child process
def probe(args: argparse.Namespace) -> dict[str, Any]:
    """Synthesize ``args.input`` with one model / decoder path; seconds, RSS, FLOPs."""
    import functools

    from torch.utils.flop_counter import FlopCounterMode

    import rtfsyn.inference as inf
    from rtfsyn.evaluation.efficiency import peak_rss_mb
    from rtfsyn.metadata import Metadata

    cuda = args.device == "cuda"
    lm = inf.load_model(args.model, args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dec = getattr(lm.model, "decoder", None)
    if args.general and dec is not None:
        dec.fast_path = False
    if "blend" in inf.predict_volume.__code__.co_varnames:
        inf.predict_volume = functools.partial(inf.predict_volume, blend="monai")
    windows = [0]
    roi: list[tuple[int, ...]] = []
    forward = lm.model.forward

    def counting(image: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
        windows[0] += image.shape[0]
        roi.append(tuple(int(s) for s in image.shape[2:]))
        return forward(image, *a, **k)

    lm.model.forward = counting  # type: ignore[method-assign]
    warmup = None
    if cuda:  # untimed first run: CUDA context, cuDNN / cuBLAS initialisation
        t0 = time.perf_counter()
        inf.synthesize_image(args.input, "T2w", model=lm, source_contrast="T1w")
        torch.cuda.synchronize()
        warmup = time.perf_counter() - t0
        windows[0] = 0
        roi.clear()
        torch.cuda.reset_peak_memory_stats()
    extra = {} if args.precision == "fp32" else {"precision": args.precision}
    t0 = time.perf_counter()
    res = inf.synthesize_image(args.input, "T2w", model=lm, source_contrast="T1w", **extra)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = peak_rss_mb()
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    out = np.asarray(res.image.dataobj, dtype=np.float32)
    np.save(args.save, out)
    # FLOPs of one window (the work-grid window run, output k× finer). Counted on the
    # general decoder path: the fast path runs the same MLP matmuls, partly through a
    # fused oneDNN op that the counter does not see (and skips the per-query relative /
    # cell / skip projections, a few % of the total)
    k = res.provenance.get("work_factors", [1, 1, 1])
    x = torch.rand(1, 1, *roi[0], device=lm.device)
    src = [Metadata(contrast="T1w", voxel_size=tuple(float(f) for f in k))]
    tgt = [Metadata(contrast="T2w", voxel_size=(1.0, 1.0, 1.0))]
    if dec is not None and hasattr(dec, "fast_path"):
        dec.fast_path = False
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        forward(x, src, tgt, out_shape=tuple(r * int(f) for r, f in zip(roi[0], k, strict=True)))
    total = counter.get_total_flops() * windows[0]
    row = {"seconds": seconds, "peak_mb": peak, "windows": windows[0],
           "flops_per_window": counter.get_total_flops(), "flops_total": total,
           "flops_per_voxel": total / out.size, "gflops_achieved": total / seconds / 1e9,
           "threads": torch.get_num_threads(), "work_factors": list(k)}
    if cuda:
        row.update(device=res.provenance.get("device", str(lm.device)), peak_gpu_mb=peak_gpu,
                   warmup_seconds=warmup)
    return row


def run_probe(model: Path, image: Path, save: Path, threads: int, general: bool = False,
              tree: Path | None = None, device: str = "cpu", precision: str = "fp32"
              ) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", "--model", str(model),
           "--input", str(image), "--save", str(save), "--threads", str(threads),
           "--device", device, "--precision", precision]
    if general:
        cmd.append("--general")
    env = dict(os.environ)
    if tree is not None:  # the old src first; keep the rest (packages given by PYTHONPATH)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(tree / "src"), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"probe failed: {(proc.stderr or proc.stdout)[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    ap.add_argument("--rows", default=None,
                    help=f"subset of {','.join(ROWS)}, or baseline-ARCH (baseline commit, "
                    "ARCH); default: all (on cuda: all but baseline)")
    ap.add_argument("--baseline", default="845de79", help="commit of the 'baseline' row")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: rtfsyn default)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where every row runs (cuda: one untimed warm-up run first)")
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "results" / "synthesize_speed.json")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--general", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args)))
        return 0

    import nibabel as nib

    from rtfsyn.device import resolve_device
    from rtfsyn.errors import RtfsynError
    from rtfsyn.evaluation.efficiency import head_phantom
    from rtfsyn.inference import resolve_model_path

    cuda = args.device == "cuda"
    if cuda:
        try:
            resolve_device("cuda")
        except RtfsynError as exc:
            print(f"synthesize_speed.py: error: {exc}", file=sys.stderr)
            return 2
    rows_arg = args.rows or ",".join(
        r for r in ROWS if not (cuda and r in ("baseline", "rtfsyn-bf16")))
    rows_wanted = [r for r in rows_arg.split(",") if r]
    result: dict[str, Any] = {"command": command_line("synthesize_speed.py", argv),
                              "machine": machine(), "shape": args.shape, "rows": []}
    if cuda:
        result.update(device="cuda", device_name=torch.cuda.get_device_name(),
                      torch=torch.__version__, cuda=torch.version.cuda,
                      cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                      precision="bf16 autocast (predict_volume, always on cuda)")

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_suffix(".json.tmp")
        tmp_out.write_text(json.dumps(result, indent=1))
        tmp_out.replace(args.out)

    with tempfile.TemporaryDirectory(prefix="rtfsyn-speed-") as tmp:
        root = Path(tmp)
        image = root / "head_T1w.nii.gz"
        nib.save(nib.Nifti1Image(head_phantom(args.shape), np.eye(4)), image)
        models = twins(resolve_model_path(None), root)
        base_tree = None
        if any(r.startswith("baseline") for r in rows_wanted):
            base_tree = root / "baseline"
            base_tree.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline, "src"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base_tree)], input=archive, check=True)
        if cuda:
            result["conv3d_gflops"] = conv3d_gflops(args.threads, 10, "cuda")
            result["conv3d_gflops_bf16"] = conv3d_gflops(args.threads, 10, "cuda",
                                                         torch.bfloat16)
            result["ceiling"] = "conv3d_gflops_bf16"
            print(f"plain conv3d on {result['device_name']}: {result['conv3d_gflops']:.1f} "
                  f"GFLOP/s float32 (TF32 {'on' if result['cudnn_allow_tf32'] else 'off'}), "
                  f"{result['conv3d_gflops_bf16']:.1f} GFLOP/s bf16", flush=True)
        else:
            result["conv3d_gflops"] = conv3d_gflops(args.threads)
            print(f"plain conv3d: {result['conv3d_gflops']:.1f} GFLOP/s", flush=True)
        ceiling = result["conv3d_gflops_bf16" if cuda else "conv3d_gflops"]
        save()
        ref_out: np.ndarray | None = None
        for name in rows_wanted:
            base_row = name.startswith("baseline")
            arch = ("rtfsyn" if name in ("rtfsyn-general", "rtfsyn-bf16", "baseline")
                    else name.split("-", 1)[1] if base_row else name)
            out_npy = root / f"{name}.npy"
            r = run_probe(models[arch], image, out_npy, args.threads,
                          general=name == "rtfsyn-general",
                          tree=base_tree if base_row else None, device=args.device,
                          precision="bf16" if name == "rtfsyn-bf16" else "fp32")
            r["model"] = name
            r["of_conv3d_ceiling"] = r["gflops_achieved"] / ceiling
            if arch == "rtfsyn":
                out = np.load(out_npy)
                if ref_out is None:
                    ref_out, r["max_abs_diff_vs_first_rtfsyn"] = out, 0.0
                else:
                    r["max_abs_diff_vs_first_rtfsyn"] = float(np.abs(out - ref_out).max())
            result["rows"].append(r)
            save()
            gpu = f" {r['peak_gpu_mb']:7.0f} MB GPU" if cuda else ""
            secs = f"{r['seconds']:8.2f}" if cuda else f"{r['seconds']:8.1f}"
            print(f"{name:<15} {secs} s {r['peak_mb']:7.0f} MB{gpu} "
                  f"{r['flops_per_voxel'] / 1e3:8.1f} kFLOP/vox {r['gflops_achieved']:6.1f} "
                  f"GFLOP/s", flush=True)
    rows = {r["model"]: r for r in result["rows"]}
    if "rtfsyn" in rows:
        for name in ("baseline", "rtfsyn-general", "unet3d", "crossattn"):
            if name in rows:
                result[f"rtfsyn_vs_{name}"] = rows["rtfsyn"]["seconds"] / rows[name]["seconds"]
    if "rtfsyn-bf16" in rows and "baseline" in rows:
        result["rtfsyn-bf16_vs_baseline"] = (rows["rtfsyn-bf16"]["seconds"]
                                             / rows["baseline"]["seconds"])
    save()
    if cuda:
        print(f"\ndevice: {result['device_name']}, torch {result['torch']}")
    gpu_head = f" {'GPU MB':>8}" if cuda else ""
    print(f"\n{'model':<15} {'seconds':>8} {'peak MB':>8}{gpu_head} {'kFLOP/vox':>10} "
          f"{'GFLOP/s':>8} {'% conv3d':>8} {'max|Δ|':>9}")
    for r in result["rows"]:
        diff = r.get("max_abs_diff_vs_first_rtfsyn")
        gpu = f" {r['peak_gpu_mb']:>8.0f}" if cuda else ""
        secs = f"{r['seconds']:>8.2f}" if cuda else f"{r['seconds']:>8.1f}"
        print(f"{r['model']:<15} {secs} {r['peak_mb']:>8.0f}{gpu} "
              f"{r['flops_per_voxel'] / 1e3:>10.1f} {r['gflops_achieved']:>8.1f} "
              f"{100 * r['of_conv3d_ceiling']:>7.0f}% "
              f"{'' if diff is None else f'{diff:.1e}':>9}")
    ref = (f"{result['conv3d_gflops']:.1f} GFLOP/s float32, "
           f"{result['conv3d_gflops_bf16']:.1f} GFLOP/s bf16 (% conv3d is of bf16)"
           if cuda else f"{result['conv3d_gflops']:.1f} GFLOP/s")
    print(f"plain conv3d reference: {ref}; "
          + ", ".join(f"{k} {v:.2f}×" for k, v in result.items() if k.startswith("rtfsyn_vs_")))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
