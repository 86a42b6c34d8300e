"""Readers for the open MS data of Lesjak et al. (github muschellij2/open_ms_data).

Two layouts:

* **cross-sectional** (``cross_sectional/MNI/patientNN``): ``T1_*.nii.gz`` (T1w),
  ``T1POST_*`` (T1Gd), ``T2_*``, ``FLAIR_*`` and a ``GOLD_STANDARD_*`` lesion mask, all
  co-registered, skull-stripped and in MNI space (182×218×182, 1 mm). Read as they are: one
  :class:`Case` per patient, the lesion mask as ``labels``.
* **longitudinal raw** (``longitudinal/raw/patientNN``): clinical multi-slice scans as acquired
  (``studyN_{T1W,T2W,FLAIR}.nii.gz``, 3–4 mm slices, not skull-stripped, each on its own grid)
  with ITK transforms ``studyN_{T1W,T2W}_intrastudy_to_FLAIR.txt``. One :class:`Case` per study
  (session); every contrast of a study is put on that study's FLAIR grid with SimpleITK
  (``sitk.Resample(moving, flair, transform)``: the files map FLAIR-space points to the moving
  image, which is the direction ``Resample`` wants; checked on the data, see
  :func:`normalized_mutual_information` and ``tests/data/test_openms.py``). A contrast with no
  transform on another grid is registered rigidly (SimpleITK, Mattes mutual information); if
  that fails it is left out of the case and the case says so in ``info["flags"]``.

Loss mask for these unstripped heads: an **estimated brain mask** (:func:`brain_mask_in_head`,
since 2026-11-26: the intracranial region inside the head mask, cut from the scalp at the dark
skull and at the T1w's bright fat), written as the case's ``mask``, so training and
evaluation normalise intensities and take losses inside the brain, as for the skull-stripped
cases. The **head mask** it starts from (Otsu threshold of every aligned contrast, united,
closed, holes filled slice by slice, largest component, intersected with the field of view
that every contrast covers after resampling) is kept in ``info["head_mask"]``; it was the
case's mask before (scalp included), and is used when the estimate fails
(``info["mask"]`` says which one the case has). The estimate is a morphological heuristic,
not a skull-stripping tool (none is part of the stack): it misses some cortex next to thin
skull and stops at the skull base.
``info["skull_stripped"]`` is False for these cases so a caller can leave them out.

Resampled volumes and masks are cached under :func:`user_cache_dir` (``$RTFSYN_CACHE``, else
``$XDG_CACHE_HOME/rtfsyn``, else ``~/.cache/rtfsyn``), keyed by a hash of the input bytes;
never beside the data.

Subject ids are namespaced by dataset (``openms-cs-patient07``,
``openms-long-patient01-study1``); ``info`` holds ``dataset``, ``participant`` (the patient:
both studies of one patient share it) and ``session``. Acquisition parameters are not
published with the files, so metadata holds only the contrast and the voxel size.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from rtfsyn.data.cases import Case, basic_metadata
from rtfsyn.errors import DatasetError

__all__ = [
    "align_study",
    "brain_mask_in_head",
    "find_openms_folders",
    "head_mask",
    "load_openms",
    "normalized_mutual_information",
    "openms_kind",
    "user_cache_dir",
]

#: bumped when the cached files would change
CACHE_VERSION = "openms-3"

_CROSS = re.compile(r"^(T1POST|T1|T2|FLAIR|GOLD_STANDARD)_.*\.nii(\.gz)?$")
_CROSS_CONTRAST = {"T1": "T1w", "T1POST": "T1Gd", "T2": "T2w", "FLAIR": "FLAIR"}
_LONG_IMAGE = re.compile(r"^(study\d+)_(T1W|T2W|FLAIR)\.nii(\.gz)?$", re.IGNORECASE)
_LONG_TRANSFORM = re.compile(r"^(study\d+)_(T1W|T2W)_intrastudy_to_FLAIR\.txt$", re.IGNORECASE)
_LONG_CONTRAST = {"T1W": "T1w", "T2W": "T2w", "FLAIR": "FLAIR"}
_LONG_ORDER = ("FLAIR", "T1w", "T2w")


def user_cache_dir() -> Path:
    """``$RTFSYN_CACHE``, else ``$XDG_CACHE_HOME/rtfsyn``, else ``~/.cache/rtfsyn``."""
    if os.environ.get("RTFSYN_CACHE"):
        return Path(os.environ["RTFSYN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "rtfsyn"


# --------------------------------------------------------------------------- detection
def openms_kind(folder: Path) -> str | None:
    """``"cross"``, ``"longitudinal"`` or None for one folder (not recursive)."""
    names = [p.name for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    cross = {m.group(1) for n in names if (m := _CROSS.match(n))}
    # T1POST or the GOLD_STANDARD mask make the layout specific; plain T1_/T2_ names are not
    if len(cross & set(_CROSS_CONTRAST)) >= 2 and cross & {"T1POST", "GOLD_STANDARD"}:
        return "cross"
    if any(_LONG_TRANSFORM.match(n) for n in names) and any(_LONG_IMAGE.match(n)
                                                             for n in names):
        return "longitudinal"
    return None


def find_openms_folders(root: Path) -> dict[Path, str]:
    """Folders (root included) of either open MS layout → ``"cross"``/``"longitudinal"``."""
    root = Path(root)
    out = {}
    for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        kind = openms_kind(folder)
        if kind:
            out[folder] = kind
    return out


def load_openms(root: Path, cache: Path | None = None) -> list[Case]:
    """One :class:`Case` per cross-sectional patient and per longitudinal study below ``root``.

    Args:
        root: dataset folder (searched recursively).
        cache: where resampled volumes go (default :func:`user_cache_dir`).
    """
    cases: list[Case] = []
    for folder, kind in find_openms_folders(root).items():
        if kind == "cross":
            cases.append(_cross_case(folder))
        else:
            cases.extend(_longitudinal_cases(folder, cache or user_cache_dir()))
    return cases


# --------------------------------------------------------------------------- cross-sectional
def _cross_case(folder: Path) -> Case:
    images: dict[str, Path] = {}
    labels = None
    for nii in sorted(folder.iterdir()):
        m = _CROSS.match(nii.name)
        if not m:
            continue
        if m.group(1) == "GOLD_STANDARD":
            labels = nii
        else:
            images[_CROSS_CONTRAST[m.group(1)]] = nii
    subject = f"openms-cs-{folder.name}"
    info: dict[str, Any] = {
        "dataset": "openms-cs", "participant": subject, "session": None,
        "skull_stripped": True, "space": "MNI", "labels_kind": "white-matter lesion mask",
    }
    metadata = {c: basic_metadata(c, p) for c, p in images.items()}
    return Case(subject, images, metadata, site=None, layout="openms", labels=labels, info=info)


# --------------------------------------------------------------------------- longitudinal
def _longitudinal_cases(folder: Path, cache: Path) -> list[Case]:
    studies: dict[str, dict[str, Path]] = {}
    transforms: dict[str, dict[str, Path]] = {}
    for f in sorted(folder.iterdir()):
        if m := _LONG_IMAGE.match(f.name):
            studies.setdefault(m.group(1).lower(), {})[_LONG_CONTRAST[m.group(2).upper()]] = f
        elif m := _LONG_TRANSFORM.match(f.name):
            transforms.setdefault(m.group(1).lower(), {})[_LONG_CONTRAST[m.group(2).upper()]] = f
    participant = f"openms-long-{folder.name}"
    cases = []
    for study in sorted(studies):
        aligned = align_study(studies[study], transforms.get(study, {}), cache)
        images = aligned["images"]
        info: dict[str, Any] = {
            "dataset": "openms-long", "participant": participant, "session": study,
            "skull_stripped": False, "reference": aligned["reference"],
            "alignment": aligned["alignment"], "flags": aligned["flags"],
            "acquired": {c: str(p) for c, p in studies[study].items()},
            "head_mask": str(aligned["head_mask"]),
            "mask": ("estimated brain" if aligned["mask"] != aligned["head_mask"]
                     else "head (the brain estimate failed)"),
        }
        metadata = {c: basic_metadata(c, p) for c, p in images.items()}
        cases.append(Case(f"{participant}-{study}", images, metadata, site=None,
                          layout="openms", mask=aligned["mask"], info=info))
    return cases


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256(CACHE_VERSION.encode())
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:20]


def align_study(
    images: dict[str, Path], transforms: dict[str, Path], cache: Path
) -> dict[str, Any]:
    """Put every contrast of one study on the reference grid (FLAIR if present).

    Args:
        images: contrast → acquired NIfTI.
        transforms: contrast → ITK transform file into the FLAIR space.
        cache: cache root; results go to ``cache/openms/<hash of the inputs>/``.

    Returns:
        dict with ``images`` (contrast → NIfTI on the reference grid: the reference file itself,
        the others cached), ``mask`` (cached brain mask, :func:`brain_mask_in_head`; the
        head mask where that fails), ``head_mask`` (cached), ``reference`` (contrast),
        ``alignment`` (contrast → method and NMI with the reference) and ``flags``.
    """
    if not images:
        raise DatasetError("a study without images cannot be aligned")
    ref_name = next(c for c in (*_LONG_ORDER, *images) if c in images)
    inputs = [images[c] for c in sorted(images)] + [transforms[c] for c in sorted(transforms)]
    out_dir = Path(cache) / "openms" / _digest(inputs)
    record = out_dir / "alignment.json"
    if record.exists():
        saved = json.loads(record.read_text())
        return {
            "images": {c: (images[c] if c == ref_name else out_dir / f) for c, f in
                       saved["files"].items()},
            "mask": out_dir / saved["mask"], "head_mask": out_dir / "head_mask.nii.gz",
            "reference": ref_name, "alignment": saved["alignment"], "flags": saved["flags"],
        }
    import SimpleITK as sitk

    from rtfsyn import io

    ref_nib = nib.load(str(images[ref_name]))
    fixed = sitk.ReadImage(str(images[ref_name]), sitk.sitkFloat32)
    ref_arr = _to_nib_order(sitk.GetArrayFromImage(fixed))
    arrays = {ref_name: ref_arr}
    coverage = np.ones(ref_arr.shape, bool)
    alignment: dict[str, Any] = {ref_name: {"method": "reference"}}
    flags: list[str] = []
    ref_head = head_mask(ref_arr)
    for contrast in (c for c in images if c != ref_name):
        moving = sitk.ReadImage(str(images[contrast]), sitk.sitkFloat32)
        header = sitk.Transform(3, sitk.sitkIdentity)
        if contrast in transforms and ref_name == "FLAIR":
            tx, method = sitk.ReadTransform(str(transforms[contrast])), "transform file"
        elif _same_grid(fixed, moving):
            tx, method = header, "same grid"
        else:
            try:
                tx, method = _rigid_register(fixed, moving), "rigid registration (Mattes MI)"
            except RuntimeError as exc:  # SimpleITK registration failure
                flags.append(f"{contrast} left out: rigid registration to {ref_name} failed "
                             f"({str(exc).splitlines()[0][:80]})")
                continue
        arr, cov = _resample(moving, fixed, tx)
        nmi = normalized_mutual_information(ref_arr, arr, ref_head & cov)
        entry: dict[str, Any] = {"method": method, "nmi": round(nmi, 5)}
        if method != "same grid":
            arr0, cov0 = _resample(moving, fixed, header)
            entry["nmi_header_only"] = round(
                normalized_mutual_information(ref_arr, arr0, ref_head & cov0), 5)
            # sub-mm transforms with ~1 % scale terms score up to 0.004 below the headers;
            # a 5 mm / 2° misalignment costs ~0.04 (patient03 study2 T1W)
            if nmi < entry["nmi_header_only"] - 0.01:
                flags.append(f"{contrast}: the {method} aligns worse than the headers alone "
                             f"(NMI {nmi:.4f} < {entry['nmi_header_only']:.4f})")
        alignment[contrast] = entry
        arrays[contrast] = arr
        coverage &= cov
    mask = head_mask(*arrays.values()) & coverage
    zooms = tuple(float(z) for z in ref_nib.header.get_zooms()[:3])
    brain = brain_mask_in_head(arrays, mask, zooms)
    files = {ref_name: images[ref_name].name}
    for contrast, arr in arrays.items():
        if contrast != ref_name:
            files[contrast] = f"{contrast}.nii.gz"
            io.save_nifti(np.where(coverage, arr, 0.0).astype(np.float32),
                          out_dir / files[contrast], reference=ref_nib)
    io.save_nifti(mask.astype(np.uint8), out_dir / "head_mask.nii.gz", reference=ref_nib)
    mask_name = "head_mask.nii.gz"
    if brain is not None:
        mask_name = "brain_mask.nii.gz"
        io.save_nifti(brain.astype(np.uint8), out_dir / mask_name, reference=ref_nib)
    payload = {"version": CACHE_VERSION, "reference": ref_name, "files": files,
               "mask": mask_name,
               "inputs": [str(p) for p in inputs], "alignment": alignment, "flags": flags}
    io.atomic_write(record, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=1)))
    return {"images": {c: (images[c] if c == ref_name else out_dir / f) for c, f in
                       files.items()},
            "mask": out_dir / mask_name, "head_mask": out_dir / "head_mask.nii.gz",
            "reference": ref_name, "alignment": alignment, "flags": flags}


def _to_nib_order(arr: np.ndarray) -> np.ndarray:
    """SimpleITK arrays are (z, y, x); nibabel's are (i, j, k)."""
    return np.ascontiguousarray(np.transpose(arr, (2, 1, 0))).astype(np.float32)


