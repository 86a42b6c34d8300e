"""Intensity preprocessing shared by training, synthesis and evaluation (DESIGN.md).

* :func:`brain_mask` – the non-zero region of a skull-stripped image, holes filled, small
  islands removed (or an explicit mask file).
* :func:`robust_normalize` – 0.5–99.5 percentile inside the mask mapped to [0, 1], clipped,
  zero outside the mask. The same function normalises synthesized and real volumes before
  metrics, so every number means the same thing.
* :func:`bounding_box` – the mask's bounding box with a margin, to crop work to the brain.
* :func:`skull_strip_warning` – a warning if the input looks like a head that was not
  skull-stripped (the model expects brain-extracted inputs).
* :func:`intensity_range` – the 0.5–99.5 percentile range of a reference scan in its brain,
  to map synthesized [0, 1] intensities to a scanner-like range.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from rtfsyn.errors import InputImageError

__all__ = [
    "bounding_box",
    "brain_mask",
    "intensity_range",
    "robust_normalize",
    "skull_strip_warning",
]

#: a skull-stripped brain fills at most ~30% of a typical field of view (BraTS 17%, MNI152
#: 29%); an unstripped head 37-95% (open-ms raw scans, a Siemens MPRAGE)
MAX_BRAIN_FRACTION = 0.6
#: background of a skull-stripped image is exactly zero; an unstripped head has noise there
MAX_LOW_NONZERO_FRACTION = 0.03


def brain_mask(data: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Boolean brain mask of a skull-stripped volume.

    Voxels above ``threshold`` (default: 1e-3 × the 99th percentile of non-zero voxels, so
    that float noise around zero is excluded) form the mask; holes are filled and components
    smaller than 1% of the largest are dropped.

    Raises:
        InputImageError: the volume is empty (all zero).
    """
    data = np.asarray(data)
    nonzero = data[data != 0]  # a copy: made absolute and partitioned in place (memory)
    if nonzero.size == 0:
        raise InputImageError("the image is all zero: nothing to synthesize from")
    if threshold is None:
        np.abs(nonzero, out=nonzero)
        threshold = 1e-3 * float(np.percentile(nonzero, 99, overwrite_input=True))
    del nonzero
    full = data > threshold
    if not full.any():
        raise InputImageError(f"no voxel is above the mask threshold {threshold:g}")
    # labelling and hole filling inside the bounding box only (everything outside is
    # background, so the result is the same; saves a whole-volume int32 label array)
    box = bounding_box(full)
    mask = full[box]
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= 0.01 * sizes.max()) + 1
        mask = np.isin(labels, keep)
    del labels
    full[box] = ndimage.binary_fill_holes(mask)
    return full


def robust_normalize(
    data: np.ndarray,
    mask: np.ndarray | None = None,
    lower: float = 0.5,
    upper: float = 99.5,
) -> tuple[np.ndarray, tuple[float, float]]:
    """Map the [lower, upper] percentiles inside ``mask`` to [0, 1], clip, zero outside.

    Returns:
        (normalised float32 volume, (low, high) intensities used).
    """
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(
            f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}"
        )
    data = np.asarray(data, dtype=np.float32)
    mask = np.ones(data.shape, bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != data.shape:
        raise InputImageError(f"mask shape {mask.shape} does not match image shape {data.shape}")
    values = data[mask]
    if values.size == 0:
        raise InputImageError("the brain mask is empty")
    lo, hi = (float(v) for v in np.percentile(values, [lower, upper], overwrite_input=True))
    del values
    if hi - lo < 1e-8 * max(1.0, abs(hi)):
        hi = lo + 1.0  # constant image: map to 0
    out = (data - lo).astype(np.float32, copy=False)  # one new array, then in place
    out /= np.float32(hi - lo)
    np.clip(out, 0.0, 1.0, out=out)
    out[~mask] = 0.0
    return out, (lo, hi)


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice]:
    """Slices of the bounding box of ``mask`` grown by ``margin`` voxels (clipped)."""
    mask = np.asarray(mask, bool)
    # per-axis projections (not np.argwhere, whose index array is 24 bytes per voxel)
    hits = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != d)))
            for d in range(mask.ndim)]
    if any(h.size == 0 for h in hits):
        return tuple(slice(0, s) for s in mask.shape)  # type: ignore[return-value]
    lo = np.maximum(np.array([h[0] for h in hits]) - margin, 0)
    hi = np.minimum(np.array([h[-1] for h in hits]) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]


def skull_strip_warning(data: np.ndarray, mask: np.ndarray) -> str | None:
    """A one-line warning if ``data`` looks like a head that was not skull-stripped, else None.

    Two signs, measured on the real data in ``../shared`` (skull-stripped BraTS / MNI152 /
    open-ms: mask 11-29 % of the field of view, <= 1 % low non-zero voxels; unstripped
    open-ms raw scans and a Siemens MPRAGE: 37-95 % and 6-60 %):

    * the non-zero mask covers more than 60 % of the field of view;
    * more than 3 % of the field of view holds low but non-zero signal (below 5 % of the
      99th percentile): background noise around a head, which brain extraction sets to 0.
    """
    data = np.asarray(data)
    mask = np.asarray(mask, bool)
    nonzero = np.abs(data[data != 0])
    if nonzero.size == 0:
        return None
    frac = float(mask.mean())
    low = 0.05 * float(np.percentile(nonzero, 99))
    low_nonzero = float(np.count_nonzero((data != 0) & (np.abs(data) < low))) / data.size
    signs = []
    if frac > MAX_BRAIN_FRACTION:
        signs.append(f"the non-zero region covers {frac:.0%} of the field of view")
    if low_nonzero > MAX_LOW_NONZERO_FRACTION:
        signs.append(f"{low_nonzero:.0%} of the field of view is faint non-zero background "
                     "where a skull-stripped image has zeros")
    if not signs:
        return None
    return ("the input looks like a head that is not skull-stripped (" + "; ".join(signs)
            + "): the model expects brain-extracted inputs and will invent structures outside "
            "the brain; pass --mask BRAIN_MASK.nii.gz or skull-strip first (e.g. HD-BET, "
            "SynthStrip, FSL BET)")


def intensity_range(data: np.ndarray, mask: np.ndarray | None = None,
                    lower: float = 0.5, upper: float = 99.5) -> tuple[float, float]:
    """The ``[lower, upper]`` percentiles of ``data`` inside ``mask`` (default: its brain)."""
    data = np.asarray(data, dtype=np.float32)
    mask = brain_mask(data) if mask is None else np.asarray(mask, bool)
    lo, hi = (float(v) for v in np.percentile(data[mask], [lower, upper]))
    return lo, hi
