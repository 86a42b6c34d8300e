"""bf16 autocast on CPU: speed and PSNR change against float32 on a phantom subject.

Simulates one phantom subject (SiteA, a seed no model trained on) at 2 mm, synthesizes
T2w from T1w with the bundled model in float32 and in bf16 autocast
(:func:`rtfsyn.inference.predict_volume` ``precision``), each timed in the same process
(alternating, best of ``--repeats``), and scores both against the simulated T2w in the
brain mask. ``--crop`` keeps the central part of the head (fewer windows, same per-window
work). Usage::

    python benchmarks/bf16_cpu.py [--crop 64 64 48] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from _common import REPO, command_line, machine


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crop", type=int, nargs=3, default=[64, 64, 48])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=__import__("pathlib").Path,
                    default=REPO / "benchmarks" / "results" / "bf16_cpu.json")
    args = ap.parse_args(argv)

    from rtfsyn.inference import load_model, predict_volume
    from rtfsyn.metadata import Metadata
    from rtfsyn.metrics import psnr
    from rtfsyn.phantom.cohort import sample_subject, simulate_subject
    from rtfsyn.phantom.scanner import get_sites
    from rtfsyn.preprocess import robust_normalize

    site = get_sites(1)[0]
    sim = simulate_subject(sample_subject(1234, 0, site), spacing=2.0)
    mask = sim.mask > 0
    c = [s // 2 for s in mask.shape]
    box = tuple(slice(max(0, m - n // 2), max(0, m - n // 2) + n)
                for m, n in zip(c, args.crop, strict=True))
    src, _ = robust_normalize(sim.images["T1w"][box], mask[box])
    ref, _ = robust_normalize(sim.images["T2w"][box], mask[box])
    lm = load_model(None, "cpu")
    sm = Metadata(contrast="T1w", voxel_size=(2.0, 2.0, 2.0))
    tm = Metadata(contrast="T2w", voxel_size=(2.0, 2.0, 2.0))
    times: dict[str, float] = {}
    outs: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for prec in ("fp32", "bf16"):
            t0 = time.perf_counter()
            outs[prec] = predict_volume(lm, src, sm, tm, precision=prec)
            times[prec] = min(times.get(prec, np.inf), time.perf_counter() - t0)
    m = mask[box]
    scores = {p: float(psnr(outs[p] * m, ref * m, m)) for p in outs}
    result = {"command": command_line("bf16_cpu.py", argv), "machine": machine(),
              "seconds": times, "psnr_db": scores,
              "psnr_change_db": scores["bf16"] - scores["fp32"],
              "speedup": times["fp32"] / times["bf16"],
              "max_abs_diff": float(np.abs(outs["bf16"] - outs["fp32"]).max())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
