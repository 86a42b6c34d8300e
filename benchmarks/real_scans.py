"""Real scans the bundled model never trained on: the model vs training-free baselines.

For every test case and target (T1w → T2w, FLAIR, T1Gd):

* ``rtfsyn-default`` — the bundled model through the user-facing :func:`rtfsyn.synthesize`
  (or ``--model``), source metadata = contrast only (these datasets publish no protocols);
* ``T1 itself`` — the normalised source;
* ``1 - T1`` — its inversion inside the brain;
* ``tissue remap`` — 3-class k-means of the source T1 (:func:`rtfsyn.evaluation.tissue.
  tissue_remap`), each class painted with the mean target intensity of that class in a donor
  *training* case (``--donor``, default BraTS-GLI-00001-000);
* ``physics prior`` — :func:`rtfsyn.prior.physics_prior` alone, when the module exists.

Every prediction and the real target are normalised the same way
(:func:`rtfsyn.preprocess.robust_normalize`: 0.5–99.5 percentile in the brain → [0, 1]);
PSNR / SSIM / MAE (:func:`rtfsyn.metrics.all_metrics`) inside the brain mask = the
intersection of the non-zero regions of the case's four contrasts. One PNG panel per case.

Metadata sweep (``--sweep-case``): T2w at TE 60, 90, 120 ms (TR 5000 ms) and FLAIR at TI
2000, 2400, 2800 ms (TR 10000 ms, TE 90 ms), the source resampled to 2 mm, the bundled
model's working resolution (``--sweep-spacing``, to save CPU time); the CSF/WM ratio of the
output per setting (CSF and WM = darkest and brightest 3-class k-means class of the source
T1, mean output intensity inside each), beside the ratio the signal equations give with the
project's 3 T tissue values (:mod:`rtfsyn.phantom.physics`): T2w's rises with TE, FLAIR's
falls from TI 2000 ms towards the CSF null (~2.6 s at TR 10 s).

Test cases = real cases the bundled model never trained on or validated on (it trained on
BraTS-GLI-00001-000, BraTS-MET-00110-000 and MNI152; BraTS-case-preprocessed was its
validation case, and is the validation case of the later candidates):
BraTS-GLI-00000-000 and the two open-ms cross-sectional MS patients. Usage::

    python benchmarks/real_scans.py [--cases ...] [--targets T2w FLAIR T1Gd]
        [--no-sweep | --sweep-only] [--sweep-spacing 2] [--model PATH]
        [--out benchmarks/results/real_scans.json]   # + real_scans_sweep.json, real_scans/*.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import REAL, REPO, command_line, machine

TEST_CASES = ("BraTS-GLI-00000-000", "openms-cs-patient07", "openms-cs-patient19")
DONOR = "BraTS-GLI-00001-000"
TARGETS = ("T2w", "FLAIR", "T1Gd")
METHODS = ("rtfsyn-default", "T1 itself", "1 - T1", "tissue remap", "physics prior")
T2_SWEEP_TE_MS = (60, 90, 120)
FLAIR_SWEEP_TI_MS = (2000, 2400, 2800)
T2_TR_MS, FLAIR_TR_MS, FLAIR_TE_MS = 5000, 10000, 90


# --------------------------------------------------------------------------- data
def find_case(name: str) -> Any:
    """The :class:`~rtfsyn.data.Case` called ``name`` (or ending in ``/name``) in ../shared."""
    from rtfsyn.data import load_cases

    if name.startswith("openms-cs"):
        folder = REAL / "open-ms-cross-sectional"
    elif name.startswith("openms-long-"):  # openms-long-patientNN-studyK (a validation case)
        folder = REAL / "open-ms-longitudinal-raw"
    else:
        folder = REAL / name
    for case in load_cases(folder):
        if case.subject == name or case.subject.endswith(("/" + name, "-" + name)):
            return case
    raise SystemExit(f"case {name} not found under {folder}")


def load_case(name: str, estimated_brain: bool = False) -> dict[str, Any]:
    """Images (T1w + targets, native grid, float32), the brain mask and the NIfTI of the T1.

    The mask is the intersection of the contrasts' non-zero regions; with
    ``estimated_brain`` it is further cut to the brain mask the case's reader estimates for
    an unstripped head (open-MS raw: ``info["mask"] == "estimated brain"``), if it has one.
    """
    from rtfsyn import io
    from rtfsyn.preprocess import brain_mask

    case = find_case(name)
    imgs = {c: io.load_nifti(case.images[c]) for c in ("T1w", *TARGETS) if c in case.images}
    data = {c: np.asarray(i.dataobj, dtype=np.float32) for c, i in imgs.items()}
    mask = np.logical_and.reduce([brain_mask(v) for v in data.values()])
    if estimated_brain and case.mask is not None and \
            (case.info or {}).get("mask") == "estimated brain":
        brain = np.asarray(io.load_nifti(case.mask).dataobj) > 0
        if brain.shape != mask.shape:
            raise SystemExit(f"{name}: brain mask {brain.shape} is not on the grid "
                             f"{mask.shape} of its images")
        mask &= brain
    labels = None
    if case.labels is not None:
        labels = np.asarray(io.load_nifti(case.labels).dataobj) > 0
    return {"case": case, "t1_img": imgs["T1w"], "data": data, "mask": mask, "labels": labels}


# --------------------------------------------------------------------------- methods
def prior_fn() -> Any:
    """:func:`rtfsyn.prior.physics_prior` if the module exists, else None."""
    try:
        from rtfsyn.prior import physics_prior
    except ImportError:
        return None
    return physics_prior


def predict_all(c: dict[str, Any], target: str, donor: dict[str, Any], model: Any,
                timings: dict[str, float], protocol: str | None = None
                ) -> dict[str, np.ndarray]:
    """Raw predictions of every method for one target (native grid, not yet normalised)."""
    import rtfsyn
    from rtfsyn import io
    from rtfsyn.evaluation.tissue import tissue_remap
    from rtfsyn.metadata import Metadata
    from rtfsyn.preprocess import robust_normalize

    mask = c["mask"]
    t1 = robust_normalize(c["data"]["T1w"], mask)[0]
    out: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    mask_img = io.like(mask.astype(np.uint8), c["t1_img"])
    img = rtfsyn.synthesize(c["t1_img"], target=target, model=model, source_contrast="T1w",
                            mask=mask_img, device="cpu", protocol=protocol)
    out["rtfsyn-default"] = np.asarray(img.dataobj, dtype=np.float32)
    timings[target] = round(time.perf_counter() - t0, 1)
    out["T1 itself"] = t1
    out["1 - T1"] = np.where(mask, 1.0 - t1, 0.0).astype(np.float32)
    dmask = donor["mask"]
    d_t1 = robust_normalize(donor["data"]["T1w"], dmask)[0]
    d_tgt = robust_normalize(donor["data"][target], dmask)[0]
    out["tissue remap"] = tissue_remap(t1, mask, d_t1, dmask, d_tgt)[0]
    prior = prior_fn()
    if prior is not None:
        out["physics prior"] = prior(c["data"]["T1w"], mask, Metadata.from_dict(
            {"contrast": "T1w"}), Metadata.from_dict({"contrast": target}))
    return out


def lesion_contrast(normed: dict[str, np.ndarray], c: dict[str, Any]) -> dict[str, float]:
    """FLAIR lesion (oedema) over white-matter intensity of every method and of the real image.

    Lesions: the case's lesion mask if it has one (open-MS ``GOLD_STANDARD``), else the
    voxels where the real FLAIR exceeds the white-matter mean by 3 SD (glioma oedema / tumour);
    white matter: the brightest third of the source T1 in the brain, lesions excluded. A value
    above 1 means lesions brighter than white matter, as on a real FLAIR.
    """
    mask = c["mask"]
    t1 = normed["T1 itself"]
    wm = mask & (t1 >= np.percentile(t1[mask], 67))
    real = normed["real"]
    if c["labels"] is not None and c["labels"].any():
        lesion = c["labels"] & mask
    else:
        lesion = mask & (real > real[wm].mean() + 3 * real[wm].std())
    wm &= ~lesion
    if lesion.sum() < 20 or wm.sum() < 20:
        return {}
    return {name: round(float(v[lesion].mean() / max(v[wm].mean(), 1e-6)), 3)
            for name, v in normed.items()}


def score(preds: dict[str, np.ndarray], real: np.ndarray, mask: np.ndarray
          ) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Metrics of each method after the shared normalisation; the normalised volumes too."""
    from rtfsyn.metrics import all_metrics
    from rtfsyn.preprocess import bounding_box, robust_normalize

    # metrics on the brain's bounding box + 6 voxels: the same numbers (every SSIM window
    # around a brain voxel stays inside), less CPU
    box = bounding_box(mask, margin=6)
    real_n = robust_normalize(real, mask)[0]
    rows, normed = {}, {"real": real_n}
    for name, pred in preds.items():
        p = robust_normalize(pred, mask)[0]
        normed[name] = p
        m = all_metrics(p[box], real_n[box], mask[box])
        rows[name] = {k: round(float(m[k]), 4) for k in ("psnr", "ssim", "mae")}
    return rows, normed


