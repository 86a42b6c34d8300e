"""BraTS adapter: case folders with ``<ID>-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f`` (BraTS 2023+),
bare ``t1n.nii.gz``…, or the older ``<ID>_t1.nii.gz``, ``_t1ce``, ``_t2``, ``_flair`` names.

BraTS cases carry no acquisition sidecars: metadata holds the contrast and the header voxel
size; the site is unknown (the dataset family, e.g. ``BraTS-GLI``, is kept in ``info``).
"""

from __future__ import annotations

import re
from pathlib import Path

from rtfsyn.data.cases import Case, basic_metadata, case_id, strip_nii

__all__ = ["brats_contrast", "brats_participant", "find_brats_folders", "load_brats"]

_BRATS_SUFFIX = {
    "t1n": "T1w", "t1": "T1w",
    "t1c": "T1Gd", "t1ce": "T1Gd", "t1gd": "T1Gd",
    "t2w": "T2w", "t2": "T2w",
    "t2f": "FLAIR", "flair": "FLAIR",
}
_LABEL_SUFFIX = {"seg", "label", "labels"}
_MASK_SUFFIX = {"mask", "brainmask"}
_SPLIT = re.compile(r"^(?:(?P<id>.+)[-_])?(?P<suffix>[A-Za-z0-9]+)$")


def brats_contrast(file_name: str) -> tuple[str | None, str]:
    """``("T1w", "t1n")`` for ``BraTS-GLI-00001-000-t1n.nii.gz``; kind ``seg``/``mask`` or None."""
    stem = strip_nii(file_name)
    if stem == file_name:
        return None, ""
    m = _SPLIT.match(stem)
    if not m:
        return None, ""
    suffix = m.group("suffix").lower()
    if suffix in _BRATS_SUFFIX:
        return _BRATS_SUFFIX[suffix], suffix
    if suffix in _LABEL_SUFFIX:
        return "seg", suffix
    if suffix in _MASK_SUFFIX:
        return "mask", suffix
    return None, suffix


def brats_participant(subject: str) -> str:
    """The patient of a BraTS case id: the time point dropped (``BraTS-GLI-00001-001`` →
    ``BraTS-GLI-00001``); other ids are their own participant."""
    m = re.match(r"^(.*BraTS-[A-Za-z]+-\d+)-\d{3}$", subject)
    return m.group(1) if m else subject


def find_brats_folders(root: Path) -> list[Path]:
    """Folders (root included) holding ≥ 2 BraTS-named contrast files with a BraTS suffix."""
    out = []
    for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        names = [p.name for p in folder.glob("*.nii*")]
        hits = {brats_contrast(n)[1] for n in names if brats_contrast(n)[0] not in (None, "seg",
                                                                                     "mask")}
        # bare/new-style BraTS suffixes (t1n, t1c, t2w, t2f) are specific enough; the older
        # t1/t2/flair names need at least two of them
        if hits & {"t1n", "t1c", "t2f", "t1ce"} or (len(hits) >= 2 and "flair" in hits):
            out.append(folder)
    return out


def load_brats(root: Path) -> list[Case]:
    """One :class:`Case` per BraTS case folder below (or at) ``root``."""
    cases = []
    for folder in find_brats_folders(root):
        images: dict[str, Path] = {}
        labels = mask = None
        for nii in sorted(folder.glob("*.nii*")):
            contrast, _ = brats_contrast(nii.name)
            if contrast == "seg":
                labels = nii
            elif contrast == "mask":
                mask = nii
            elif contrast and contrast not in images:
                images[contrast] = nii
        if not images:
            continue
        subject = case_id(folder, root)
        family = re.match(r"^(BraTS-[A-Z]+)", folder.name)
        metadata = {c: basic_metadata(c, p) for c, p in images.items()}
        info = {"dataset": family.group(1)} if family else {}
        cases.append(Case(subject, images, metadata, site=None, layout="brats", mask=mask,
                          labels=labels, info=info, participant=brats_participant(subject)))
    return cases
