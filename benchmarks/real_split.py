"""The fixed participant split of the real data in ../shared/data/real, as folders of links.

``benchmarks/work/real-train/`` — every real case training may use; ``benchmarks/work/real-test/``
— the real test cases, which no training, validation or recipe choice may touch:

* test: ``BraTS-GLI-00000-000`` (glioma) and the open-MS cross-sectional patients ``patient07``
  and ``patient19`` (MS, MNI space);
* train: ``BraTS-GLI-00001-000``, ``BraTS-MET-00110-000``, ``BraTS-case-preprocessed``,
  ``MNI152-template`` and the raw longitudinal open-MS patients ``01, 03, 04, 20``.
  Longitudinal ``patient19`` is left out of both: the two open-MS collections number their
  patients independently, so it may or may not be the cross-sectional test patient19, and a
  test participant must never be in training.

Validation split (from 2026-11-26, third session): ``benchmarks/work/real-val/`` holds one BraTS
and one MS participant, ``BraTS-case-preprocessed`` and the raw longitudinal open-MS
``patient04`` (T1W, T2W and FLAIR in one study), and ``benchmarks/work/real-train-v2/`` holds
the training cases without them. Models trained on ``real-train-v2`` (and on simulations
without those two anatomies: ``pack_training_data.py --exclude-anatomy``) are chosen on
``real-val`` with ``real_scans.py --cases BraTS-case-preprocessed openms-long-patient04-study1``.
``real-train`` (all eight training participants) is what stages 1–6 of the prior model used.

Usage: ``python benchmarks/real_split.py [--work benchmarks/work]`` (idempotent).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from _common import REAL, REPO

TEST = ("BraTS-GLI-00000-000", "open-ms-cross-sectional/patient07",
        "open-ms-cross-sectional/patient19")
TRAIN = ("BraTS-GLI-00001-000", "BraTS-MET-00110-000", "BraTS-case-preprocessed",
         "MNI152-template", "open-ms-longitudinal-raw/patient01",
         "open-ms-longitudinal-raw/patient03", "open-ms-longitudinal-raw/patient04",
         "open-ms-longitudinal-raw/patient20")
VAL = ("BraTS-case-preprocessed", "open-ms-longitudinal-raw/patient04")
TRAIN_V2 = tuple(n for n in TRAIN if n not in VAL)


def link_cases(names: tuple[str, ...], dest: Path) -> None:
    """One folder per case under ``dest`` holding relative links to its files in ``REAL``."""
    for name in names:
        src = REAL / name
        if not src.is_dir():
            raise SystemExit(f"real_split.py: {src} is missing (is ../shared next to the repo?)")
        folder = dest / name
        folder.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.iterdir()):
            link = folder / f.name
            if not link.is_symlink():
                link.symlink_to(os.path.relpath(f, folder))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work")
    args = ap.parse_args(argv)
    link_cases(TRAIN, args.work / "real-train")
    link_cases(TEST, args.work / "real-test")
    link_cases(VAL, args.work / "real-val")
    link_cases(TRAIN_V2, args.work / "real-train-v2")
    print(f"{args.work / 'real-train'}: {len(TRAIN)} cases; {args.work / 'real-test'}: "
          f"{len(TEST)} cases; real-val: {len(VAL)}; real-train-v2: {len(TRAIN_V2)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