# --------------------------------------------------------------------------- panel
def panel(path: Path, name: str, t1: np.ndarray, per_target: dict[str, dict[str, np.ndarray]],
          rows: dict[str, dict[str, dict[str, float]]], z: int) -> None:
    """Rows = targets; columns = source, real target, each method (axial slice ``z``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtfsyn.io import atomic_write

    targets = list(per_target)
    cols = ["source T1w", "real", *[m for m in METHODS if m in per_target[targets[0]]]]
    fig, axes = plt.subplots(len(targets), len(cols), figsize=(2.2 * len(cols),
                                                                2.4 * len(targets)))
    axes = np.atleast_2d(axes)
    for r, target in enumerate(targets):
        vols = {"source T1w": t1, **per_target[target]}
        for k, col in enumerate(cols):
            ax = axes[r, k]
            ax.imshow(np.rot90(vols[col][:, :, z]), cmap="gray", vmin=0, vmax=1)
            title = f"{col}" if col != "real" else f"real {target}"
            if col in rows[target]:
                m = rows[target][col]
                title += f"\n{m['psnr']:.1f} dB / {m['ssim']:.3f}"
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle(f"{name}: T1w → {', '.join(targets)} (axial slice {z}; PSNR / SSIM in brain)",
                 fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"), suffix=".png")
    plt.close(fig)


def display_slice(mask: np.ndarray, labels: np.ndarray | None) -> int:
    """The axial slice with the most lesion voxels, else the brain's centre slice."""
    if labels is not None and labels.any():
        return int(np.argmax(labels.sum(axis=(0, 1))))
    zs = np.flatnonzero(mask.any(axis=(0, 1)))
    return int((zs[0] + zs[-1]) // 2)


# --------------------------------------------------------------------------- sweep
def expected_ratio(target: str, setting_ms: float) -> float:
    """CSF/WM signal ratio from the signal equations with the 3 T tissue values."""
    from rtfsyn.phantom.physics import inversion_recovery, spin_echo, tissue_params

    tp = tissue_params(3.0)
    if target == "T2w":
        sig = {t: spin_echo(tp[t].pd, tp[t].t1, tp[t].t2, T2_TR_MS / 1e3, setting_ms / 1e3)
               for t in ("CSF", "WM")}
    else:
        sig = {t: inversion_recovery(tp[t].pd, tp[t].t1, tp[t].t2, FLAIR_TR_MS / 1e3,
                                     FLAIR_TE_MS / 1e3, setting_ms / 1e3) for t in ("CSF", "WM")}
    return float(sig["CSF"] / sig["WM"])


def sweep_settings() -> list[tuple[str, str, int, dict[str, Any]]]:
    """``(target, knob, ms, request)`` of the sweep; the request's times in s."""
    out = [("T2w", "TE", te, {"contrast": "T2w", "repetition_time": T2_TR_MS / 1e3,
                              "echo_time": te / 1e3}) for te in T2_SWEEP_TE_MS]
    out += [("FLAIR", "TI", ti, {"contrast": "FLAIR", "repetition_time": FLAIR_TR_MS / 1e3,
                                 "echo_time": FLAIR_TE_MS / 1e3, "inversion_time": ti / 1e3})
            for ti in FLAIR_SWEEP_TI_MS]
    return out


def csf_wm(image: np.ndarray, csf: np.ndarray, wm: np.ndarray) -> float:
    """Mean intensity in ``csf`` over the mean in ``wm``."""
    return float(image[csf].mean() / max(float(image[wm].mean()), 1e-6))


def sweep(c: dict[str, Any], model: Any, spacing: float | None) -> list[dict[str, Any]]:
    """CSF/WM ratio of the model (and the prior) along TE (T2w) and TI (FLAIR).

    With ``spacing`` the model writes its output on that grid (``synthesize(spacing=...)``,
    cheaper) and the source, mask and classes are resampled onto it.
    """
    import rtfsyn
    from rtfsyn import io
    from rtfsyn.evaluation.tissue import three_class_segmentation
    from rtfsyn.metadata import Metadata
    from rtfsyn.preprocess import robust_normalize

    mask = c["mask"]
    mask_img = io.like(mask.astype(np.uint8), c["t1_img"])
    t1_raw = c["data"]["T1w"]
    if spacing is not None:
        # synthesize(spacing=...) keeps the input's orientation (issue 13): same grid here
        grid = io.resample_to_spacing(c["t1_img"], spacing)
        t1_raw = np.asarray(grid.dataobj, dtype=np.float32)
        mask = np.asarray(io.resample_to_reference(mask_img, grid, order=0).dataobj) > 0.5
    t1 = robust_normalize(t1_raw, mask)[0]
    classes = three_class_segmentation(t1, mask)
    csf, wm = classes == 1, classes == 3
    prior = prior_fn()
    out = []
    for target, knob, value, meta in sweep_settings():
        md = Metadata.from_dict(meta)
        img = rtfsyn.synthesize(c["t1_img"], target=target, metadata=md, model=model,
                                source_contrast="T1w", mask=mask_img, device="cpu",
                                spacing=spacing)
        pred = np.asarray(img.dataobj, dtype=np.float32)
        if pred.shape != csf.shape:
            raise SystemExit(f"sweep grid mismatch {pred.shape} vs {csf.shape}")
        row = {"target": target, "knob": knob, "ms": value,
               "model_csf_wm": round(csf_wm(pred, csf, wm), 4),
               "expected_csf_wm_3T": round(expected_ratio(target, value), 4)}
        if prior is not None:
            # ratios against the signal equation: the prior's physical normalisation (zero
            # signal stays 0; the default 'matched' one pins CSF and WM, see physics_prior.py)
            pp = prior(t1_raw, mask, Metadata.from_dict({"contrast": "T1w"}), md,
                       normalise="physical")
            row["prior_csf_wm"] = round(csf_wm(pp, csf, wm), 4)
        print(f"  sweep {target} {knob}={value} ms: model CSF/WM {row['model_csf_wm']:.3f} "
              f"(physics {row['expected_csf_wm_3T']:.3f})", flush=True)
        out.append(row)
    return out


#: a ratio that moves by less than this fraction of its first value, first → last setting, is
#: called flat (the physics moves 70 % for FLAIR and 114 % for T2w over the sweep)
SWEEP_FLAT = 0.10


def sweep_verdict(rows: list[dict[str, Any]], key: str,
                  expected: str = "expected_csf_wm_3T") -> dict[str, str]:
    """Does ``key``'s ratio move like ``expected``'s (default: the physics), first → last
    setting, per target, by at least :data:`SWEEP_FLAT` of its first value?"""
    verdict = {}
    for target in ("T2w", "FLAIR"):
        r = [x for x in rows if x["target"] == target]
        if not r or key not in r[0]:
            continue
        want = np.sign(r[-1][expected] - r[0][expected])
        got = r[-1][key] - r[0][key]
        if abs(got) < SWEEP_FLAT * abs(r[0][key]):
            verdict[target] = f"flat (< {SWEEP_FLAT:.0%} change)"
        else:
            verdict[target] = ("physical direction" if np.sign(got) == want
                               else "not the physical direction")
    return verdict


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(TEST_CASES))
    ap.add_argument("--targets", nargs="+", default=list(TARGETS))
    ap.add_argument("--donor", default=DONOR, help="a training case for the tissue remap")
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--protocol", default=None,
                    help="synthesize(protocol=...) for the model's rows: the typical protocol "
                         "that fills the target's fields (default: the contrast's typical "
                         "one; 'none': leave them to the model's null tokens)")
    ap.add_argument("--estimated-brain", action="store_true",
                    help="for unstripped heads whose reader estimates a brain mask (open-MS "
                         "raw), synthesize and score inside that mask instead of the head")
    ap.add_argument("--sweep-case", default="openms-cs-patient07")
    ap.add_argument("--sweep-spacing", type=float, default=2.0,
                    help="output grid (mm) of the sweep's syntheses; 0 = the input grid")
    part = ap.add_mutually_exclusive_group()
    part.add_argument("--no-sweep", action="store_true", help="the table only")
    part.add_argument("--sweep-only", action="store_true", help="the metadata sweep only")
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "results" / "real_scans.json")
    ap.add_argument("--panels", type=Path, default=None,
                    help="folder of the PNG panels (default: --out without .json)")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                    help="combine the tables of earlier runs (e.g. one process per case) into "
                         "--out instead of computing")
    args = ap.parse_args(argv)
    if args.merge:
        merge(args, argv)
        return 0

    from rtfsyn.inference import load_model

    model = load_model(args.model, "cpu")
    if not args.sweep_only:
        run_table(args, argv, model)
    if not args.no_sweep:
        run_sweep(args, argv, model)
    return 0


