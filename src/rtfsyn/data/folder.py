"""Plain-folder adapter: one case per folder of NIfTIs whose names name a contrast.

A file name is split at ``_``, ``-`` and ``.``; a token that is a contrast alias (``T1``,
``T1w``, ``T2``, ``FLAIR``, ``PD``…) gives its contrast, ``mask`` marks a brain mask and
``seg``/``dseg``/``labels`` a label map (e.g. ``MNI152_T1_1mm_brain.nii.gz`` → T1w,
``MNI152_T1_1mm_brain_mask.nii.gz`` → mask). A JSON sidecar of the same stem is read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from rtfsyn.data.cases import Case, basic_metadata, case_id, header_voxel_size, strip_nii
from rtfsyn.errors import MetadataError
from rtfsyn.metadata import Metadata, normalize_contrast

__all__ = ["classify_file", "load_folders"]


def classify_file(name: str) -> str | None:
    """Contrast, ``"mask"``, ``"labels"`` or None for a NIfTI file name."""
    stem = strip_nii(name)
    if stem == name:
        return None
    tokens = [t for t in re.split(r"[_\-.]", stem) if t]
    lowered = {t.lower() for t in tokens}
    if lowered & {"mask", "brainmask"}:
        return "mask"
    if lowered & {"seg", "dseg", "labels", "label", "aseg"}:
        return "labels"
    for token in tokens:
        try:
            return normalize_contrast(token)
        except MetadataError:
            continue
    return None


def load_folders(root: Path, exclude: Iterable[Path] = ()) -> list[Case]:
    """One :class:`Case` per folder (root included) with at least one contrast file."""
    skip = {Path(p) for p in exclude}
    cases = []
    folders = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    for folder in folders:
        if folder in skip:
            continue
        images: dict[str, Path] = {}
        metadata: dict[str, Metadata] = {}
        mask = labels = None
        for nii in sorted(folder.glob("*.nii*")):
            kind = classify_file(nii.name)
            if kind == "mask":
                mask = mask or nii
            elif kind == "labels":
                labels = labels or nii
            elif kind and kind not in images:
                sidecar = nii.parent / f"{strip_nii(nii.name)}.json"
                if sidecar.exists():
                    meta = Metadata.from_sidecar(sidecar, contrast=kind)
                    if vox := header_voxel_size(nii):  # RAS order, as the model sees it
                        meta = meta.with_updates(voxel_size=vox)
                else:
                    meta = basic_metadata(kind, nii)
                images[kind] = nii
                metadata[kind] = meta
        if images:
            subject = case_id(folder, root)
            site = next((m.site for m in metadata.values() if m.site), None)
            cases.append(Case(subject, images, metadata, site=site, layout="folder", mask=mask,
                              labels=labels))
    return cases
