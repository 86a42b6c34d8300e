"""Bundle candidate 12a as rtfsyn-default (RECIPE.md "Stage 12"): its weights and config, with a
model card naming every stage. From the repository root: python benchmarks/gpu/bundle_stage12.py"""

from __future__ import annotations

from pathlib import Path

from rtfsyn.checkpoint import load_checkpoint, save_checkpoint
from rtfsyn.inference import default_model_path

src = Path("benchmarks/results/candidates/v1cont-cpu-stage12a.safetensors")
weights, info = load_checkpoint(src)
stages = ["v1 (2 200 CPU steps, phantom + 3 BraTS + MNI152)", "7b (2 888 x 32, GPU)",
          "8b (3 606 x 4)", "9c (3 554 x 4)", "10a (3 902 x 4)", "11g (3 123 x 32, GPU)",
          "11h (2 605 x 32, GPU)", "12a (3 439 x 4, sorted-intensity L1)"]
card = {"summary": "cpu-small, the v1 phantom model continued on real cases, real-anatomy "
        "simulations and phantoms (stages 7b-12a, MODEL_CARD.md); not for clinical use",
        "stages": stages, "model_card": "MODEL_CARD.md"}
dest = save_checkpoint(default_model_path(), weights, info.config, step=info.step,
                       info={**info.info, "card": card})  # atomic: temporary file, rename
print("bundled", dest)
