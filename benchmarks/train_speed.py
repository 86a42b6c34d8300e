"""Training speed on ``train-cpu``: the baseline commit against the current tree, one run.

Both trees train the same ``train-cpu`` recipe (random output grids off where that option
exists) for ``--steps`` steps on the same small phantom cohort with the same seed, each in a
fresh subprocess with ``PYTHONPATH`` pointing at that tree (the baseline is extracted with
``git archive``). Every step's loss and the time at which it was computed are recorded
(by wrapping the trainer's loss function); steps/s are taken between the first and the last
recorded step (the first step's one-off costs excluded). Runs alternate baseline / current
``--repeats`` times and the best steps/s of each is reported, with the largest loss
difference between the two trees (identical recipe and seed: only float rounding differs).

``--out-grids`` keeps ``train-cpu``'s random output grids on (both trees must have them).
``--baseline autograd`` compares this tree against itself with the decoder's plain-autograd
training path (``ImplicitDecoder.train_chunk = 0``, what training used before the chunked
path). Losses agree to float rounding only when both trees condition the model the same way
(845de79 predates the sequence-family fix and the filled target metadata; the commit this
session started from, 4680bc3, does not).

Absolute steps/s depend on the machine and its load (the 2-core VM is shared); the ratio
measured in one run is what to compare.

Usage::

    python benchmarks/train_speed.py [--baseline 845de79 | COMMIT | autograd] [--out-grids]
        [--steps 20] [--repeats 2]
        [--threads N] [--out benchmarks/results/train_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import REPO, command_line, machine

DRIVER = r'''
import json, sys, time
import torch
import rtfsyn.training.trainer as tr
from rtfsyn.training.config import TrainConfig, load_train_config

data, out, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
out_grids, train_chunk = sys.argv[5] == "1", sys.argv[6]
if train_chunk:  # the decoder's CPU training path: 0 = plain autograd
    from rtfsyn.models.implicit_decoder import ImplicitDecoder
    ImplicitDecoder.train_chunk = int(train_chunk)
if threads > 0:
    torch.set_num_threads(threads)
losses, stamps = [], []
orig = tr.synthesis_loss

def wrapped(*args, **kwargs):
    res = orig(*args, **kwargs)
    losses.append(float(res[1]["loss"]))
    stamps.append(time.perf_counter())
    return res

tr.synthesis_loss = wrapped
update = dict(max_steps=steps, val_every=10**6, log_every=10**6, ckpt_every=10**6,
              val_cases=0, warmup_steps=5)
if not out_grids and "out_grids" in TrainConfig.model_fields:
    update["out_grids"] = False  # the baseline commit had no random output grids
cfg = load_train_config("train-cpu").model_copy(update=update)
tr.train([data], cfg, out, progress=False, device="cpu")
n = len(stamps)
print(json.dumps({"losses": losses, "steps_per_s": (n - 1) / (stamps[-1] - stamps[0]),
                  "threads": torch.get_num_threads()}))
'''


def run_tree(tree: Path, data: Path, out: Path, steps: int, threads: int,
             out_grids: bool = False, train_chunk: str = "") -> dict[str, Any]:
    """Train ``steps`` steps with the rtfsyn in ``tree/src``; losses and steps/s."""
    driver = out.parent / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    if threads > 0:  # the trainer sets its own thread count unless OMP_NUM_THREADS is set
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, str(driver), str(data), str(out), str(steps),
                           str(threads), "1" if out_grids else "0", train_chunk],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"training in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default="845de79",
                    help="git commit to compare against, or 'autograd': this tree with the "
                         "decoder's plain-autograd training path (ImplicitDecoder.train_chunk "
                         "= 0)")
    ap.add_argument("--out-grids", action="store_true",
                    help="keep train-cpu's random output grids on (both trees must have them)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: rtfsyn's default)")
    ap.add_argument("--subjects", type=int, default=4, help="phantom subjects to train on")
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "results" / "train_speed.json")
    args = ap.parse_args(argv)

    from rtfsyn.phantom.cohort import make_cohort

    with tempfile.TemporaryDirectory(prefix="rtfsyn-train-speed-") as tmp:
        root = Path(tmp)
        autograd = args.baseline == "autograd"
        base = REPO if autograd else root / "baseline"
        if not autograd:
            base.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline, "src"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        data = root / "phantom"
        make_cohort(data, n_subjects=args.subjects, n_sites=2, spacing=2.0, seed=0,
                    progress=False)
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "current": []}
        for r in range(args.repeats):
            for name, tree in (("baseline", base), ("current", REPO)):
                chunk = "0" if autograd and name == "baseline" else ""
                res = run_tree(tree, data, root / f"{name}{r}", args.steps, args.threads,
                               out_grids=args.out_grids, train_chunk=chunk)
                runs[name].append(res)
                print(f"{name:<9} run {r}: {res['steps_per_s']:.3f} steps/s "
                      f"({res['threads']} threads)", flush=True)
    best = {k: max(x["steps_per_s"] for x in v) for k, v in runs.items()}
    lb, lc = runs["baseline"][0]["losses"], runs["current"][0]["losses"]
    diff = max(abs(a - b) for a, b in zip(lb, lc, strict=True))
    rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(lb, lc, strict=True))
    result = {
        "command": command_line("train_speed.py", argv), "machine": machine(),
        "baseline": args.baseline, "steps": args.steps, "config": "train-cpu",
        "out_grids": args.out_grids,
        "steps_per_s": best, "ratio": best["current"] / best["baseline"],
        "loss_max_abs_diff": diff, "loss_max_rel_diff": rel,
        "losses": {"baseline": lb, "current": lc}, "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=1))
    tmp_out.replace(args.out)
    print(f"{'tree':<10} {'steps/s':>8}")
    for k, v in best.items():
        print(f"{k:<10} {v:>8.3f}")
    print(f"ratio current/baseline {result['ratio']:.2f}×; losses of the {args.steps} steps: "
          f"max abs diff {diff:.2e} (rel {rel:.2e})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