def _header(argv: list[str] | None, model: Any, seconds: float) -> dict[str, Any]:
    return {"command": command_line("real_scans.py", argv), "machine": machine(),
            "seconds": round(seconds, 1),
            "model": {"path": str(model.info.path), "step": model.info.step,
                      "train_cases": (model.info.info or {}).get("train_cases")}}


def _write(path: Path, out: dict[str, Any], md: list[str]) -> None:
    from rtfsyn.io import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(out, indent=1)))
    text = "\n".join(md) + "\n"
    atomic_write(path.with_suffix(".md"), lambda tmp: Path(tmp).write_text(text))
    print("\n" + text)
    print(f"wrote {path} and {path.with_suffix('.md')}", flush=True)


def run_table(args: argparse.Namespace, argv: list[str] | None, model: Any) -> None:
    """Every case × target × method: metrics, panels, ``<out>.json``/``.md``."""
    t_start = time.perf_counter()
    donor = load_case(args.donor, args.estimated_brain)
    fig_dir = args.panels or args.out.with_suffix("")
    results: list[dict[str, Any]] = []
    seconds: dict[str, dict[str, float]] = {}
    for name in args.cases:
        print(f"[{name}]", flush=True)
        c = load_case(name, args.estimated_brain)
        per_target, rows_by_target = {}, {}
        seconds[name] = {}
        for target in args.targets:
            if target not in c["data"]:
                print(f"  {name} has no {target}: skipped", flush=True)
                continue
            preds = predict_all(c, target, donor, model, seconds[name], args.protocol)
            rows, normed = score(preds, c["data"][target], c["mask"])
            if target == "FLAIR":
                ratios = lesion_contrast(normed, c)
                for method in rows:
                    if method in ratios:
                        rows[method]["lesion_wm"] = ratios[method]
                        rows[method]["real_lesion_wm"] = ratios["real"]
            rows_by_target[target] = rows
            per_target[target] = normed
            for method, m in rows.items():
                results.append({"case": name, "target": target, "method": method, **m})
                print(f"  T1w→{target:<6} {method:<15} {m['psnr']:6.2f} dB  SSIM {m['ssim']:.3f}"
                      f"  MAE {m['mae']:.4f}"
                      + (f"  lesion/WM {m['lesion_wm']:.2f}" if "lesion_wm" in m else ""),
                      flush=True)
            # progress after every target, in the final format (mergeable), in case of a kill
            partial = args.out.with_name(args.out.stem + ".partial.json")
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({**_header(argv, model, time.perf_counter() - t_start),
                                           "partial": True, "cases": args.cases,
                                           "targets": args.targets,
                                           "synthesis_seconds": seconds, "rows": results}))
        if per_target:
            t1 = per_target[next(iter(per_target))]["T1 itself"]
            z = display_slice(c["mask"], c["labels"])
            try:
                panel(fig_dir / f"{name}.png", name, t1, per_target, rows_by_target, z)
            except Exception as exc:  # a figure problem must not lose the numbers
                print(f"  panel for {name} failed: {exc!r}", flush=True)
    out = {
        **_header(argv, model, time.perf_counter() - t_start),
        "donor": args.donor, "cases": args.cases, "targets": args.targets,
        "normalisation": "0.5-99.5 percentile in the brain mask -> [0, 1], both volumes",
        "mask": "intersection of the non-zero regions of T1w, T1Gd, T2w, FLAIR"
                + (", cut to the reader's estimated brain mask in unstripped heads"
                   if args.estimated_brain else ""),
        "physics_prior": prior_fn() is not None, "panels": str(fig_dir),
        "synthesis_seconds": seconds, "rows": results,
    }
    md = [f"`{out['command']}` on {out['machine']} ({out['seconds'] / 60:.1f} min)", "",
          "PSNR dB / SSIM / MAE inside the brain, both volumes 0.5–99.5 percentile normalised; "
          "best PSNR per row in bold.", "", *markdown_table(results, args.targets)]
    _write(args.out, out, md)
    args.out.with_name(args.out.stem + ".partial.json").unlink(missing_ok=True)


