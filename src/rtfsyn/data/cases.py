"""The :class:`Case` record every dataset adapter produces, and layout auto-detection."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtfsyn.errors import DatasetError
from rtfsyn.metadata import CONTRASTS, Metadata

__all__ = ["LAYOUTS", "Case", "detect_layout", "load_cases"]


@dataclass(frozen=True)
class Case:
    """One subject (or session / time point) with co-registered contrasts.

    Attributes:
        subject: case id, unique within the dataset folder that was read, namespaced by the
            sub-dataset it lies in: ``sub-01_ses-2`` (BIDS), ``BraTS-GLI-00001-000``, or the
            folder's path below the root for nested folders
            (``open-ms-cross-sectional/patient19``), so that two datasets in one folder
            never give the same id.
        images: contrast name (``T1w``, ``T2w``…) → NIfTI path.
        metadata: contrast name → acquisition :class:`Metadata`.
        site: acquisition site / center, if known.
        layout: adapter that produced the case (``bids``, ``brats``, ``ixi``, ``openms``,
            ``folder``).
        mask: brain-mask NIfTI, if the dataset has one.
        labels: tissue / lesion label map, if the dataset has one.
        info: further subject information (age, sex, …; ``participant``/``session`` where a
            dataset has several sessions per person, ``flags`` for problems found on reading).
        participant: the person the case belongs to, namespaced like ``subject``; every
            session / time point / study of one person has the same value (``sub-01`` for
            ``sub-01_ses-2``; ``BraTS-GLI-00001`` for the time points ``-000``/``-001``;
            ``open-ms-longitudinal-raw/patient01`` for its ``study1``/``study2``). Readers
            set it; None means the case is its own participant (:attr:`participant_id`).
            Splits (:mod:`rtfsyn.data.splits`) keep all cases of a participant on one side.
    """

    subject: str
    images: dict[str, Path]
    metadata: dict[str, Metadata]
    site: str | None = None
    layout: str = ""
    mask: Path | None = None
    labels: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    participant: str | None = None

    @property
    def participant_id(self) -> str:
        """The participant (person) id: :attr:`participant`, else ``info["participant"]``,
        else the case id."""
        return self.participant or str(self.info.get("participant") or "") or self.subject

    @property
    def contrasts(self) -> list[str]:
        """Available contrasts in canonical order."""
        return [c for c in CONTRASTS if c in self.images]

    def pairs(self) -> list[tuple[str, str]]:
        """All ordered (source, target) pairs of distinct available contrasts."""
        cs = self.contrasts
        return [(s, t) for s in cs for t in cs if s != t]


LAYOUTS = ("auto", "bids", "brats", "ixi", "openms", "folder")


def detect_layout(root: Path) -> str:
    """Guess the layout of a dataset folder: ``bids``, ``ixi``, ``openms``, ``brats`` or
    ``mixed``."""
    from rtfsyn.data import brats, ixi, openms

    if (root / "dataset_description.json").exists() or any(root.glob("sub-*")):
        return "bids"
    if any(ixi.parse_ixi_name(p.name) for p in root.rglob("IXI*.nii*")):
        return "ixi"
    nifti_dirs = {p.parent for p in root.rglob("*.nii*")}
    openms_dirs = set(openms.find_openms_folders(root))
    if openms_dirs and not nifti_dirs - openms_dirs:
        return "openms"
    brats_dirs = set(brats.find_brats_folders(root)) - openms_dirs
    if brats_dirs and not nifti_dirs - brats_dirs:
        return "brats"
    return "mixed"


def load_cases(path: str | Path, layout: str = "auto") -> list[Case]:
    """Read a dataset folder into :class:`Case` records.

    Args:
        path: dataset root.
        layout: ``auto`` (detect), ``bids``, ``brats``, ``ixi``, ``openms`` (the open MS data
            of Lesjak et al., see :mod:`rtfsyn.data.openms`) or ``folder`` (one case per
            folder of NIfTIs whose names contain a contrast, e.g. ``MNI152_T1_1mm.nii.gz``).
            ``auto`` on a folder mixing layouts reads BraTS, IXI, open MS and plain folders
            together.

    Raises:
        DatasetError: the folder does not exist or holds no usable case.
    """
    from rtfsyn.data import bids, brats, folder, ixi, openms

    root = Path(path)
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder: give the dataset root")
    if layout not in LAYOUTS:
        raise DatasetError(f"layout {layout!r} is unknown: use one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "bids":
        cases = bids.load_bids(root)
    elif layout == "brats":
        cases = brats.load_brats(root)
    elif layout == "ixi":
        cases = ixi.load_ixi(root)
    elif layout == "openms":
        cases = openms.load_openms(root)
    elif layout == "folder":
        cases = folder.load_folders(root)
    else:  # mixed
        openms_dirs = set(openms.find_openms_folders(root))
        # open MS longitudinal names (study1_FLAIR, study1_T2W) also look like old BraTS names
        cases = [c for c in brats.load_brats(root)
                 if not {p.parent for p in c.images.values()} & openms_dirs]
        cases += ixi.load_ixi(root)
        taken = {p.parent for c in cases for p in c.images.values()} | openms_dirs
        cases += folder.load_folders(root, exclude=taken)
        cases += openms.load_openms(root)
    if not cases:
        raise DatasetError(
            f"no cases found in {root} (layout {layout}): expected BIDS (sub-*/anat/*_T1w.nii.gz),"
            " BraTS (*-t1n.nii.gz) or IXI (IXI002-Guys-0828-T1.nii.gz) files"
        )
    seen: set[str] = set()
    for case in cases:
        if case.subject in seen:
            raise DatasetError(
                f"subject id {case.subject!r} occurs twice in {root}: give each case folder "
                "a distinct name"
            )
        seen.add(case.subject)
    return sorted(cases, key=lambda c: c.subject)


def header_voxel_size(path: Path) -> tuple[float, float, float] | None:
    """Voxel size in RAS order from a NIfTI header, data not read (None if unreadable).

    RAS order (:func:`rtfsyn.io.canonical_voxel_size`) because every volume is reoriented to
    RAS before it reaches a model: a slice-first 5×1×1 mm file gives ``(1, 1, 5)``.
    """
    import nibabel as nib

    from rtfsyn.io import canonical_voxel_size

    try:
        img = nib.load(str(path))
        sizes = canonical_voxel_size(img.affine)
    except Exception:
        return None
    if min(sizes) <= 0 or max(sizes) > 20:
        return None
    return sizes


def case_id(folder: Path, root: Path) -> str:
    """Id of the case in ``folder``: its path below ``root`` (POSIX), or the root's name.

    Nested folders keep their parents (``open-ms-cross-sectional/patient19``), so that the
    same folder name in two datasets below one root gives two ids.
    """
    if folder == root:
        return root.name or "case"
    return folder.relative_to(root).as_posix()


def strip_nii(name: str) -> str:
    """File name without ``.nii``/``.nii.gz``."""
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def basic_metadata(contrast: str, path: Path, **extra: Any) -> Metadata:
    """Metadata with only the contrast, the header voxel size and given extra fields."""
    fields: dict[str, Any] = {"contrast": contrast, "voxel_size": header_voxel_size(path)}
    fields.update({k: v for k, v in extra.items() if v is not None})
    return Metadata._build({k: v for k, v in fields.items() if v is not None})
