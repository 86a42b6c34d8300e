"""BIDS adapter: ``sub-*/[ses-*/]anat/*_<suffix>.nii.gz`` with JSON sidecars.

Suffixes ``T1w``, ``T2w``, ``FLAIR``, ``PDw`` map to contrasts; ``T1w`` with a contrast-agent
entity (``ce-gd``, ``ce-gadolinium``…) maps to ``T1Gd``. Sidecar inheritance: a top-level
``<suffix>.json`` (or ``[ce-…_]<suffix>.json``) is overlaid by the file's own sidecar.
``participants.tsv`` gives site (column ``site``, ``center`` or ``institution``), age and sex.
Brain masks ``*_desc-brain_mask.nii.gz`` and label maps ``*_dseg.nii.gz`` are picked up.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from rtfsyn.data.cases import Case, header_voxel_size, strip_nii
from rtfsyn.errors import DatasetError, MetadataError
from rtfsyn.metadata import Metadata

__all__ = ["load_bids", "read_participants"]

_SUFFIXES = {"T1w": "T1w", "T2w": "T2w", "FLAIR": "FLAIR", "PDw": "PDw", "PD": "PDw"}


def read_participants(root: Path) -> dict[str, dict[str, str]]:
    """``participants.tsv`` as ``{participant_id: {column: value}}`` (empty if absent)."""
    path = root / "participants.tsv"
    if not path.exists():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    out: dict[str, dict[str, str]] = {}
    for row in rows:
        pid = row.get("participant_id")
        if pid:
            out[pid if pid.startswith("sub-") else f"sub-{pid}"] = {
                k: v for k, v in row.items() if v not in (None, "", "n/a")
            }
    return out


def _entities(stem: str) -> tuple[dict[str, str], str]:
    parts = stem.split("_")
    ents = dict(p.split("-", 1) for p in parts[:-1] if "-" in p)
    return ents, parts[-1]


def _inherited_sidecar(root: Path, ents: dict[str, str], suffix: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    candidates = [root / f"{suffix}.json"]
    if "ce" in ents:
        candidates.append(root / f"ce-{ents['ce']}_{suffix}.json")
    for cand in candidates:
        if cand.exists():
            data.update(_read_json(cand))
    return data


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"sidecar {path} is not valid JSON ({exc.msg}, line {exc.lineno})"
        ) from None
    if not isinstance(data, dict):
        raise DatasetError(f"sidecar {path} must hold a JSON object")
    return data


def load_bids(root: Path) -> list[Case]:
    """Read every subject / session of a BIDS dataset into :class:`Case` records."""
    participants = read_participants(root)
    cases: list[Case] = []
    for anat in sorted(root.glob("sub-*/anat")) + sorted(root.glob("sub-*/ses-*/anat")):
        sub = anat.parts[-2] if anat.parts[-2].startswith("sub-") else anat.parts[-3]
        ses = anat.parts[-2] if anat.parts[-2].startswith("ses-") else None
        subject = f"{sub}_{ses}" if ses else sub
        info = dict(participants.get(sub, {}))
        site = info.get("site") or info.get("center") or info.get("institution")
        images: dict[str, Path] = {}
        metadata: dict[str, Metadata] = {}
        mask = labels = None
        for nii in sorted(anat.glob("*.nii*")):
            stem = strip_nii(nii.name)
            if stem == nii.name:
                continue
            ents, suffix = _entities(stem)
            if suffix == "mask" and ents.get("desc", "").lower() in ("brain", "brainmask"):
                mask = nii
                continue
            if suffix == "dseg":
                labels = nii
                continue
            if suffix not in _SUFFIXES:
                continue
            contrast = _SUFFIXES[suffix]
            if contrast == "T1w" and ents.get("ce", "").lower() in (
                "gd", "gadolinium", "gadoterate", "contrast", "gdcontrast", "gado"
            ):
                contrast = "T1Gd"
            if contrast in images:  # several runs: keep the first (sorted)
                continue
            sidecar = _inherited_sidecar(root, ents, suffix)
            own = anat / f"{stem}.json"
            if own.exists():
                sidecar.update(_read_json(own))
            fields_extra: dict[str, Any] = {}
            if "age" in info:
                fields_extra["PatientAge"] = _float_or_none(info["age"])
            if "sex" in info:
                fields_extra["PatientSex"] = info["sex"]
            if site and not sidecar.get("InstitutionName"):
                fields_extra["InstitutionName"] = site
            try:
                meta = Metadata.from_sidecar({**fields_extra, **sidecar}, contrast=contrast)
                vox = header_voxel_size(nii)  # RAS order, the grid the model sees
                if vox is not None:
                    meta = meta.with_updates(voxel_size=vox)
            except MetadataError as exc:
                raise DatasetError(f"{nii}: {exc}") from None
            images[contrast] = nii
            metadata[contrast] = meta
            if not site and meta.site:
                site = meta.site
        if images:
            cases.append(Case(subject, images, metadata, site=site, layout="bids", mask=mask,
                              labels=labels, info=info, participant=sub))
    return cases


def _float_or_none(value: str) -> float | None:
    m = re.match(r"\s*([0-9.]+)", str(value))
    return float(m.group(1)) if m else None
