"""``rtfsyn inspect``: a table of subjects × contrasts with key metadata and problem flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from rich.console import Console
from rich.table import Table

from rtfsyn.data.cases import Case, load_cases
from rtfsyn.metadata import CONTRASTS, Metadata

__all__ = ["CaseReport", "check_case", "inspect_dataset"]


@dataclass
class CaseReport:
    """What :func:`check_case` found about one case."""

    case: Case
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    flags: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.flags


def check_case(case: Case, atol_mm: float = 1e-3) -> CaseReport:
    """Flag unpaired cases (one contrast), contrasts on a different grid (mis-registered) and
    what the reader flagged (``case.info["flags"]``)."""
    report = CaseReport(case)
    report.flags.extend(case.info.get("flags", []))  # problems the reader found (open MS)
    if len(case.images) < 2:
        report.flags.append("unpaired (1 contrast)")
    grids: dict[str, tuple[tuple[int, ...], np.ndarray]] = {}
    for contrast, path in case.images.items():
        try:
            img = nib.load(str(path))
        except Exception as exc:
            report.flags.append(f"{contrast} unreadable ({type(exc).__name__})")
            continue
        grids[contrast] = (tuple(int(s) for s in img.shape), img.affine)
    if grids:
        ref_name = next(iter(grids))
        ref_shape, ref_aff = grids[ref_name]
        report.shape = ref_shape
        report.spacing = tuple(
            round(float(s), 2) for s in np.sqrt((ref_aff[:3, :3] ** 2).sum(axis=0))
        )
        off = [
            c for c, (shape, aff) in grids.items()
            if shape[:3] != ref_shape[:3] or not np.allclose(aff, ref_aff, atol=atol_mm)
        ]
        if off:
            report.flags.append(f"different grid from {ref_name}: {', '.join(off)}")
        if any(len(shape) > 3 and any(s > 1 for s in shape[3:]) for shape, _ in grids.values()):
            report.flags.append("4-D image")
    report.flags.extend(_implausible_flags(case))
    if case.mask is not None and grids:
        try:
            mimg = nib.load(str(case.mask))
            if mimg.shape[:3] != report.shape[:3]:
                report.flags.append("mask on a different grid")
        except Exception:
            report.flags.append("mask unreadable")
    return report


def _implausible_flags(case: Case) -> list[str]:
    """``implausible T2w TE=0.09 ms`` per value out of :data:`rtfsyn.protocols.PLAUSIBLE`.

    Only flagged (training never refuses a sidecar for this; synthesis does, see
    ``--force-metadata``).
    """
    from rtfsyn.protocols import plausibility_problems

    return [f"implausible {contrast} {problem.split(' is implausible')[0]}"
            for contrast, meta in case.metadata.items()
            for problem in plausibility_problems(meta)]


def print_field_status(reports: list[CaseReport], console: Console, detail: bool) -> None:
    """Which acquisition fields are known, assumed (typical protocol) or missing.

    One summary line; with ``detail`` a table of subject × contrast (``rtfsyn inspect
    --fields``). *Assumed* = not in the data: a synthesis of that contrast fills it from
    :mod:`rtfsyn.protocols`; *missing* = reaches the model as its null token.
    """
    from rtfsyn.protocols import field_status

    rows = []
    for r in reports:
        for contrast in r.case.contrasts:
            meta = r.case.metadata.get(contrast) or Metadata.from_dict({"contrast": contrast})
            st = field_status(meta)
            rows.append((r.case.subject, contrast,
                         *(" ".join(k for k, v in st.items() if v == kind) or "-"
                           for kind in ("known", "assumed", "missing"))))
    n_known = sum("TR" in row[2].split() for row in rows)
    console.print(
        f"acquisition fields: TR known for {n_known} of {len(rows)} images, assumed (typical "
        f"protocol at synthesis) for {len(rows) - n_known}"
        + ("" if detail else "; --fields lists known / assumed / missing per image"),
        highlight=False,
    )
    if detail:
        table = Table(show_lines=False)
        for name in ("subject", "contrast", "known", "assumed", "missing"):
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def _meta_cell(meta: Metadata) -> str:
    parts = []
    tr = meta.repetition_time
    te = meta.echo_time
    if tr is not None or te is not None:
        parts.append(
            "/".join("-" if v is None else f"{v * 1000:g}" for v in (tr, te))
        )
    if meta.inversion_time is not None:
        parts.append(f"TI {meta.inversion_time * 1000:g}")
    return "✓ " + " ".join(parts) if parts else "✓"


def _scanner(case: Case) -> str:
    for meta in case.metadata.values():
        if meta.field_strength or meta.manufacturer:
            field_txt = f"{meta.field_strength:g}T " if meta.field_strength else ""
            return f"{field_txt}{meta.manufacturer or ''}".strip()
    return "-"


#: below this terminal width ``inspect`` prints the narrow table (``--wide`` forces the full one)
WIDE_MIN_COLUMNS = 120


def inspect_dataset(
    path: str | Path, layout: str = "auto", console: Console | None = None,
    wide: bool | None = None, fields: bool = False,
) -> list[CaseReport]:
    """Load a dataset, check every case, print a table, and return the reports.

    ``wide=None`` picks the full table (layout, scanner, TR/TE per contrast) on terminals of
    at least 120 columns and a narrow one (subject, site, contrasts, grid, flags) that stays
    readable in 80 columns otherwise.

    ``fields``: also list which acquisition fields of each image are known, assumed or
    missing (:func:`print_field_status`).
    """
    console = console or Console()
    cases = load_cases(path, layout=layout)
    reports = [check_case(c) for c in cases]
    present = [c for c in CONTRASTS if any(c in r.case.images for r in reports)]
    if wide is None:
        wide = console.width >= WIDE_MIN_COLUMNS
    if wide:  # natural width, also beyond the terminal (e.g. for `| less -S`)
        roomy = Console(file=console.file, width=max(console.width, 2 * WIDE_MIN_COLUMNS),
                        force_terminal=console.is_terminal, no_color=console.no_color)
        roomy.print(_wide_table(path, reports, present))
    else:
        console.print(_narrow_table(path, reports, present))
    counts = ", ".join(
        f"{c}: {sum(c in r.case.images for r in reports)}" for c in present
    )
    n_pairs = sum(len(r.case.pairs()) for r in reports if r.ok)
    n_flagged = sum(not r.ok for r in reports)
    console.print(
        f"{len(reports)} cases ({counts}); {n_pairs} ordered training pairs in usable cases; "
        f"{n_flagged} flagged"
    )
    print_field_status(reports, console, fields)
    return reports


def _grid_cell(r: CaseReport, compact: bool = False) -> str:
    if r.shape is None or r.spacing is None:
        return "-"
    sep = "" if compact else " "
    return ("×".join(map(str, r.shape[:3])) + f"{sep}@{sep}"
            + "×".join(f"{s:g}" for s in r.spacing))


def _narrow_table(path: str | Path, reports: list[CaseReport], present: list[str]) -> Table:
    """Subject, site, one ✓ column per contrast, grid, flags: readable in 80 columns."""
    table = Table(title=f"{path}: {len(reports)} cases", show_lines=False,
                  caption="--wide adds layout, scanner and TR/TE per contrast")
    table.add_column("subject", overflow="fold", ratio=3)
    table.add_column("site", overflow="fold", ratio=1)
    for c in present:
        table.add_column(c, justify="center", no_wrap=True)
    table.add_column("grid", overflow="fold", ratio=2)
    table.add_column("flags", style="yellow", overflow="fold", ratio=3)
    for r in reports:
        c = r.case
        table.add_row(
            c.subject, c.site or "-",
            *["✓" if k in c.images else "[dim]·[/]" for k in present],
            _grid_cell(r, compact=True), "; ".join(r.flags) or "[green]ok[/]",
        )
    return table


def _wide_table(path: str | Path, reports: list[CaseReport], present: list[str]) -> Table:
    table = Table(title=f"{path}: {len(reports)} cases", show_lines=False)
    table.add_column("subject", overflow="fold")
    show_pid = any(r.case.participant_id != r.case.subject for r in reports)
    if show_pid:  # sessions / time points: the person they belong to (splits keep it whole)
        table.add_column("participant", overflow="fold")
    table.add_column("layout")
    table.add_column("site", overflow="fold")
    table.add_column("scanner")
    for c in present:
        table.add_column(f"{c}\nTR/TE ms", justify="center")
    table.add_column("grid")
    table.add_column("flags", style="yellow", overflow="fold")
    for r in reports:
        c = r.case
        table.add_row(
            c.subject, *([c.participant_id] if show_pid else []), c.layout, c.site or "-",
            _scanner(c),
            *[_meta_cell(c.metadata[k]) if k in c.metadata else "[dim]·[/]" for k in present],
            _grid_cell(r),
            "; ".join(r.flags) or "[green]ok[/]",
        )
    return table
