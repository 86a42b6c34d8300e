"""The training-free physics prior (``rtfsyn.prior``) alone on real scans, against the T1 itself
and 1 − T1, plus a metadata sweep (does the prior move in the physical direction?).

Cases (none needs training; the prior has no trained parameter): BraTS-GLI-00000-000 (t1n →
t2w, t2f, t1c) and the open-ms cross-sectional patients 07 and 19 (T1 → T2, FLAIR, T1POST;
MNI space, LAS). Metadata are the contrast names only (the sources give no acquisition
parameters), so the prior uses its typical protocols at 3 T. Both volumes normalised
0.5–99.5 percentile in the mask (the prior with its own ``--normalise``); PSNR / SSIM / MAE
inside the mask = non-zero region of source and target (``rtfsyn.metrics``).

    python benchmarks/physics_prior.py            # JSON in benchmarks/results/physics_prior.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REAL, REPO, command_line, machine

from rtfsyn.metadata import Metadata
from rtfsyn.metrics import all_metrics
from rtfsyn.preprocess import bounding_box, brain_mask, robust_normalize
from rtfsyn.prior import physics_prior, tissue_posteriors

OPENMS_SUFFIX = "_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"


def cases(real: Path) -> list[tuple[str, Path, dict[str, Path]]]:
    """(case name, T1 path, {target contrast: path}) for the cases that exist under ``real``."""
    out = []
    b = real / "BraTS-GLI-00000-000"
    if b.is_dir():
        out.append((b.name, b / f"{b.name}-t1n.nii.gz",
                    {"T2w": b / f"{b.name}-t2w.nii.gz", "FLAIR": b / f"{b.name}-t2f.nii.gz",
                     "T1Gd": b / f"{b.name}-t1c.nii.gz"}))
    for pid in ("patient07", "patient19"):
        d = real / "open-ms-cross-sectional" / pid
        if d.is_dir():
            out.append((f"open-ms-{pid}", d / f"T1{OPENMS_SUFFIX}",
                        {"T2w": d / f"T2{OPENMS_SUFFIX}", "FLAIR": d / f"FLAIR{OPENMS_SUFFIX}",
                         "T1Gd": d / f"T1POST{OPENMS_SUFFIX}"}))
    return out


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))


def csf_wm_ratio(image: np.ndarray, post: np.ndarray) -> float:
    """Mean of ``image`` in pure CSF over pure WM (posterior > 0.9 of the source)."""
    csf, wm = post[0] > 0.9, post[2] > 0.9
    return float(image[csf].mean() / max(image[wm].mean(), 1e-6))


def run(real: Path, method: str, normalise: str, sweep: bool, rows_wanted: bool = True) -> dict:
    rows: list[dict] = []
    sweeps: dict[str, list[dict]] = {}
    t1_meta = Metadata.from_dict({"contrast": "T1w"})
    for name, t1_path, targets in cases(real):
        t1_full = _load(t1_path)
        for contrast, path in targets.items():
            if not rows_wanted or not path.exists():
                continue
            tgt_full = _load(path)
            mask_full = brain_mask(t1_full) & brain_mask(tgt_full)
            box = bounding_box(mask_full, margin=8)  # SSIM windows fit: crop is exact
            t1, tgt, mask = t1_full[box], tgt_full[box], mask_full[box]
            t1n = robust_normalize(t1, mask)[0]
            real_n = robust_normalize(tgt, mask)[0]
            inv = np.where(mask, 1.0 - t1n, 0.0).astype(np.float32)
            t0 = time.perf_counter()
            prior = physics_prior(t1, mask, t1_meta, Metadata.from_dict({"contrast": contrast}),
                                  method=method, normalise=normalise)  # type: ignore[arg-type]
            seconds = time.perf_counter() - t0
            for label, pred in (("T1 itself", t1n), ("1 - T1", inv), ("physics prior", prior)):
                m = all_metrics(pred, real_n, mask)
                rows.append({"case": name, "target": contrast, "method": label,
                             **{k: round(v, 4) for k, v in m.items()}})
            rows[-1]["prior_seconds"] = round(seconds, 2)
            print(f"{name} {contrast}: " + ", ".join(
                f"{r['method']} {r['psnr']:.2f}/{r['ssim']:.3f}" for r in rows[-3:]), flush=True)
        if sweep and not sweeps:  # the metadata sweep on the first case
            box = bounding_box(brain_mask(t1_full), margin=2)
            t1, mask = t1_full[box], brain_mask(t1_full)[box]
            post = tissue_posteriors(t1, mask, t1_meta, method=method)  # type: ignore[arg-type]
            sweeps["case"] = name  # type: ignore[assignment]
            sweeps["T2w TE (ms)"] = [
                {"TE": te, "csf_wm": round(csf_wm_ratio(physics_prior(
                    t1, mask, t1_meta, Metadata.from_string(f"contrast=T2w,TE={te}"),
                    method=method, normalise=normalise), post), 3)}  # type: ignore[arg-type]
                for te in (60, 80, 100, 120)]
            sweeps["FLAIR TI (ms), TR 9000 ms"] = [
                {"TI": ti, "csf_wm": round(csf_wm_ratio(physics_prior(
                    t1, mask, t1_meta, Metadata.from_string(f"contrast=FLAIR,TR=9000,TI={ti}"),
                    method=method, normalise=normalise), post), 3)}  # type: ignore[arg-type]
                for ti in (2000, 2200, 2400, 2600, 2800)]
    return {"rows": rows, "sweep": sweeps}


def table(rows: list[dict]) -> str:
    lines = ["| case | target | T1 itself | 1 − T1 | physics prior |", "|---|---|---|---|---|"]
    keys = sorted({(r["case"], r["target"]) for r in rows},
                  key=lambda k: [(r["case"], r["target"]) for r in rows].index(k))
    for case, target in keys:
        cell = {r["method"]: f"{r['psnr']:.2f} / {r['ssim']:.3f}" for r in rows
                if r["case"] == case and r["target"] == target}
        lines.append(f"| {case} | {target} | {cell['T1 itself']} | {cell['1 - T1']} | "
                     f"{cell['physics prior']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=REAL)
    ap.add_argument("--method", default="pv", choices=["pv", "gmm"])
    ap.add_argument("--normalise", default="matched",
                    choices=["matched", "physical", "percentile"])
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--sweep-only", action="store_true",
                    help="Only the metadata sweep (JSON: physics_prior_sweep_<normalise>.json).")
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "results" / "physics_prior.json")
    args = ap.parse_args(argv)
    if not cases(args.real):
        print(f"no real cases under {args.real}", file=sys.stderr)
        return 2
    t0 = time.time()
    if args.sweep_only and args.out.name == "physics_prior.json":
        args.out = args.out.with_name(f"physics_prior_sweep_{args.normalise}.json")
    result = run(args.real, args.method, args.normalise, not args.no_sweep,
                 rows_wanted=not args.sweep_only)
    result.update({"command": command_line("physics_prior.py", argv), "machine": machine(),
                   "method": args.method, "normalise": args.normalise,
                   "seconds": round(time.time() - t0, 1),
                   "metric": "PSNR dB / SSIM inside the mask, both normalised 0.5-99.5 pct"})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    if result["rows"]:
        print(table(result["rows"]))
    for key, values in result["sweep"].items():
        if key != "case":
            print(f"{result['sweep']['case']} {key}: " + ", ".join(
                f"{next(iter(v.values()))}: {v['csf_wm']}" for v in values))
    print(f"wrote {args.out} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
