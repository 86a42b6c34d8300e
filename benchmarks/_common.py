"""What the benchmark scripts share: the data they use, the test split, and how a result
names the command and the machine that produced it."""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
TASKS = [("T1w", "T2w"), ("T1w", "FLAIR"), ("T1w", "PDw"), ("T1w", "T1Gd")]
HOLDOUT_SITE = "SiteD"


def machine() -> str:
    """OS, CPU, torch threads and GPU, e.g. ``Linux x86_64, 2 threads, no GPU``."""
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.system()} {cpu}, {torch.get_num_threads()} threads, {gpu}"


def command_line(script: str, argv: list[str] | None) -> str:
    """The command as typed: ``python benchmarks/<script> <args>`` (``sys.argv`` if None)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"benchmarks/{script}", *args])


def split_rows(rows: list[Any]) -> dict[str, list[Any]]:
    """Evaluation rows by split: test participants of the training sites (and real test
    cases), the held-out site (zero-shot), and validation cases if they were included on
    request (never mixed with test rows)."""
    test = [r for r in rows if getattr(r, "split", "test") == "test"]
    out = {"test": [r for r in test if r.site != HOLDOUT_SITE],
           f"test, held-out site ({HOLDOUT_SITE})": [r for r in test if r.site == HOLDOUT_SITE],
           "validation (not test)": [r for r in rows if getattr(r, "split", "") == "validation"]}
    return {k: v for k, v in out.items() if v}
