"""Intensity levels after the shared 0.5–99.5 percentile normalisation: a diagnostic.

Every real-scan number in this project compares volumes normalised 0.5–99.5 percentile in the
brain (:func:`rtfsyn.preprocess.robust_normalize`). Where a target has a long bright tail (a
glioma's oedema on FLAIR) or its darkest tissue fills the brain's low percentiles (white
matter on a PD-weighted image), that normalisation moves the bulk of the brain, and a model
that gets structure right but the tail wrong loses many dB. Two diagnostics:

* ``--packed DIR`` (training data, no model): per contrast and data source (the participant
  label without its trailing number), the median normalised intensity in each case's brain
  mask, mean ± SD over cases, min and max.
* ``--cases …`` (validation cases; never run it on test cases to choose anything): per case and
  target, the model's PSNR as :mod:`real_scans` scores it, the PSNR of the best affine map
  ``a + b · prediction`` fitted to the real target in the brain (an oracle that uses the
  target: it bounds what fixing the level and contrast scale alone would give, it is not a
  result), and the brain medians of prediction and target; the same for the T1 itself (its
  affine oracle is also that of 1 − T1). ``--no-model``: the T1 rows only.
* ``--demo DIR …`` (folders written by ``rtfsyn demo --out DIR``): the same columns for the
  demo's held-out phantom subject, from the files the demo wrote.

Usage::

    python benchmarks/intensity_level.py --packed benchmarks/work/packed-v3b \\
        [--out benchmarks/results/intensity_level_packed.json]
    python benchmarks/intensity_level.py --cases BraTS-case-preprocessed \\
        openms-long-patient04-study1 --estimated-brain [--model PATH] [--out ...]
    python benchmarks/intensity_level.py --demo /tmp/demo-v1 /tmp/demo-s8b [--out ...]
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import REPO, command_line, machine


def packed_levels(folder: Path) -> dict[str, dict[str, dict[str, float]]]:
    """``{contrast: {source: {n, mean, sd, min, max}}}`` of brain medians of a packed folder."""
    import nibabel as nib

    per: dict[str, dict[str, list[float]]] = {}
    for img in sorted(folder.glob("sub-*/**/anat/*.nii.gz")):
        name = img.name[: -len(".nii.gz")]
        if name.endswith(("_mask", "_dseg")):
            continue
        contrast = "T1Gd" if "_ce-gd_" in name else name.rsplit("_", 1)[1]
        masks = list(img.parent.glob("*_desc-brain_mask.nii.gz"))
        if len(masks) != 1:
            raise SystemExit(f"{img.parent}: expected one brain mask, found {len(masks)}")
        mask = np.asarray(nib.load(masks[0]).dataobj) > 0
        values = np.asarray(nib.load(img).get_fdata(dtype=np.float32))[mask]
        source = re.sub(r"\d+$", "", img.parts[len(folder.parts)][len("sub-"):])
        per.setdefault(contrast, {}).setdefault(source, []).append(float(np.median(values)))
    return {c: {s: {"n": len(v), "mean": round(float(np.mean(v)), 3),
                    "sd": round(float(np.std(v)), 3), "min": round(min(v), 3),
                    "max": round(max(v), 3)} for s, v in sorted(by.items())}
            for c, by in sorted(per.items())}


def level_row(pred: np.ndarray, real: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """PSNR as :func:`real_scans.score` scores it, affine-oracle PSNR, affine map and brain
    medians of one prediction."""
    import real_scans

    from rtfsyn.metrics import all_metrics

    scored, normed = real_scans.score({"pred": pred}, real, mask)
    pred, real = normed["pred"], normed["real"]
    b, a = np.polyfit(pred[mask].astype(np.float64), real[mask].astype(np.float64), 1)
    fitted = np.where(mask, np.clip(a + b * pred, 0.0, 1.0), 0.0).astype(np.float32)
    return {"psnr": round(scored["pred"]["psnr"], 2),
            "ssim": round(scored["pred"]["ssim"], 3),
            "psnr_affine_oracle": round(float(all_metrics(fitted, real, mask)["psnr"]), 2),
            "affine": [round(float(a), 3), round(float(b), 3)],
            "median_pred": round(float(np.median(pred[mask])), 3),
            "median_real": round(float(np.median(real[mask])), 3)}


def through_work_grid(volume: np.ndarray, mask: np.ndarray, factors: tuple[int, ...]
                      ) -> np.ndarray:
    """``volume`` averaged inside ``mask`` over ``factors`` blocks (the work grid of
    :func:`rtfsyn.inference.block_factors`) and trilinearly interpolated back to its grid;
    zero outside the mask."""
    import torch
    import torch.nn.functional as F

    if all(f == 1 for f in factors):
        return np.where(mask, volume, 0.0).astype(np.float32)
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    v = torch.from_numpy(np.where(mask, volume, 0.0).astype(np.float32))[None, None]
    num = F.avg_pool3d(v, factors, factors, ceil_mode=True)
    den = F.avg_pool3d(m, factors, factors, ceil_mode=True)
    coarse = torch.where(den > 0, num / den.clamp_min(1e-6), torch.zeros_like(num))
    back = F.interpolate(coarse, size=volume.shape, mode="trilinear", align_corners=False)
    return np.where(mask, back[0, 0].numpy(), 0.0).astype(np.float32)


def demo_levels(folder: Path) -> list[dict[str, Any]]:
    """:func:`level_row` of every synthesized target of one ``rtfsyn demo`` output folder."""
    from rtfsyn import io
    from rtfsyn.data import load_cases

    case = load_cases(folder / "phantom")[0]
    mask = np.asarray(io.load_nifti(case.mask).dataobj) > 0.5
    rows = []
    for path in sorted((folder / "synthesized").glob(f"{case.subject}_synth-*.nii.gz")):
        target = path.name[len(f"{case.subject}_synth-"): -len(".nii.gz")]
        real = np.asarray(io.load_nifti(case.images[target]).dataobj, dtype=np.float32)
        pred = np.asarray(io.load_nifti(path).dataobj, dtype=np.float32)
        rows.append({"case": f"demo {folder.name}", "target": target, "method": "model",
                     **level_row(pred, real, mask)})
    if not rows:
        raise SystemExit(f"--demo {folder}: no synthesized/*_synth-*.nii.gz (not an rtfsyn "
                         "demo output folder)")
    return rows


def case_levels(name: str, targets: list[str], model: Any, estimated_brain: bool,
                run_model: bool = True) -> list[dict[str, Any]]:
    """Evaluated PSNR / SSIM, affine-oracle PSNR and brain medians of one validation case: the
    T1 itself, the real target through the model's work grid (a resolution bound) and, with
    ``run_model``, the model."""
    import real_scans

    import rtfsyn
    from rtfsyn import io
    from rtfsyn.inference import block_factors

    c = real_scans.load_case(name, estimated_brain=estimated_brain)
    mask = c["mask"]
    mask_img = io.like(mask.astype(np.uint8), c["t1_img"])
    zooms = tuple(float(z) for z in c["t1_img"].header.get_zooms()[:3])
    factors = block_factors(zooms, model.spacing)
    rows = []
    for target in targets:
        if target not in c["data"]:
            continue
        real = c["data"][target]
        rows.append({"case": name, "target": target, "method": "T1 itself",
                     **level_row(c["data"]["T1w"], real, mask)})
        rows.append({"case": name, "target": target,
                     "method": f"target via {'×'.join(map(str, factors))} work grid (bound)",
                     **level_row(through_work_grid(real, mask, factors), real, mask)})
        if run_model:
            img = rtfsyn.synthesize(c["t1_img"], target=target, model=model,
                                    source_contrast="T1w", mask=mask_img, device="cpu")
            rows.append({"case": name, "target": target, "method": "model",
                         **level_row(np.asarray(img.dataobj, dtype=np.float32),
                                     c["data"][target], mask)})
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    part = ap.add_mutually_exclusive_group(required=True)
    part.add_argument("--packed", type=Path, help="a folder written by pack_training_data.py")
    part.add_argument("--cases", nargs="+", help="validation cases (names as real_scans.py)")
    part.add_argument("--demo", type=Path, nargs="+", help="rtfsyn demo output folders")
    ap.add_argument("--targets", nargs="+", default=["T2w", "FLAIR", "T1Gd"])
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--no-model", action="store_true", help="--cases: the T1 rows only")
    ap.add_argument("--estimated-brain", action="store_true",
                    help="score unstripped heads inside their estimated brain mask")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"command": command_line("intensity_level.py", argv),
                           "machine": machine()}
    md: list[str] = [f"`{out['command']}` on {out['machine']}", ""]
    if args.packed is not None:
        if not args.packed.is_dir():
            raise SystemExit(f"--packed {args.packed}: no such folder")
        out["levels"] = levels = packed_levels(args.packed)
        md += ["Median normalised intensity in each case's brain mask, mean ± SD over cases "
               "[min, max]:", "", "| contrast | source | cases | median |", "|---|---|---|---|"]
        md += [f"| {c} | {s} | {v['n']} | {v['mean']:.2f} ± {v['sd']:.2f} "
               f"[{v['min']:.2f}, {v['max']:.2f}] |"
               for c, by in levels.items() for s, v in by.items()]
        default = REPO / "benchmarks" / "results" / "intensity_level_packed.json"
    else:
        if args.demo:
            out["rows"] = rows = [r for folder in args.demo for r in demo_levels(folder)]
        else:
            from rtfsyn.inference import load_model

            model = load_model(args.model, "cpu")
            out["model"] = {"path": str(model.info.path), "step": model.info.step,
                            "spacing": model.spacing, "run": not args.no_model}
            out["rows"] = rows = [r for name in args.cases
                                  for r in case_levels(name, args.targets, model,
                                                       args.estimated_brain,
                                                       run_model=not args.no_model)]
        md += ["PSNR dB / SSIM in the brain as real_scans.py scores them, and the PSNR after the "
               "best affine map of the prediction onto the real target (an oracle: it uses the "
               "target); brain medians after normalisation. The work-grid row is the real "
               "target averaged over the model's inference blocks and trilinearly "
               "interpolated back: a bound that uses the target.", "",
               "| case | target | method | PSNR / SSIM | PSNR, affine oracle | median pred | "
               "median real |",
               "|---|---|---|---|---|---|---|"]
        md += [f"| {r['case']} | {r['target']} | {r['method']} | {r['psnr']:.2f} / "
               f"{r['ssim']:.3f} | {r['psnr_affine_oracle']:.2f} | {r['median_pred']:.2f} | "
               f"{r['median_real']:.2f} |" for r in rows]
        default = REPO / "benchmarks" / "results" / "intensity_level.json"
    out["seconds"] = round(time.perf_counter() - t0, 1)
    from real_scans import _write

    _write(args.out or default, out, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
