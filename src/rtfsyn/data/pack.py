"""Pack training data into a small, self-contained BIDS folder at one spacing.

A training run on a remote GPU machine needs its data there, often under a transfer limit,
and without the libraries some readers need (SimpleITK for the raw open-MS studies). This
module reads any mix of datasets with the normal readers and writes what training uses
(:func:`rtfsyn.training.dataset.load_subject`: canonical, resampled to ``spacing``,
co-registered, masked, normalised to [0, 1], cropped to the brain) as 8-bit BIDS:

* ``sub-<participant>[/ses-<case>]/anat/…_<T1w|T2w|FLAIR|PDw>.nii.gz`` (T1Gd as
  ``_ce-gd_T1w``), ``uint8`` with ``scl_slope = 1/255`` so that readers see [0, 1] floats;
* ``…_desc-brain_mask.nii.gz`` (the loss mask) and ``…_dseg.nii.gz`` (labels, if any);
* the JSON sidecar of each image is the case's own metadata (:meth:`Metadata.to_sidecar`),
  so protocols survive exactly; ``participants.tsv`` keeps each participant's site;
* every case of one participant becomes a session of one BIDS subject, so participant-level
  splits of the packed folder group exactly as those of the originals.

Quantisation to 8 bits changes an intensity by at most 1/510 of the 99.5th percentile,
far below MRI noise. Training re-normalises the packed images the same way, so a run on the
packed folder sees what a run on the originals would see at that spacing.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from rtfsyn import io
from rtfsyn.data.cases import Case, header_voxel_size
from rtfsyn.errors import DatasetError

__all__ = ["bids_label", "pack_cases"]

_SUFFIX = {"T1w": "T1w", "T1Gd": "ce-gd_T1w", "T2w": "T2w", "FLAIR": "FLAIR", "PDw": "PDw"}


def bids_label(text: str) -> str:
    """``text`` reduced to a BIDS label (letters and digits only)."""
    label = re.sub(r"[^A-Za-z0-9]", "", text)
    if not label:
        raise DatasetError(f"cannot make a BIDS label from {text!r}: it has no letter or digit")
    return label


def _write(path: Path, data: np.ndarray, affine: np.ndarray, scale: bool) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    if scale:
        img.header.set_slope_inter(1.0 / 255.0, 0.0)
    io.atomic_write(path, lambda tmp: nib.save(img, tmp), suffix=".nii.gz")


def pack_cases(cases: Sequence[Case], out: Path, spacing: float, tag: str = "",
               progress: bool = True, coarse_spacing: float | None = None) -> list[str]:
    """Write ``cases`` into the BIDS folder ``out`` at ``spacing`` mm (see module doc).

    Args:
        cases: cases from any reader; those with fewer than two contrasts are skipped.
        out: BIDS root (created; existing subjects of the same name are an error).
        spacing: isotropic voxel size in mm of the packed images.
        tag: prefix of every participant label (e.g. the source dataset's name), so that
            several datasets can be packed into one folder without clashes.
        coarse_spacing: spacing for cases whose native voxels are coarser than ``spacing``
            (thick-slice scans): packing them at ``spacing`` would let training take
            interpolated slices for real fine-grid targets. Default: ``spacing``.

    Returns:
        the case directories written, ``sub-…[/ses-…]``.
    """
    from rich.progress import Progress

    from rtfsyn.training.dataset import load_subject

    if not spacing > 0:
        raise DatasetError(f"spacing={spacing!r} must be > 0 mm")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    usable = [c for c in cases if len(c.contrasts) >= 2]
    per_participant: dict[str, list[Case]] = {}
    for case in usable:
        per_participant.setdefault(case.participant_id, []).append(case)
    rows: dict[str, str] = {}
    written: list[str] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("packing", total=len(usable))
        for participant, group in per_participant.items():
            sub = f"sub-{bids_label(tag + participant)}"
            if (out / sub).exists():
                raise DatasetError(f"{out / sub} exists: pack into an empty folder or use "
                                   "another --tag")
            rows[sub] = group[0].site or "n/a"
            for case in group:
                ses = f"ses-{bids_label(case.subject)}" if len(group) > 1 else None
                anat = out / sub / (ses or "") / "anat"
                anat.mkdir(parents=True, exist_ok=True)
                stem = f"{sub}_{ses}" if ses else sub
                native = max(header_voxel_size(case.images[case.contrasts[0]]) or (spacing,))
                use = spacing if coarse_spacing is None or native <= spacing * 1.05 \
                    else coarse_spacing
                subj = load_subject(case, use)
                affine = np.diag([*subj.spacing, 1.0])
                for contrast, vol in subj.volumes.items():
                    q = np.clip(np.rint(vol * 255.0), 0, 255).astype(np.uint8)
                    name = f"{stem}_{_SUFFIX[contrast]}"
                    _write(anat / f"{name}.nii.gz", q, affine, scale=True)
                    side = case.metadata[contrast].to_sidecar()
                    side.pop("VoxelSize", None)
                    side["PackedFrom"] = case.subject
                    text = json.dumps(side, indent=1)
                    io.atomic_write(anat / f"{name}.json",
                                    lambda tmp, t=text: Path(tmp).write_text(t))
                _write(anat / f"{stem}_desc-brain_mask.nii.gz",
                       subj.mask.astype(np.uint8), affine, scale=False)
                if subj.labels is not None:
                    _write(anat / f"{stem}_dseg.nii.gz", subj.labels.astype(np.uint8), affine,
                           scale=False)
                written.append(f"{sub}/{ses}" if ses else sub)
                bar.advance(task)
    tsv = out / "participants.tsv"
    old: dict[str, str] = {}
    if tsv.exists():
        with open(tsv, newline="") as fh:
            old = {r["participant_id"]: r.get("site", "n/a")
                   for r in csv.DictReader(fh, delimiter="\t")}
    old.update(rows)
    lines = ["participant_id\tsite"] + [f"{k}\t{v}" for k, v in sorted(old.items())]
    io.atomic_write(tsv, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    desc = out / "dataset_description.json"
    if not desc.exists():
        io.atomic_write(desc, lambda tmp: Path(tmp).write_text(json.dumps(
            {"Name": "rtfsyn packed training data", "BIDSVersion": "1.8.0",
             "GeneratedBy": [{"Name": "rtfsyn.data.pack"}]}, indent=1)))
    return written