def _same_grid(a: Any, b: Any, atol: float = 1e-3) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=atol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=atol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=atol))


def _resample(moving: Any, fixed: Any, transform: Any) -> tuple[np.ndarray, np.ndarray]:
    """``moving`` on the grid of ``fixed`` (linear) and the covered region, nibabel order."""
    import SimpleITK as sitk

    out = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    ones = sitk.Image(moving.GetSize(), sitk.sitkFloat32) + 1.0
    ones.CopyInformation(moving)
    cov = sitk.Resample(ones, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return _to_nib_order(sitk.GetArrayFromImage(out)), _to_nib_order(
        sitk.GetArrayFromImage(cov)) > 0.999


def _rigid_register(fixed: Any, moving: Any, seed: int = 0) -> Any:
    """Rigid (Euler 3-D) transform mapping ``fixed`` points into ``moving`` (Mattes MI)."""
    import SimpleITK as sitk

    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=200, relaxationFactor=0.5)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=False)
    return reg.Execute(fixed, moving)


# --------------------------------------------------------------------------- masks and scores
def brain_mask_in_head(volumes: dict[str, np.ndarray], head: np.ndarray,
                       spacing: tuple[float, float, float], radius_mm: float = 6.0
                       ) -> np.ndarray | None:
    """Estimated intracranial (brain + CSF) mask of an unstripped head, (X, Y, Z) bool.

    Axial slices (the third axis) of aligned contrasts ``volumes`` on one grid, inside the
    head mask ``head``:

    1. each contrast is normalised inside the head (0.5–99.5 percentile); voxels dark in every
       contrast (< 0.15: skull, air) are excluded, and so is the T1w's brightest 15 % (fat,
       dilated by one voxel) when there is a T1w;
    2. the rest is eroded in-plane by ``radius_mm``, which cuts the thin bridges between
       brain and scalp, and the largest 3-D component is kept (the brain);
    3. that core is replaced slice by slice by its convex hull (white matter lost to the
       fat threshold comes back) and grown back by ``radius_mm`` + 2 voxels in-plane through
       voxels that are not dark (the cortex up to the skull); closed and filled slice by slice.

    Returns ``None`` when the estimate is implausible (no core, or under 15 % or over 95 % of
    the head): the caller keeps the head mask.
    """
    from scipy.spatial import ConvexHull, Delaunay, QhullError

    from rtfsyn.preprocess import robust_normalize

    if not head.any():
        return None
    norm = {c: robust_normalize(v, head)[0] for c, v in volumes.items()}
    bright = np.max(np.stack(list(norm.values())), axis=0)
    passable = head & (bright >= 0.15)
    allowed = passable.copy()
    if "T1w" in norm:
        t1 = norm["T1w"]
        fat = t1 > np.quantile(t1[head], 0.85)
        allowed &= ~ndimage.binary_dilation(fat, np.ones((3, 3, 1), bool))
    r = max(1, round(radius_mm / float(spacing[0])))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (yy**2 + xx**2 <= r * r)[..., None]
    core = _largest_component(ndimage.binary_erosion(allowed, disk))
    if not core.any():
        return None
    grid = np.stack(np.mgrid[0:core.shape[0], 0:core.shape[1]], -1).reshape(-1, 2)
    seed = core.copy()
    for k in range(core.shape[2]):
        pts = np.argwhere(core[:, :, k])
        if len(pts) < 50:
            continue
        try:
            inside = Delaunay(pts[ConvexHull(pts).vertices]).find_simplex(grid) >= 0
        except QhullError:  # collinear points
            continue
        seed[:, :, k] |= inside.reshape(core.shape[:2])
    cross = np.zeros((3, 3, 1), bool)
    cross[1, :, 0] = cross[:, 1, 0] = True
    brain = ndimage.binary_dilation(seed, cross, iterations=r + 2, mask=passable | seed)
    brain = _fill_slices(ndimage.binary_closing(brain, np.ones((5, 5, 1), bool)) & head)
    share = brain.sum() / head.sum()
    return brain if 0.15 <= share <= 0.95 else None