def merge(args: argparse.Namespace, argv: list[str] | None) -> None:
    """One table from several ``run_table`` results (parallel runs of the same model)."""
    parts = [json.loads(p.read_text()) for p in args.merge]
    if len({json.dumps(p["model"], sort_keys=True) for p in parts}) != 1:
        raise SystemExit("the runs to merge used different models")
    rows = [r for p in parts for r in p["rows"]]
    targets = list(dict.fromkeys(t for p in parts for t in p["targets"]))
    out = {**parts[0], "command": command_line("real_scans.py", argv),
           "parts": [{"command": p["command"], "machine": p["machine"], "seconds": p["seconds"],
                      "cases": p["cases"]} for p in parts],
           "seconds": round(sum(p["seconds"] for p in parts), 1),
           "cases": [c for p in parts for c in p["cases"]], "targets": targets,
           "synthesis_seconds": {k: v for p in parts for k, v in
                                 p["synthesis_seconds"].items()}, "rows": rows}
    runs = "; ".join(f"`{p['command']}` ({p['seconds'] / 60:.0f} min"
                     + (", stopped early: partial" if p.get("partial") else "") + ")"
                     for p in parts)
    md = [f"Merged from {len(parts)} runs in parallel on {parts[0]['machine']}: {runs}", "",
          "PSNR dB / SSIM / MAE inside the brain, both volumes 0.5–99.5 percentile normalised; "
          "best PSNR per row in bold.", "", *markdown_table(rows, targets)]
    _write(args.out, out, md)


