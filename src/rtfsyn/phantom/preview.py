"""Preview montage of a phantom cohort: ``DIR/preview.png`` (matplotlib, Agg backend).

Two subjects from different sites; for each an axial and a coronal slice of T1w, T2w,
FLAIR and PDw plus the tissue labels. Slices pass through a lesion when the subject has one,
else through the lateral ventricles and basal ganglia.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from rtfsyn.errors import RtfsynError
from rtfsyn.phantom.scanner import CONTRAST_ORDER

__all__ = ["write_preview"]

# default slice positions in MNI mm (axial z, coronal y)
_AXIAL_Z_MM = 12.0
_CORONAL_Y_MM = -8.0


def _sites(root: Path) -> dict[str, str]:
    path = root / "participants.tsv"
    if not path.exists():
        return {}
    with open(path, newline="") as fh:
        return {row["participant_id"]: row.get("site", "") for row in
                csv.DictReader(fh, delimiter="\t")}


def _pick_subjects(root: Path, subjects: list[str] | None) -> list[str]:
    available = sorted(p.name for p in root.glob("sub-*") if (p / "anat").is_dir())
    if not available:
        raise RtfsynError(f"no sub-*/anat folders in {root}: nothing to preview")
    if subjects:
        missing = [s for s in subjects if s not in available]
        if missing:
            raise RtfsynError(f"subject {missing[0]} is not in {root}")
        return list(subjects)
    sites = _sites(root)
    chosen: list[str] = []
    seen: set[str] = set()
    for sub in available:
        site = sites.get(sub, sub)
        if site not in seen:
            chosen.append(sub)
            seen.add(site)
        if len(chosen) == 2:
            break
    return chosen


def write_preview(root: str | Path, path: str | Path | None = None,
                  subjects: list[str] | None = None) -> Path:
    """Write a PNG montage of a phantom cohort (default ``root/preview.png``).

    Args:
        root: the cohort folder written by :func:`rtfsyn.phantom.make_cohort`.
        path: output PNG.
        subjects: subject ids to show (default: the first subjects of the first two sites).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtfsyn.io import load_nifti

    root = Path(root)
    out = Path(path) if path is not None else root / "preview.png"
    chosen = _pick_subjects(root, subjects)
    ncols = len(CONTRAST_ORDER) + 1
    fig, axes = plt.subplots(2 * len(chosen), ncols, figsize=(3.0 * ncols, 3.1 * 2 * len(chosen)),
                             squeeze=False, facecolor="black")
    for row, sub in enumerate(chosen):
        anat = root / sub / "anat"
        labels_img = load_nifti(anat / f"{sub}_dseg.nii.gz")
        labels = np.asarray(labels_img.dataobj).astype(np.uint8)
        inv = np.linalg.inv(labels_img.affine)
        if np.any(labels == 4):
            counts_z = (labels == 4).sum(axis=(0, 1))
            counts_y = (labels == 4).sum(axis=(0, 2))
            kz, ky = int(np.argmax(counts_z)), int(np.argmax(counts_y))
        else:
            kz = int(np.rint((inv @ [0.0, 0.0, _AXIAL_Z_MM, 1.0])[2]))
            ky = int(np.rint((inv @ [0.0, _CORONAL_Y_MM, 0.0, 1.0])[1]))
        kz = min(max(kz, 0), labels.shape[2] - 1)
        ky = min(max(ky, 0), labels.shape[1] - 1)
        volumes: list[tuple[str, np.ndarray, dict]] = []
        for contrast in CONTRAST_ORDER:
            nii = anat / f"{sub}_{contrast}.nii.gz"
            if not nii.exists():
                continue
            data = np.asarray(load_nifti(nii).dataobj)
            side = anat / f"{sub}_{contrast}.json"
            meta = json.loads(side.read_text()) if side.exists() else {}
            volumes.append((contrast, data, meta))
        volumes.append(("labels", labels.astype(np.float32), {}))
        site = ""
        for _, _, meta in volumes:
            if meta:
                site = " ".join(str(meta.get(k, "")) for k in (
                    "InstitutionName", "MagneticFieldStrength")) + " T " + " ".join(
                    str(meta.get(k, "")) for k in ("Manufacturer", "ManufacturersModelName"))
                break
        for col in range(ncols):
            for view in range(2):
                ax = axes[2 * row + view, col]
                ax.set_axis_off()
                if col >= len(volumes):
                    continue
                name, data, meta = volumes[col]
                sl = data[:, :, kz] if view == 0 else data[:, ky, :]
                if name == "labels":
                    ax.imshow(sl.T, origin="lower", cmap="viridis", vmin=0, vmax=4,
                              interpolation="nearest")
                else:
                    nz = data[data > 0]
                    vmax = float(np.percentile(nz, 99.5)) if nz.size else 1.0
                    ax.imshow(sl.T, origin="lower", cmap="gray", vmin=0, vmax=vmax,
                              interpolation="nearest")
                if view == 0:
                    title = f"{sub} {name}"
                    if meta:
                        ms = [f"TR {meta['RepetitionTime'] * 1000:g}",
                              f"TE {meta['EchoTime'] * 1000:g}"]
                        if meta.get("InversionTime"):
                            ms.append(f"TI {meta['InversionTime'] * 1000:g}")
                        title += (f"\n{meta.get('SequenceFamily', '')} {' '.join(ms)} ms"
                                  f" {meta.get('SliceThickness', '')} mm")
                    ax.set_title(title, color="white", fontsize=8)
        axes[2 * row, 0].text(-0.05, 0.5, f"{site}\naxial", color="white", fontsize=8,
                              rotation=90, va="center", ha="right",
                              transform=axes[2 * row, 0].transAxes)
        axes[2 * row + 1, 0].text(-0.05, 0.5, "coronal", color="white", fontsize=8,
                                  rotation=90, va="center", ha="right",
                                  transform=axes[2 * row + 1, 0].transAxes)
    fig.suptitle("rtfsyn phantom (simulated)", color="white")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=90, facecolor="black")
    plt.close(fig)
    tmp.replace(out)
    return out
