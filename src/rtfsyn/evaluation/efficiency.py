"""Efficiency numbers: FLOPs per window, and latency / peak memory of a whole-volume synthesis.

Peak memory is measured in a fresh subprocess (``python -m rtfsyn.evaluation.efficiency``)
so that each model's figure is its own: the peak resident set size of that process on CPU
(``VmHWM`` from ``/proc/self/status``, which starts afresh at ``exec``; ``ru_maxrss`` where
there is no ``/proc``, which on Linux would carry over the parent's peak), and
``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["measure_models", "measure_volume", "window_flops"]


def window_flops(model: torch.nn.Module, window: int, device: str | torch.device = "cpu") -> int:
    """Total FLOPs of one forward pass on a ``window³`` patch (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    from rtfsyn.metadata import Metadata

    x = torch.rand(1, 1, window, window, window, device=device)
    src = [Metadata(contrast="T1w", voxel_size=(1.0, 1.0, 1.0))]
    tgt = [Metadata(contrast="T2w", voxel_size=(1.0, 1.0, 1.0))]
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, src, tgt, out_shape=(window,) * 3)
    return int(counter.get_total_flops())


def measure_volume(
    model: str | Path, shape: Sequence[int] = (240, 240, 155), device: str = "cpu",
    timeout: float = 1800.0,
) -> dict[str, Any]:
    """Synthesize a synthetic head volume of ``shape`` in a subprocess; seconds and peak MB."""
    cmd = [sys.executable, "-m", "rtfsyn.evaluation.efficiency", "--model", str(model),
           "--device", device, "--shape", *map(str, shape)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        raise RuntimeError(f"efficiency probe failed for {model}: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_models(result: Any, shape: Sequence[int] = (240, 240, 155), device: str = "cpu",
                   warn: Any = print) -> dict[str, dict[str, Any]]:
    """Fill ``result.efficiency`` (an :class:`EvalResult`) for each of its models.

    Per model: GFLOPs of one sliding window, and seconds / peak MB to synthesize a
    ``shape`` head volume (fresh subprocess per model). A failed probe is reported through
    ``warn`` and leaves that model's FLOPs in place, so the evaluation is never lost.
    """
    from rtfsyn.inference import load_model

    for name, info in result.models.items():
        lm = load_model(info["path"], "cpu")
        eff: dict[str, Any] = {"window": lm.window,
                               "gflops": window_flops(lm.model, lm.window) / 1e9}
        try:
            eff.update(measure_volume(info["path"], shape, device=device))
        except Exception as exc:  # report, do not lose the evaluation
            warn(f"memory probe failed for {name}: {exc}")
        result.efficiency[name] = eff
    return result.efficiency


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (see the module docstring)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def head_phantom(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """An ellipsoidal 'head' with smooth texture (only its size matters for timing)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    grids = np.ogrid[tuple(slice(-1, 1, complex(0, s)) for s in shape)]
    r2 = sum((g.astype(np.float32) / a) ** 2
             for g, a in zip(grids, (0.75, 0.85, 0.8), strict=True))
    tex = ndimage.gaussian_filter(rng.random(tuple(shape), dtype=np.float32), 3)
    return np.where(r2 <= 1, 300 + 2000 * tex, 0).astype(np.float32)


def _probe(args: argparse.Namespace) -> dict[str, Any]:
    import nibabel as nib

    from rtfsyn.device import resolve_device
    from rtfsyn.inference import load_model, synthesize_image

    dev = resolve_device(args.device)
    lm = load_model(args.model, dev)
    img = nib.Nifti1Image(head_phantom(args.shape), np.eye(4))
    base_mb = peak_rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    synthesize_image(img, "T2w", model=lm, source_contrast="T1w")
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "shape": list(args.shape), "device": str(dev),
           "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_mb"] = peak_rss_mb()
        out["model_loaded_mb"] = base_mb
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    print(json.dumps(_probe(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