def run_sweep(args: argparse.Namespace, argv: list[str] | None, model: Any) -> None:
    """The TE / TI sweep: ``<out>_sweep.json``/``.md``."""
    t_start = time.perf_counter()
    print(f"[sweep on {args.sweep_case}]", flush=True)
    spacing = args.sweep_spacing or None
    rows = sweep(load_case(args.sweep_case), model, spacing)
    out = {
        **_header(argv, model, time.perf_counter() - t_start),
        "case": args.sweep_case, "output_spacing_mm": spacing,
        "classes": "CSF / WM = darkest / brightest 3-class k-means class of the source T1",
        "protocols": {"T2w": f"TR {T2_TR_MS} ms", "FLAIR": f"TR {FLAIR_TR_MS} ms, TE "
                      f"{FLAIR_TE_MS} ms"},
        "rows": rows,
        "verdict": {"model": sweep_verdict(rows, "model_csf_wm"),
                    "prior": sweep_verdict(rows, "prior_csf_wm")},
    }
    md = [f"`{out['command']}` on {out['machine']} ({out['seconds'] / 60:.1f} min)", "",
          f"Metadata sweep on {args.sweep_case}, output at "
          f"{'the input grid' if spacing is None else f'{spacing:g} mm'} (CSF/WM mean-intensity "
          "ratio of the output; physics = signal equations, 3 T tissue values):", "",
          *sweep_table(rows), "",
          f"model: {out['verdict']['model']}; prior: {out['verdict']['prior'] or 'absent'}"]
    _write(args.out.with_name(args.out.stem + "_sweep.json"), out, md)


