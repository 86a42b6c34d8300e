"""Model efficiency: rtfsyn vs the crossattn and unet3d baselines, same config, same run.

For each architecture (the config's ``arch`` swapped) and each cubic window (default 64³ and
96³), batch 1, CPU, ``torch.no_grad``:

* **params** — all parameters of the module tree;
* **FLOPs** — ``torch.utils.flop_counter.FlopCounterMode`` (multiply-add = 2 FLOPs; convs,
  matmuls, linears; gathers / grid_sample / norms / activations are not counted), and FLOPs
  per output voxel (window³ outputs), plus the same × (4/3)³ ≈ 2.37, the asymptotic
  evaluations per voxel of sliding-window inference with overlap 0.25 (DESIGN.md budget:
  ≤ 1.5 MFLOP per output voxel including overlap);
* **latency** — median wall time of ``--repeats`` forward passes after a warm-up pass, in
  its own fresh subprocess (default malloc settings);
* **peak memory** — measured in a fresh subprocess per (arch, window), so models cannot
  affect each other: after building the model and one warm-up pass on a 16³ input (loads
  kernels and libraries), the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``
  ← 5), then peak RSS (``VmHWM``) during one forward pass minus RSS before it is reported.
  This counts everything the forward allocates (tensors, oneDNN/MKL workspaces) regardless
  of PyTorch's allocator; glibc is run with a fixed mmap threshold so freed buffers leave
  RSS. Linux-specific; elsewhere the ``ru_maxrss`` high-water mark is used (less exact);
* **attention map** — elements × 4 bytes of all cross-attention maps of one forward,
  computed analytically (B·heads·M·L; M = latent voxels / r³ for rtfsyn, all latent voxels
  for crossattn) and checked against the shape the modules record. A model whose analytic
  attention map exceeds ``--max-attention-gb`` is not run (reported as skipped).

Usage::

    python benchmarks/model_efficiency.py [--config cpu-small] [--windows 64 96]
        [--repeats 3] [--out benchmarks/results/model_efficiency.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rtfsyn.models import ARCHS, build_model, load_config
from rtfsyn.models.profiling import (
    attention_map_elements,
    count_flops,
    count_parameters,
    example_metadata,
)

OVERLAP_FACTOR = (4 / 3) ** 3  # sliding-window evaluations per voxel at overlap 0.25


def _status_bytes(key: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process from /proc (Linux), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the peak-RSS mark (``VmHWM``) to the current RSS (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_child(config: str, arch: str, window: int, repeats: int, threads: int,
              measure: str) -> dict[str, Any]:
    """In this (fresh) process, measure ``memory`` or ``latency`` of one (arch, window)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(load_config(config).with_arch(arch)).eval()
    src, tgt = example_metadata(1)
    with torch.no_grad():  # load kernels / libraries once, on a small input
        model(torch.rand(1, 1, 16, 16, 16), src, tgt)
    x = torch.rand(1, 1, window, window, window)
    if measure == "latency":
        with torch.no_grad():
            model(x, src, tgt)  # warm-up at the measured size
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x, src, tgt)
                times.append(time.perf_counter() - t0)
        return {"latency_s": statistics.median(times), "latency_all_s": times}
    gc.collect()
    reset = _reset_peak()
    rss_before = _status_bytes("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.no_grad():
        y = model(x, src, tgt)
    hwm = _status_bytes("VmHWM") if reset else None
    if hwm is None or rss_before is None:  # fallback: high-water mark of ru_maxrss
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        rss_before = maxrss_before
    shapes = [m.last_attention_shape for m in model.modules()
              if getattr(m, "last_attention_shape", None) is not None]
    return {
        "peak_forward_bytes": max(0, hwm - rss_before),
        "rss_before_bytes": rss_before,
        "peak_method": "VmHWM reset" if reset else "ru_maxrss",
        "measured_attention_elements": sum(math.prod(s) for s in shapes),
        "output_shape": list(y.shape),
    }


def _child(config: str, arch: str, window: int, repeats: int, threads: int,
           measure: str) -> dict[str, Any]:
    env = dict(os.environ)
    if measure == "memory":
        # fixed mmap threshold: big buffers go back to the OS when freed, so RSS follows
        # live memory (glibc's dynamic threshold would hide reuse). Not used for timing:
        # it makes every large allocation page-fault afresh.
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    proc = subprocess.run(
        [sys.executable, __file__, "--child", arch, str(window), measure, "--config", config,
         "--repeats", str(repeats), "--threads", str(threads)],
        capture_output=True, text=True, check=False, env=env,
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        return {"error": f"{measure} measurement failed: {lines[-1]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def benchmark(config: str, windows: list[int], repeats: int, max_attention_gb: float,
              threads: int) -> dict[str, Any]:
    cfg = load_config(config)
    rows: list[dict[str, Any]] = []
    for window in windows:
        for arch in ARCHS:
            torch.manual_seed(0)
            model = build_model(cfg.with_arch(arch))
            att = attention_map_elements(model, window)
            row: dict[str, Any] = {
                "arch": arch, "window": window, "params": count_parameters(model),
                "attention_elements": att, "attention_bytes": 4 * att,
            }
            if 4 * att > max_attention_gb * 2**30:
                row["skipped"] = (f"attention map {4 * att / 2**30:.1f} GiB > "
                                  f"--max-attention-gb {max_attention_gb}: not run")
                rows.append(row)
                print(f"[{arch} {window}³] {row['skipped']}", file=sys.stderr)
                continue
            flops = count_flops(model, window)
            row.update(flops=flops, flops_per_voxel=flops / window**3,
                       flops_per_voxel_with_overlap=flops / window**3 * OVERLAP_FACTOR)
            del model
            for measure in ("memory", "latency"):
                row.update(_child(config, arch, window, repeats, threads, measure))
            if row.get("measured_attention_elements", att) != att:
                row["note"] = "measured attention map differs from the analytic size"
            rows.append(row)
            print(f"[{arch} {window}³] done", file=sys.stderr)
    ratios = {}
    for window in windows:
        by = {r["arch"]: r for r in rows if r["window"] == window}
        if by.get("rtfsyn", {}).get("attention_bytes"):
            ratios[str(window)] = by["crossattn"]["attention_bytes"] / by["rtfsyn"][
                "attention_bytes"]
    return {
        "config": config,
        "model_config": cfg.to_dict(),
        "windows": windows,
        "batch_size": 1,
        "repeats": repeats,
        "threads": threads,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "overlap_factor": OVERLAP_FACTOR,
        "memory_method": "fresh subprocess per (arch, window), after a 16³ warm-up: peak "
                         "RSS (VmHWM, reset via clear_refs) during one forward minus RSS "
                         "before it",
        "attention_ratio_crossattn_over_rtfsyn": ratios,
        "results": rows,
    }


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"model efficiency — config {report['config']}, batch 1, CPU, "
                        f"{report['threads']} threads")
    cols = ["arch", "window", "params", "GFLOP", "MFLOP/vox", "MFLOP/vox @0.25 ovl",
            "latency (s)", "peak mem (MiB)", "attn map (MiB)"]
    for c in cols:
        table.add_column(c, justify="left" if c == "arch" else "right")
    for r in report["results"]:
        if "skipped" in r and "flops" not in r:
            table.add_row(r["arch"], f"{r['window']}³", f"{r['params'] / 1e6:.3f}M",
                          "-", "-", "-", "skipped", "-", f"{r['attention_bytes'] / 2**20:.1f}")
            continue
        table.add_row(
            r["arch"], f"{r['window']}³", f"{r['params'] / 1e6:.3f}M",
            f"{r['flops'] / 1e9:.1f}", f"{r['flops_per_voxel'] / 1e6:.3f}",
            f"{r['flops_per_voxel_with_overlap'] / 1e6:.3f}",
            f"{r['latency_s']:.2f}" if "latency_s" in r else "failed",
            f"{r['peak_forward_bytes'] / 2**20:.0f}" if "peak_forward_bytes" in r else "-",
            f"{r['attention_bytes'] / 2**20:.2f}" if r["attention_elements"] else "-",
        )
    console = Console(width=max(Console().width, 120))
    console.print(table)
    for w, ratio in report["attention_ratio_crossattn_over_rtfsyn"].items():
        console.print(f"attention map {w}³: crossattn / rtfsyn (packed) = {ratio:.1f}×")
    for r in report["results"]:
        for key in ("skipped", "error", "note"):
            if key in r:
                console.print(f"{r['arch']} {r['window']}³: {r[key]}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="cpu-small", help="bundled model config or YAML path")
    p.add_argument("--windows", type=int, nargs="+", default=[64, 96])
    p.add_argument("--repeats", type=int, default=3, help="timed forward passes (median)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--max-attention-gb", type=float, default=4.0,
                   help="do not run a model whose analytic attention map is larger")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/model_efficiency.json"))
    p.add_argument("--child", nargs=3, metavar=("ARCH", "WINDOW", "MEASURE"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        arch, window, measure = args.child[0], int(args.child[1]), args.child[2]
        print(json.dumps(run_child(args.config, arch, window, args.repeats, args.threads,
                                   measure)))
        return
    report = benchmark(args.config, args.windows, args.repeats, args.max_attention_gb,
                       args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
