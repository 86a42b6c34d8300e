"""Intensity preprocessing shared by training, synthesis and evaluation (DESIGN.md).

* :func:`brain_mask` – the non-zero region of a skull-stripped image, holes filled, small
  islands removed (or an explicit mask file).
* :func:`robust_normalize` – 0.5–99.5 percentile inside the mask mapped to [0, 1], clipped,
  zero outside the mask. The same function normalises synthesized and real volumes before
  metrics, so every number means the same thing.
* :func:`bounding_box` – the mask's bounding box with a margin, to crop work to the brain.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from rtfsyn.errors import InputImageError

__all__ = ["bounding_box", "brain_mask", "robust_normalize"]


def brain_mask(data: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Boolean brain mask of a skull-stripped volume.

    Voxels above ``threshold`` (default: 1e-3 × the 99th percentile of non-zero voxels, so
    that float noise around zero is excluded) form the mask; holes are filled and components
    smaller than 1% of the largest are dropped.

    Raises:
        InputImageError: the volume is empty (all zero).
    """
    data = np.asarray(data)
    nonzero = np.abs(data[data != 0])
    if nonzero.size == 0:
        raise InputImageError("the image is all zero: nothing to synthesize from")
    if threshold is None:
        threshold = 1e-3 * float(np.percentile(nonzero, 99))
    mask = data > threshold
    if not mask.any():
        raise InputImageError(f"no voxel is above the mask threshold {threshold:g}")
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= 0.01 * sizes.max()) + 1
        mask = np.isin(labels, keep)
    return ndimage.binary_fill_holes(mask)


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
    lo, hi = (float(v) for v in np.percentile(values, [lower, upper]))
    if hi - lo < 1e-8 * max(1.0, abs(hi)):
        hi = lo + 1.0  # constant image: map to 0
    out = np.clip((data - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    out[~mask] = 0.0
    return out, (lo, hi)


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice]:
    """Slices of the bounding box of ``mask`` grown by ``margin`` voxels (clipped)."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        return tuple(slice(0, s) for s in mask.shape)  # type: ignore[return-value]
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]
