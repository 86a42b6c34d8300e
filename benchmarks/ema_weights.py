"""The EMA weights of a run that ``--max-minutes`` stopped before rtfsyn wrote them.

Before 2026-11-26 (fourth session) a run stopped by its time budget wrote only
``checkpoints/last.safetensors`` (the raw weights) and kept the EMA in ``last.state.pt``;
the trainer now writes ``final.safetensors`` (EMA) in that case too. This writes, for such a
run, the checkpoint the trainer writes now: the EMA weights with ``last.safetensors``'s
config, step and info, atomically, to ``checkpoints/final.safetensors`` (refused if present).

    python benchmarks/ema_weights.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rtfsyn.checkpoint import load_checkpoint, load_training_state, save_checkpoint


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args(argv)
    for run in args.runs:
        ckpt = run / "checkpoints"
        out = ckpt / "final.safetensors"
        if out.exists():
            raise SystemExit(f"{out} exists: nothing to do (it is not overwritten)")
        weights, info = load_checkpoint(ckpt / "last.safetensors")
        ema = load_training_state(ckpt / "last.state.pt").get("ema")
        if ema is None:
            raise SystemExit(f"{ckpt / 'last.state.pt'} holds no EMA: the run had ema_decay off")
        if ema.keys() != weights.keys():
            raise SystemExit(f"{run}: the EMA and the weights name different tensors")
        save_checkpoint(out, ema, info.config, step=info.step, info=info.info)
        print(f"wrote {out} (EMA at step {info.step})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
