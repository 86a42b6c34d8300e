"""Pathology of the real-anatomy simulation: a diagnostic of ``rtfsyn simulate``'s input and output.

* ``--real DIR …`` (co-registered real cases, any layout :func:`rtfsyn.data.load_cases` reads):
  the brain fraction of each pathology class (lesion, necrosis, enhancing) in the anatomy
  :func:`rtfsyn.phantom.realsim.real_anatomy` derives, at ``--spacing``, and the median of
  its lesion class over the median of its white matter on the case's T1w, T2w and FLAIR
  (voxels with a lesion fraction > 0.5 and a WM fraction > 0.8). Cases that are not
  co-registered (no anatomy) are listed as such.
* ``--simulated DIR`` (a folder written by ``rtfsyn simulate``): per subject, the voxel count of
  each pathology class in its label map and the median FLAIR of that class over the median
  FLAIR of white matter; for the lesion class also its T1w and T2w over white matter's.

Usage::

    python benchmarks/sim_lesions.py --real benchmarks/work/real-train --spacing 2 \\
        --simulated benchmarks/work/sim-train-v2 [--out benchmarks/results/sim_lesions.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import REPO, command_line, machine

PATHOLOGY = ("lesion", "necrosis", "enhancing")
RATIO_CONTRASTS = ("T1w", "T2w", "FLAIR")


def _ratio(image: np.ndarray, lesion: np.ndarray, wm: np.ndarray) -> float | None:
    if not lesion.any() or not wm.any():
        return None
    return round(float(np.median(image[lesion])) / float(np.median(image[wm])), 2)


def real_rows(folder: Path, spacing: float | None) -> list[dict[str, Any]]:
    from rtfsyn import io
    from rtfsyn.data import load_cases
    from rtfsyn.phantom.realsim import real_anatomy

    rows = []
    for case in load_cases(folder):
        anat = real_anatomy(case, spacing)
        row: dict[str, Any] = {"case": case.subject}
        if anat is None:
            row["anatomy"] = "none (not co-registered or no T1w)"
        else:
            row.update({t: round(float(anat.fractions[t][anat.mask].mean()), 4)
                        for t in PATHOLOGY})
            lesion = (anat.fractions["lesion"] > 0.5) & anat.mask
            wm = (anat.fractions["WM"] > 0.8) & anat.mask
            ref = io.to_canonical(io.load_nifti(case.images["T1w"]))
            if spacing is not None:
                ref = io.resample_to_spacing(ref, spacing)
            for c in RATIO_CONTRASTS:
                if c in case.images:
                    img = io.resample_to_reference(io.to_canonical(io.load_nifti(
                        case.images[c])), ref)
                    row[f"lesion_{c}_over_wm"] = _ratio(
                        np.asarray(img.dataobj, np.float32), lesion, wm)
        rows.append(row)
    return rows


def simulated_rows(folder: Path) -> list[dict[str, Any]]:
    import nibabel as nib

    from rtfsyn.data import load_cases
    from rtfsyn.phantom.realsim import SIM_TISSUES

    rows = []
    for case in load_cases(folder):
        if case.labels is None or "FLAIR" not in case.images:
            continue
        labels = np.asarray(nib.load(str(case.labels)).dataobj)
        flair = np.asarray(nib.load(str(case.images["FLAIR"])).dataobj, dtype=np.float32)
        wm = labels == SIM_TISSUES.index("WM") + 1
        row: dict[str, Any] = {"case": case.subject}
        for t in PATHOLOGY:
            sel = labels == SIM_TISSUES.index(t) + 1
            row[f"{t}_voxels"] = int(sel.sum())
            row[f"{t}_flair_over_wm"] = _ratio(flair, sel, wm)
        lesion = labels == SIM_TISSUES.index("lesion") + 1
        for c in ("T1w", "T2w"):
            if c in case.images:
                image = np.asarray(nib.load(str(case.images[c])).dataobj, dtype=np.float32)
                row[f"lesion_{c}_over_wm"] = _ratio(image, lesion, wm)
        rows.append(row)
    return rows


def _ratios(row: dict[str, Any], contrasts: tuple[str, ...]) -> str:
    vals = [row.get(f"lesion_{c}_over_wm") for c in contrasts]
    return " / ".join("–" if v is None else f"{v:.2f}" for v in vals)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", type=Path, nargs="+", default=[])
    ap.add_argument("--spacing", type=float, default=None,
                    help="grid spacing in mm for --real (default: the cases' own)")
    ap.add_argument("--simulated", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.real and args.simulated is None:
        raise SystemExit("give --real DIR … and/or --simulated DIR")
    for folder in [*args.real, *([args.simulated] if args.simulated else [])]:
        if not folder.is_dir():
            raise SystemExit(f"{folder}: no such folder")
    t0 = time.perf_counter()
    out: dict[str, Any] = {"command": command_line("sim_lesions.py", argv),
                           "machine": machine()}
    md: list[str] = [f"`{out['command']}` on {out['machine']}", ""]
    if args.real:
        out["real"] = rows = [r for folder in args.real for r in real_rows(folder, args.spacing)]
        md += [f"Brain fraction of each pathology class in the anatomy `real_anatomy` derives "
               f"(spacing {args.spacing or 'native'} mm):", "",
               "| case | lesion | necrosis | enhancing | lesion / WM on T1w / T2w / FLAIR |",
               "|---|---|---|---|---|"]
        md += [f"| {r['case']} | " + (" | ".join(f"{r[t]:.4f}" for t in PATHOLOGY)
                                      + f" | {_ratios(r, RATIO_CONTRASTS)}"
                                      if "lesion" in r else f"{r['anatomy']} | | | ") + " |"
               for r in rows]
        md.append("")
    if args.simulated is not None:
        out["simulated"] = rows = simulated_rows(args.simulated)
        md += [f"`{args.simulated}`: voxels of each pathology class, and its median FLAIR over "
               "white matter's; the lesion class on T1w / T2w over white matter's:", "",
               "| subject | lesion | necrosis | enhancing | lesion / WM on T1w / T2w |",
               "|---|---|---|---|---|"]
        md += [f"| {r['case']} | " + " | ".join(
            f"{r[f'{t}_voxels']} ({r[f'{t}_flair_over_wm']:.2f}×)"
            if r[f"{t}_flair_over_wm"] is not None else "0" for t in PATHOLOGY)
            + f" | {_ratios(r, ('T1w', 'T2w'))} |" for r in rows]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    from real_scans import _write

    _write(args.out or REPO / "benchmarks" / "results" / "sim_lesions.json", out, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