def head_mask(*volumes: np.ndarray) -> np.ndarray:
    """Head mask of unstripped volumes on one grid, shape (X, Y, Z) bool.

    Half the Otsu threshold of each volume after a 3×3 in-plane median (united), a small
    closing, holes filled in 3-D and slice by slice (along the last, usually thick-slice,
    axis), the largest connected component kept.
    """
    import SimpleITK as sitk

    mask = np.zeros(volumes[0].shape, bool)
    for v in volumes:
        v = ndimage.median_filter(np.asarray(v, np.float32), size=(3, 3, 1))  # speckle
        otsu = sitk.OtsuThresholdImageFilter()
        otsu.SetNumberOfHistogramBins(128)
        otsu.Execute(sitk.GetImageFromArray(v))
        # half the Otsu level: the threshold separates air from tissue, not dark from bright
        # tissue, so the scalp ring stays closed and the fill below takes the whole head
        mask |= v > 0.5 * otsu.GetThreshold()
    mask = ndimage.binary_closing(mask, structure=np.ones((5, 5, 1), bool), iterations=1)
    mask = _fill_slices(ndimage.binary_fill_holes(mask))
    return _largest_component(mask)


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """``mask`` with the holes of every slice along the last axis filled (in place)."""
    for k in range(mask.shape[2]):
        mask[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    return mask


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of ``mask`` (all False if it has none)."""
    labels, n = ndimage.label(mask)
    if n <= 1:
        return labels == 1
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    return labels == int(np.argmax(sizes)) + 1


def normalized_mutual_information(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, bins: int = 64
) -> float:
    """Studholme's NMI ``(H(a) + H(b)) / H(a, b)`` inside ``mask`` (1 = independent, 2 = equal)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if mask is not None:
        a, b = a[mask], b[mask]
    hist, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=bins)
    p = hist / max(hist.sum(), 1.0)

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    joint = entropy(p)
    return (entropy(p.sum(1)) + entropy(p.sum(0))) / joint if joint > 0 else 2.0
