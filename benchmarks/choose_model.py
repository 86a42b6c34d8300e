"""Apply the choice rule of stages 7 and 8 (benchmarks/gpu/RECIPE.md) to validation and demo data.

Each candidate (and the bundled model) is given as ``NAME=REAL_SCANS_JSON[,DEMO_JSON]``: the
``real_scans.py`` output on the validation cases and, optionally, the ``demo_metrics.json`` of
``rtfsyn demo --model M``. Score = the mean over validation cases of the case's mean PSNR of
the model (``rtfsyn-default`` rows). A candidate replaces the bundled model only if it has the
highest score, its score is above the bundled model's, and its demo PSNR falls by at most
``--demo-drop`` dB on every target against the bundled model's. Prints a table and the
decision; writes JSON. Usage::

    python benchmarks/choose_model.py --bundled v1=results/real_scans_val7_v1.json,DEMO \\
        --candidate fill=results/real_scans_val7_s7gpu-fill.json,DEMO ... [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _common import command_line


def load_entry(spec: str) -> dict[str, Any]:
    """``NAME=REAL_JSON[,DEMO_JSON]`` → name, per-(case, target) PSNR, score, demo PSNRs."""
    name, _, files = spec.partition("=")
    if not name or not files:
        raise SystemExit(f"expected NAME=REAL_SCANS_JSON[,DEMO_JSON], got {spec!r}")
    real_file, _, demo_file = files.partition(",")
    real = json.loads(Path(real_file).read_text())
    psnr = {(r["case"], r["target"]): float(r["psnr"]) for r in real["rows"]
            if r["method"] == "rtfsyn-default"}
    if not psnr:
        raise SystemExit(f"{real_file}: no rtfsyn-default rows")
    cases = sorted({c for c, _ in psnr})
    per_case = {c: sum(v for (k, _), v in psnr.items() if k == c)
                / sum(1 for k, _ in psnr if k == c) for c in cases}
    demo = None
    if demo_file:
        metrics = json.loads(Path(demo_file).read_text())["metrics"]
        demo = {t: float(m["psnr"]) for t, m in metrics.items()}
    return {"name": name, "psnr": {f"{c} {t}": v for (c, t), v in psnr.items()},
            "per_case": per_case, "score": sum(per_case.values()) / len(per_case),
            "demo": demo}


def decide(bundled: dict[str, Any], candidates: list[dict[str, Any]], demo_drop: float
           ) -> tuple[str | None, list[str]]:
    """The winning candidate's name (``None``: keep the bundled model) and the reasons."""
    reasons = []
    best = max(candidates, key=lambda c: c["score"])
    if best["score"] <= bundled["score"]:
        reasons.append(f"best candidate {best['name']} scores {best['score']:.3f} <= bundled "
                       f"{bundled['score']:.3f}")
        return None, reasons
    if bundled["demo"] is None or best["demo"] is None:
        raise SystemExit("the demo condition needs DEMO_JSON for the bundled model and "
                         f"{best['name']}")
    falls = {t: bundled["demo"][t] - best["demo"].get(t, float("-inf"))
             for t in bundled["demo"]}
    bad = {t: d for t, d in falls.items() if d > demo_drop}
    if bad:
        reasons.append(f"best candidate {best['name']} ({best['score']:.3f} > "
                       f"{bundled['score']:.3f}) falls on the demo by "
                       + ", ".join(f"{t} {d:.2f} dB" for t, d in bad.items())
                       + f" (> {demo_drop} dB)")
        return None, reasons
    reasons.append(f"{best['name']} scores {best['score']:.3f} > {bundled['score']:.3f} and "
                   f"keeps the demo within {demo_drop} dB")
    return best["name"], reasons


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundled", required=True, metavar="NAME=REAL_JSON[,DEMO_JSON]")
    ap.add_argument("--candidate", action="append", required=True,
                    metavar="NAME=REAL_JSON[,DEMO_JSON]")
    ap.add_argument("--demo-drop", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    bundled = load_entry(args.bundled)
    candidates = [load_entry(c) for c in args.candidate]
    winner, reasons = decide(bundled, candidates, args.demo_drop)
    rows = [bundled, *candidates]
    keys = list(bundled["psnr"])
    print("| model | " + " | ".join(keys) + " | score | demo T2w / FLAIR / PDw |")
    print("|---" * (len(keys) + 3) + "|")
    for r in rows:
        demo = " / ".join(f"{r['demo'][t]:.2f}" for t in ("T2w", "FLAIR", "PDw")
                          if r["demo"] and t in r["demo"]) or "–"
        cells = " | ".join(f"{r['psnr'].get(k, float('nan')):.2f}" for k in keys)
        print(f"| {r['name']} | {cells} | {r['score']:.3f} | {demo} |")
    print("\n" + "; ".join(reasons))
    verdict = f"replace the bundled model with {winner}" if winner else "keep the bundled model"
    print(f"decision: {verdict}")
    if args.out:
        result = {"command": command_line("choose_model.py", argv), "bundled": bundled,
                  "candidates": candidates, "winner": winner, "reasons": reasons,
                  "demo_drop": args.demo_drop}
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
