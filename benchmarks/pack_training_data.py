"""Pack training datasets into one small 8-bit BIDS folder at one spacing (for a remote GPU).

Reads each ``--data`` folder with rtfsyn's readers (any layout; raw open-MS studies are
aligned with SimpleITK here, so the GPU machine needs no SimpleITK) and writes what training
uses — see :mod:`rtfsyn.data.pack`. Each dataset's participants are prefixed by its folder
name, so several datasets share one output folder.

Usage::

    python benchmarks/pack_training_data.py --out DIR --spacing 2 --data A --data B ...
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from rtfsyn.data.cases import load_cases
from rtfsyn.data.pack import pack_cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--spacing", type=float, required=True)
    ap.add_argument("--data", type=Path, action="append", required=True)
    ap.add_argument("--coarse-spacing", type=float, default=None,
                    help="spacing for cases whose native voxels are coarser than --spacing")
    ap.add_argument("--exclude-site", action="append", default=[],
                    help="leave out the cases of this site (e.g. a held-out test site)")
    ap.add_argument("--stripped-only", action="store_true",
                    help="leave out cases that say they are not skull-stripped (the raw "
                         "open-MS heads, whose loss mask is a head mask)")
    ap.add_argument("--exclude-anatomy", action="append", default=[], metavar="CASE",
                    help="leave out simulations whose participants.tsv 'anatomy' is CASE "
                         "(a validation or test participant's anatomy)")
    ap.add_argument("--max-cases", type=int, default=0,
                    help="at most this many cases per dataset (0: all), in reading order")
    args = ap.parse_args(argv)
    for root in args.data:
        cases = [c for c in load_cases(root) if c.site not in args.exclude_site]
        if args.stripped_only:
            cases = [c for c in cases if (c.info or {}).get("skull_stripped", True)]
        if args.exclude_anatomy:
            cases = [c for c in cases
                     if (c.info or {}).get("anatomy") not in args.exclude_anatomy]
        if args.max_cases:
            cases = cases[: args.max_cases]
        written = pack_cases(cases, args.out, args.spacing, tag=root.absolute().name,
                             coarse_spacing=args.coarse_spacing)
        print(f"{root}: {len(written)} cases packed")
    size = subprocess.run(["du", "-sh", str(args.out)], capture_output=True, text=True).stdout
    print(f"{args.out}: {size.split()[0] if size else '?'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
