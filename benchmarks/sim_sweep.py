"""A metadata sweep with a known answer: simulated scans of held-out anatomies.

``real_scans.py``'s sweep asks whether the output of a *real* T1 moves with the requested TE
and TI, but a real case has one target per contrast, so it cannot say what the right output
is. Here the target is simulated (:mod:`rtfsyn.phantom.realsim`) at every setting of the sweep
from the tissue maps of a real anatomy the model never trained on (default: the two
validation participants, whose simulations ``pack_training_data.py --exclude-anatomy`` keeps
out of training), with one scanner, tissue draw, bias field and noise per session, so the
setting is the only thing that changes. For each setting it reports the CSF / WM ratio of the
simulated target and of the model's output (pure-tissue voxels: fraction > 0.9) and the PSNR
of the output against the target (both 0.5–99.5 percentile normalised in the brain).

Two ways of asking, to tell "the model ignores TI" from "the model ignores TI when the source
looks real":

* ``full``: source and target metadata = the simulation's exact sidecars (field, vendor,
  TR/TE/TI/FA), as the simulated training pairs carry them;
* ``bare``: source metadata = its contrast only and a target request of TR/TE/TI only, as
  ``real_scans.py`` asks for a real case (real training cases carry no sidecars).

Settings as in ``real_scans.py``: T2w TE 60 / 90 / 120 ms at TR 5 s; FLAIR TI 2000 / 2400 /
2800 ms at TR 10 s, TE 90 ms. Usage::

    python benchmarks/sim_sweep.py [--model PATH] [--cases DIR ...] [--sessions 1]
        [--out benchmarks/results/sim_sweep.json]            # + .md table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import REPO, command_line, machine
from real_scans import csf_wm, sweep_settings, sweep_verdict

SPACING = 2.0
PURE = 0.9


#: request field → :class:`~rtfsyn.phantom.scanner.Protocol` field
PROTOCOL_FIELDS = {"repetition_time": "tr", "echo_time": "te", "inversion_time": "ti"}


def simulate_setting(anat: Any, session: Any, tissues: dict[str, Any], target: str,
                     change: dict[str, float], seed: list[int]) -> dict[str, Any]:
    """T1w and the target under ``session`` with the target's protocol changed; the same
    ``seed`` gives the same bias field and noise at every setting."""
    from rtfsyn.phantom.realsim import Session, simulate_session

    protocols = {"T1w": session.protocols["T1w"],
                 target: dataclasses.replace(session.protocols[target], **change)}
    one = Session(session.field_strength, session.manufacturer, session.model, session.scale,
                  session.bias, session.noise, protocols)
    images = simulate_session(anat, one, tissues, np.random.default_rng(seed))
    return {"images": images, "session": one}


def run(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    import nibabel as nib

    import rtfsyn
    from rtfsyn.data import load_cases
    from rtfsyn.inference import load_model
    from rtfsyn.metadata import Metadata
    from rtfsyn.metrics import psnr
    from rtfsyn.phantom.cohort import sidecar
    from rtfsyn.phantom.realsim import draw_session, real_anatomy, subject_tissues
    from rtfsyn.preprocess import robust_normalize

    model = load_model(args.model, "cpu")
    t0 = time.time()
    rows = []
    for folder in args.cases:
        for case in load_cases(folder):
            anat = real_anatomy(case, SPACING)
            if anat is None:
                raise SystemExit(f"{case.subject}: contrasts not on one grid; register them")
            affine = np.diag([*anat.spacing, 1.0])
            csf = (anat.fractions["CSF"] > PURE) & anat.mask
            wm = (anat.fractions["WM"] > PURE) & anat.mask
            mask_img = nib.Nifti1Image(anat.mask.astype(np.uint8), affine)
            for k in range(args.sessions):
                rng = np.random.default_rng([args.seed, k])
                session = draw_session(rng, ("T1w", "T2w", "FLAIR"))
                tissues = subject_tissues(session.field_strength, rng)
                for target, knob, ms, request in sweep_settings():
                    change = {PROTOCOL_FIELDS[f]: v for f, v in request.items() if f != "contrast"}
                    sim = simulate_setting(anat, session, tissues, target, change,
                                           [args.seed, k, 1])
                    site = sim["session"].site()
                    src_img = nib.Nifti1Image(sim["images"]["T1w"].astype(np.float32), affine)
                    truth = robust_normalize(sim["images"][target], anat.mask)[0]
                    cars = {c: sidecar(site, p, SPACING)
                            for c, p in sim["session"].protocols.items()}
                    asks = {
                        "full": (Metadata.from_sidecar(cars["T1w"], "T1w"),
                                 Metadata.from_sidecar(cars[target], target)),
                        "bare": (Metadata.from_dict({"contrast": "T1w"}),
                                 Metadata.from_dict(request)),
                    }
                    row = {"case": case.subject, "session": k,
                           "field": session.field_strength, "vendor": session.manufacturer,
                           "target": target, "knob": knob, "ms": ms,
                           "truth_csf_wm": round(csf_wm(truth, csf, wm), 4)}
                    for name, (src_meta, tgt_meta) in asks.items():
                        out = rtfsyn.synthesize(src_img, target=target, metadata=tgt_meta,
                                                model=model, source_metadata=src_meta,
                                                source_contrast="T1w", mask=mask_img,
                                                device="cpu")
                        pred = robust_normalize(np.asarray(out.dataobj, np.float32),
                                                anat.mask)[0]
                        row[f"{name}_csf_wm"] = round(csf_wm(pred, csf, wm), 4)
                        row[f"{name}_psnr"] = round(float(psnr(pred, truth, anat.mask)), 3)
                    print(f"  {case.subject} s{k} {target} {knob} {ms} ms: truth "
                          f"{row['truth_csf_wm']:.3f}, full {row['full_csf_wm']:.3f}, "
                          f"bare {row['bare_csf_wm']:.3f}", flush=True)
                    rows.append(row)
    return {"command": command_line("sim_sweep.py", argv), "machine": machine(),
            "model": str(args.model or "rtfsyn-default"), "minutes": round(
                (time.time() - t0) / 60, 1), "pure_fraction": PURE, "rows": rows,
            "verdict": verdicts(rows)}


def verdicts(rows: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Per way of asking and target: does the output's CSF / WM move like the truth's, first
    → last setting, averaged over cases and sessions (``real_scans.sweep_verdict``)?"""
    cols = ("truth_csf_wm", "full_csf_wm", "bare_csf_wm")
    keys = sorted({(r["target"], r["ms"]) for r in rows})
    means = [{"target": t, "ms": ms, **{c: float(np.mean(
        [r[c] for r in rows if (r["target"], r["ms"]) == (t, ms)])) for c in cols}}
        for t, ms in keys]
    return {key: sweep_verdict(means, f"{key}_csf_wm", expected="truth_csf_wm")
            for key in ("full", "bare")}