def markdown_table(results: list[dict[str, Any]], targets: list[str]) -> list[str]:
    """One row per case × target, one column per method: ``PSNR / SSIM / MAE``."""
    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    lines = ["| case | target | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    cases = list(dict.fromkeys(r["case"] for r in results))
    for case in cases:
        for target in targets:
            rs = {r["method"]: r for r in results if r["case"] == case and r["target"] == target}
            if not rs:
                continue
            best = max(rs.values(), key=lambda r: r["psnr"])["method"]
            cells = []
            for m in methods:
                if m not in rs:
                    cells.append("–")
                    continue
                cell = f"{rs[m]['psnr']:.2f} / {rs[m]['ssim']:.3f} / {rs[m]['mae']:.3f}"
                cells.append(f"**{cell}**" if m == best else cell)
            lines.append(f"| {case} | {target} | " + " | ".join(cells) + " |")
    flair = [r for r in results if "lesion_wm" in r]
    if flair:
        lines += ["", "FLAIR lesion / white-matter intensity ratio (> 1: lesions brighter than "
                  "WM, as on a real FLAIR; lesions = the case's lesion mask, else the real "
                  "FLAIR's voxels > WM mean + 3 SD):", "",
                  "| case | real FLAIR | " + " | ".join(methods) + " |",
                  "|---|---|" + "---|" * len(methods)]
        for case in cases:
            rs = {r["method"]: r for r in flair if r["case"] == case}
            if rs:
                real = next(iter(rs.values()))["real_lesion_wm"]
                lines.append(f"| {case} | {real:.2f} | " + " | ".join(
                    f"{rs[m]['lesion_wm']:.2f}" if m in rs else "–" for m in methods) + " |")
    return lines


def sweep_table(rows: list[dict[str, Any]]) -> list[str]:
    has_prior = "prior_csf_wm" in rows[0]
    lines = ["| target | setting | model CSF/WM | " + ("prior CSF/WM | " if has_prior else "")
             + "physics (3 T) CSF/WM |", "|---|---|---|---|" + ("---|" if has_prior else "")]
    for r in rows:
        prior = f" {r['prior_csf_wm']:.3f} |" if has_prior else ""
        lines.append(f"| {r['target']} | {r['knob']} {r['ms']} ms | {r['model_csf_wm']:.3f} |"
                     f"{prior} {r['expected_csf_wm_3T']:.3f} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
