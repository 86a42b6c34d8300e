"""Bundle a chosen candidate as rtfsyn-default (RECIPE.md "Stage 12", "Stage 13"): its weights
and config, with a model card naming every stage. From the repository root:
``python benchmarks/gpu/bundle_stage12.py`` (12a, as bundled in stage 12) or
``python benchmarks/gpu/bundle_stage12.py --stage 13a`` (the stage-13 winner)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rtfsyn.checkpoint import load_checkpoint, save_checkpoint
from rtfsyn.inference import default_model_path

CANDIDATES = Path("benchmarks/results/candidates")
#: every stage of the bundled line, in order; a stage's candidate file and its card label
STAGES = [("v1", None, "v1 (2 200 CPU steps, phantom + 3 BraTS + MNI152)"),
          ("7b", None, "7b (2 888 x 32, GPU)"), ("8b", None, "8b (3 606 x 4)"),
          ("9c", None, "9c (3 554 x 4)"), ("10a", None, "10a (3 902 x 4)"),
          ("11g", None, "11g (3 123 x 32, GPU)"), ("11h", None, "11h (2 605 x 32, GPU)"),
          ("12a", "v1cont-cpu-stage12a.safetensors", "12a (3 439 x 4, sorted-intensity L1)"),
          ("13a", "v1cont-cpu-stage13a.safetensors",
           "13a (3 675 x 4, sorted-intensity L1, packed-v5)")]


def bundle(stage: str) -> Path:
    """Write the candidate of ``stage`` (and the card of every stage up to it) as the default
    model, atomically."""
    names = [s for s, _, _ in STAGES]
    if stage not in names or STAGES[names.index(stage)][1] is None:
        raise SystemExit(f"--stage {stage}: bundle one of "
                         f"{[s for s, f, _ in STAGES if f is not None]}")
    upto = STAGES[: names.index(stage) + 1]
    weights, info = load_checkpoint(CANDIDATES / str(upto[-1][1]))
    card = {"summary": "cpu-small, the v1 phantom model continued on real cases, real-anatomy "
            f"simulations and phantoms (stages 7b-{stage}, MODEL_CARD.md); not for clinical use",
            "stages": [label for _, _, label in upto], "model_card": "MODEL_CARD.md"}
    return save_checkpoint(default_model_path(), weights, info.config, step=info.step,
                           info={**info.info, "card": card})  # atomic: temporary file, rename


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", default="12a")
    print("bundled", bundle(ap.parse_args().stage))
