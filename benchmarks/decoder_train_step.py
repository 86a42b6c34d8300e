"""The implicit decoder's training pass on a CPU: chunked path against plain autograd.

One forward + backward pass of the ``cpu-small`` model's decoder (random weights, batch 2,
latent 16³ with 48 channels, skip features on the 32³ input grid) on an output grid of
``--sizes`` voxels per axis (32: the input grid, 64: 1 mm targets of 2 mm inputs), three ways:

* ``chunked`` — the default training path: chunks of ``ImplicitDecoder.train_chunk`` (512)
  queries, their hidden activations kept for the backward pass up to
  ``ImplicitDecoder.train_keep_bytes`` (512 MiB) and recomputed beyond it;
* ``recompute`` — the same path with every chunk recomputed (``train_keep_bytes = 0``, the
  path before 2026-11-26's third session);
* ``autograd`` — plain autograd through the slab path (``train_chunk = 0``, before that).

Each (size, path) runs in a fresh subprocess: seconds (best of ``--repeats`` after one
warm-up) and the process's peak RSS. Usage::

    python benchmarks/decoder_train_step.py [--sizes 32 48 64] [--repeats 2] [--threads 1]
        [--out benchmarks/results/decoder_train_step.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import REPO, command_line, machine

DRIVER = r'''
import json, resource, sys, time
import torch
from rtfsyn.models import build_model, load_config
torch.set_num_threads(int(sys.argv[3]))
torch.manual_seed(0)
dec = build_model(load_config("cpu-small")).decoder
dec.train_chunk, dec.train_keep_bytes = (int(v) for v in sys.argv[1].split(":"))
n, repeats = int(sys.argv[2]), int(sys.argv[4])
lat = torch.randn(2, dec.latent_channels, 16, 16, 16, requires_grad=True)
emb = torch.randn(2, dec.embed_dim, requires_grad=True)
skip = torch.randn(2, dec.skip_channels, 32, 32, 32, requires_grad=True)
times = []
for _ in range(repeats + 1):
    t0 = time.perf_counter()
    y = dec.forward_grid(lat, (n, n, n), emb, skip)
    y.square().mean().backward()
    times.append(time.perf_counter() - t0)
    del y
print(json.dumps({"seconds": min(times[1:]), "grad_sum": float(lat.grad.abs().sum()),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "results" / "decoder_train_step.json")
    args = ap.parse_args(argv)
    rows = []
    for n in args.sizes:
        for name, chunk in (("chunked", "512:536870912"), ("recompute", "512:0"),
                            ("autograd", "0:0")):
            proc = subprocess.run(
                [sys.executable, "-c", DRIVER, chunk, str(n), str(args.threads),
                 str(args.repeats)], capture_output=True, text=True, check=False,
                env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})
            if proc.returncode != 0:
                raise SystemExit(f"{name} at {n}³ failed:\n{proc.stderr[-2000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"size": n, "path": name, **res})
            print(f"{n}³ {name:<9} {res['seconds']:7.2f} s  {res['peak_mb']:7.0f} MB", flush=True)
    result = {"command": command_line("decoder_train_step.py", argv), "machine": machine(),
              "threads": args.threads, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print(f"\n{'output':<8} {'chunked s':>10} {'recompute s':>12} {'autograd s':>11} "
          f"{'chunked MB':>11} {'recompute MB':>13} {'autograd MB':>12} {'|Δgrad| rel':>12}")
    for n in args.sizes:
        c, r, a = (next(x for x in rows if x["size"] == n and x["path"] == p)
                   for p in ("chunked", "recompute", "autograd"))
        d = abs(c["grad_sum"] - a["grad_sum"]) / max(a["grad_sum"], 1e-12)
        print(f"{n}³{'':<5} {c['seconds']:>10.2f} {r['seconds']:>12.2f} {a['seconds']:>11.2f} "
              f"{c['peak_mb']:>11.0f} {r['peak_mb']:>13.0f} {a['peak_mb']:>12.0f} {d:>12.1e}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