def table(result: dict[str, Any]) -> str:
    lines = [f"`{result['command']}` on {result['machine']} ({result['minutes']} min)", "",
             f"Simulated targets of held-out anatomies (model {result['model']}); CSF / WM = "
             f"mean ratio over voxels with tissue fraction > {result['pure_fraction']}; "
             "PSNR dB in the brain:", "",
             "| case | session | target | setting | truth CSF/WM | full: CSF/WM | full: PSNR "
             "| bare: CSF/WM | bare: PSNR |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['case']} | {r['session']} ({r['field']:g} T {r['vendor']}) | "
                     f"{r['target']} | {r['knob']} {r['ms']} ms | {r['truth_csf_wm']:.3f} | "
                     f"{r['full_csf_wm']:.3f} | {r['full_psnr']:.2f} | {r['bare_csf_wm']:.3f} | "
                     f"{r['bare_psnr']:.2f} |")
    lines += ["", "verdict (first → last setting, mean over rows): "
              + "; ".join(f"{k}: {v}" for k, v in result["verdict"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--cases", type=Path, nargs="+",
                    default=[REPO / "benchmarks" / "work" / "real-val"],
                    help="folders of co-registered real cases (default: the validation "
                         "split of real_split.py)")
    ap.add_argument("--sessions", type=int, default=1, help="scanner draws per anatomy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" /
                    "sim_sweep.json")
    args = ap.parse_args(argv)
    if args.sessions < 1:
        raise SystemExit(f"--sessions {args.sessions}: give at least 1")
    result = run(args, argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    md = table(result)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
