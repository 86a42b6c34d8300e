"""IXI adapter: ``IXI002-Guys-0828-T1.nii.gz`` (also ``-T2``, ``-PD``), anywhere below the root.

The site comes from the file name; field strength and vendor of the three IXI sites are those
published with the dataset (Guys: Philips 1.5 T, HH: Philips 3 T, IOP: GE 1.5 T).
"""

from __future__ import annotations

import re
from pathlib import Path

from rtfsyn.data.cases import Case, basic_metadata

__all__ = ["IXI_SITES", "load_ixi", "parse_ixi_name"]

IXI_SITES: dict[str, dict[str, object]] = {
    "Guys": {"field_strength": 1.5, "manufacturer": "Philips", "site": "Guys"},
    "HH": {"field_strength": 3.0, "manufacturer": "Philips", "site": "HH"},
    "IOP": {"field_strength": 1.5, "manufacturer": "GE", "site": "IOP"},
}
_IXI = re.compile(r"^(IXI\d{3})-(Guys|HH|IOP)-(\d{4})-(T1|T2|PD)\.nii(\.gz)?$")
_CONTRAST = {"T1": "T1w", "T2": "T2w", "PD": "PDw"}


def parse_ixi_name(name: str) -> tuple[str, str, str] | None:
    """``("IXI002", "Guys", "T1w")`` for an IXI file name, else None."""
    m = _IXI.match(name)
    if not m:
        return None
    return m.group(1), m.group(2), _CONTRAST[m.group(4)]


def load_ixi(root: Path) -> list[Case]:
    """Group IXI files by subject id into :class:`Case` records."""
    found: dict[str, dict[str, Path]] = {}
    sites: dict[str, str] = {}
    for path in sorted(root.rglob("IXI*.nii*")):
        parsed = parse_ixi_name(path.name)
        if parsed is None:
            continue
        subject, site, contrast = parsed
        found.setdefault(subject, {}).setdefault(contrast, path)
        sites[subject] = site
    cases = []
    for subject, images in sorted(found.items()):
        site = sites[subject]
        metadata = {c: basic_metadata(c, p, **IXI_SITES[site]) for c, p in images.items()}
        cases.append(Case(subject, images, metadata, site=site, layout="ixi"))
    return cases
