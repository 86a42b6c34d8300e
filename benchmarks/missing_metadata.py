"""Does a contrast-only request cost quality? Bundled model, real BraTS cases, T1w → T2w / FLAIR.

For each case in ``../shared/data/real/BraTS-*`` and each target, synthesizes with the bundled
model (``rtfsyn.inference.synthesize_image``, the path users get) under these conditions:

* ``null`` (**before**): contrast only, missing fields left to the model's learned null tokens
  (``protocol="none"``; what every contrast-only request did before ``rtfsyn.protocols``);
* ``typical``: the typical protocol of :mod:`rtfsyn.protocols` spelled out as ``--meta``
  (``TR=5000,TE=100,FA=90,field=3,sequence=TSE`` for T2w);
* ``auto`` (**after**): contrast only with today's default, i.e. the missing fields filled
  from the table (voxel-identical to ``typical``: the script checks it when both run, and
  records for every case whether the target metadata the model gets is the same);
* ``partial`` (optional): the issue's ``TR=5000,TE=100,field=3`` with nothing filled.

PSNR (dB) inside the brain (non-zero in both source and target) of the output *as written*
against the real target normalised as in ``rtfsyn evaluate`` (0.5–99.5 percentile → [0, 1]),
and of the output re-normalised the same way (what ``rtfsyn evaluate`` reports). Writes
``benchmarks/results/missing_metadata.json`` and prints a table.

    python benchmarks/missing_metadata.py                     # all BraTS cases, T2w + FLAIR
    python benchmarks/missing_metadata.py --cases BraTS-GLI-00000-000 --conditions null,auto
    python benchmarks/missing_metadata.py --spacing 2 --resume  # 2 mm output, add to the JSON

The "after − before" column is auto (or typical, which is the same request) minus null.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REAL, REPO, command_line, machine

from rtfsyn import io
from rtfsyn.inference import complete_target_metadata, load_model, synthesize_image
from rtfsyn.metadata import Metadata
from rtfsyn.metrics import mae, psnr
from rtfsyn.preprocess import brain_mask, robust_normalize
from rtfsyn.protocols import typical_protocol

SUFFIX = {"T1w": "t1n", "T2w": "t2w", "FLAIR": "t2f"}
OUT = REPO / "benchmarks" / "results" / "missing_metadata.json"


def _file(case: Path, contrast: str) -> Path:
    hits = sorted(case.glob(f"*{SUFFIX[contrast]}.nii.gz"))
    if not hits:
        raise SystemExit(f"{case} has no {SUFFIX[contrast]}.nii.gz")
    return hits[0]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="", help="comma-separated BraTS folder names "
                    "(default: every ../shared/data/real/BraTS-*)")
    ap.add_argument("--targets", default="T2w,FLAIR")
    ap.add_argument("--conditions", default="null,typical,auto",
                    help="any of null, typical, auto, partial")
    ap.add_argument("--out", type=Path, default=OUT, help=f"JSON result (default {OUT})")
    ap.add_argument("--spacing", type=float, default=None,
                    help="output voxel size in mm (default: the input's 1 mm grid); the real "
                    "target is resampled onto the output grid")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows already in --out and skip those runs")
    args = ap.parse_args(argv)
    names = [c for c in args.cases.split(",") if c]
    cases = ([REAL / n for n in names] if names else sorted(REAL.glob("BraTS-*")))
    targets = [t for t in args.targets.split(",") if t]
    conditions = [c for c in args.conditions.split(",") if c]
    lm = load_model(None, "cpu")
    trained = set((lm.info.info or {}).get("train_cases", []))
    rows: list[dict] = []
    commands = [command_line("missing_metadata.py", argv)]
    if args.resume and args.out.exists():
        previous = json.loads(args.out.read_text())
        rows = previous["rows"]
        commands = [*previous.get("commands", [previous["command"]]), *commands]
    done = {(r["case"], r["target"], r["condition"]) for r in rows}
    t_start = time.perf_counter()
    for case in cases:
        src_path = _file(case, "T1w")
        src_img = io.load_nifti(src_path)
        seen = any(case.name in k for k in trained)
        for target in targets:
            real_img = io.load_nifti(_file(case, target))
            mask, real_norm = _on_grid(src_img, real_img, src_img)
            proto = typical_protocol(target)
            meta = {"null": (None, "none"), "typical": (proto.meta_string(), "none"),
                    "auto": (None, None), "partial": ("TR=5000,TE=100,field=3", "none")}
            outputs: dict[str, np.ndarray] = {}
            for cond in conditions:
                if cond == "partial" and target != "T2w":
                    continue  # the TR=5000,TE=100,field=3 is a T2w protocol
                if (case.name, target, cond) in done:
                    continue
                metadata, protocol = meta[cond]
                t0 = time.perf_counter()
                res = synthesize_image(src_path, target, metadata, model=lm,
                                       source_contrast="T1w", protocol=protocol,
                                       spacing=args.spacing)
                secs = time.perf_counter() - t0
                if args.spacing is not None:
                    mask, real_norm = _on_grid(src_img, real_img, res.image)
                pred = np.asarray(res.image.dataobj, np.float32)
                outputs[cond] = pred
                pred_norm, _ = robust_normalize(pred, mask)
                row = {
                    "case": case.name, "trained_on": seen, "target": target,
                    "condition": cond, "protocol": proto.name if cond != "null" else None,
                    "prompt": res.provenance["prompt"],
                    "assumed": res.provenance["assumed_metadata"]["fields"],
                    "psnr_as_written": psnr(pred, real_norm, mask),
                    "psnr_renormalised": psnr(pred_norm, real_norm, mask),
                    "mae_as_written": mae(pred, real_norm, mask),
                    "seconds": round(secs, 1), "spacing_mm": args.spacing or 1.0,
                    "target_metadata": res.provenance["target_metadata"],
                }
                rows.append(row)
                _write(args.out, rows, commands, lm, t_start)
                print(f"{case.name:24s} {target:5s} {cond:8s} {row['psnr_as_written']:6.2f} "
                      f"{row['psnr_renormalised']:6.2f} dB ({secs:.0f} s)", flush=True)
            if "auto" in outputs and "typical" in outputs:
                same = bool(np.array_equal(outputs["auto"], outputs["typical"]))
                for r in rows[-len(outputs):]:
                    r["auto_identical_to_typical"] = same
            # what the default (auto) request gives the model, without running it again:
            # the same target metadata as the spelled-out typical protocol => the same output
            auto_meta = complete_target_metadata(
                Metadata.from_dict({"contrast": target}),
                Metadata.from_dict({"contrast": "T1w"})).metadata
            typ_meta = complete_target_metadata(
                Metadata.from_string(f"contrast={target},{proto.meta_string()}")).metadata
            for r in rows:
                if r["case"] == case.name and r["target"] == target:
                    r["auto_metadata_equals_typical"] = auto_meta == typ_meta
    result = _write(args.out, rows, commands, lm, t_start)
    text = table(result)
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)
    return result


def _on_grid(src_img, real_img, grid_img) -> tuple[np.ndarray, np.ndarray]:
    """Brain mask (non-zero in source and target) and the normalised real target on a grid."""
    def on(img):
        if io.same_grid(img, grid_img):
            return np.asarray(img.dataobj, np.float32)
        return np.asarray(io.resample_to_reference(img, grid_img).dataobj, np.float32)

    src, real = on(src_img), on(real_img)
    mask = brain_mask(src) & brain_mask(real)
    real_norm, _ = robust_normalize(real, mask)
    return mask, real_norm


def _write(out: Path, rows: list[dict], commands: list[str], lm, t_start: float) -> dict:
    """Write the result so far (after every row: a long run leaves usable partial results)."""
    result = {
        "command": commands[-1],
        "commands": commands,  # every run whose rows are in the file (--resume)
        "machine": machine(),
        "model": {"name": lm.name, "step": lm.info.step},
        "seconds": round(time.perf_counter() - t_start, 1),
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(result: dict) -> str:
    """Markdown table: one line per case × target, PSNR as written (re-normalised)."""
    rows = result["rows"]
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    head = ("| case | seen in training | target | " + " | ".join(conds)
            + " | after − before (dB) |")
    lines = [head, "|" + "---|" * (4 + len(conds))]
    keys = list(dict.fromkeys((r["case"], r["target"]) for r in rows))
    for case, target in keys:
        by = {r["condition"]: r for r in rows if r["case"] == case and r["target"] == target}
        cells = [f"{by[c]['psnr_as_written']:.2f} ({by[c]['psnr_renormalised']:.2f})"
                 if c in by else "-" for c in conds]
        after = by.get("auto") or by.get("typical")  # auto gives the model typical's input
        diff = (f"{after['psnr_as_written'] - by['null']['psnr_as_written']:+.2f}"
                if after is not None and "null" in by else "-")
        seen = "yes" if by[conds[0]]["trained_on"] else "no"
        lines.append(f"| {case} | {seen} | {target} | " + " | ".join(cells) + f" | {diff} |")
    cmds = "; ".join(f"`{c}`" for c in result.get("commands", [result["command"]]))
    lines.append(f"\nPSNR dB in the brain, output as written (re-normalised); "
                 f"{result['machine']}; {cmds}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
