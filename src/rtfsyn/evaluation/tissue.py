"""Downstream check: 3-class tissue volumes from an image (a simple intensity model).

:func:`three_class_segmentation` runs a deterministic 1-D k-means (k = 3, initialised at the
20th/50th/80th percentiles) on the brain voxels and labels the classes dark/mid/bright. Which
tissue each class is depends on the contrast (:data:`TISSUE_ORDER`). Applying the same method
to the synthesized and the real target and comparing class volumes gives the relative volume
error a downstream segmentation would see.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TISSUE_ORDER", "relative_volume_errors", "three_class_segmentation",
           "tissue_remap", "tissue_volumes"]

#: tissues from darkest to brightest class, per contrast
TISSUE_ORDER: dict[str, tuple[str, str, str]] = {
    "T1w": ("CSF", "GM", "WM"),
    "T1Gd": ("CSF", "GM", "WM"),
    "T2w": ("WM", "GM", "CSF"),
    "PDw": ("WM", "GM", "CSF"),
    "FLAIR": ("CSF", "WM", "GM"),
}


def three_class_segmentation(volume: np.ndarray, mask: np.ndarray, iters: int = 30) -> np.ndarray:
    """Labels 0 (background), 1 (dark), 2 (mid), 3 (bright) by 1-D k-means in the mask."""
    values = np.asarray(volume, dtype=np.float64)[mask]
    if values.size < 3:
        raise ValueError("the mask holds fewer than 3 voxels")
    centres = np.percentile(values, [20, 50, 80]).astype(np.float64)
    for _ in range(iters):
        assign = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)
        new = np.array([values[assign == k].mean() if np.any(assign == k) else centres[k]
                        for k in range(3)])
        if np.allclose(new, centres):
            break
        centres = new
    order = np.argsort(centres)
    rank = np.empty(3, int)
    rank[order] = np.arange(3)
    labels = np.zeros(volume.shape, np.uint8)
    labels[mask] = rank[assign] + 1
    return labels


def tissue_volumes(labels: np.ndarray, contrast: str, voxel_ml: float) -> dict[str, float]:
    """Volume (ml) of each tissue class of :func:`three_class_segmentation` labels."""
    names = TISSUE_ORDER.get(contrast, ("dark", "mid", "bright"))
    return {names[k]: float(np.sum(labels == k + 1) * voxel_ml) for k in range(3)}


def relative_volume_errors(pred: dict[str, float], real: dict[str, float]) -> dict[str, float]:
    """|V_pred − V_real| / V_real per tissue (NaN where the real volume is 0)."""
    return {k: (abs(pred[k] - v) / v if v > 0 else float("nan")) for k, v in real.items()}


def tissue_remap(
    source: np.ndarray,
    mask: np.ndarray,
    donor_source: np.ndarray,
    donor_mask: np.ndarray,
    donor_target: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Training-free baseline: each 3-class tissue of the source gets the donor's mean target.

    The same :func:`three_class_segmentation` is fitted on the source (``(D, H, W)``,
    normalised, inside ``mask``) and on a donor's source of the same contrast; every source
    class is painted with the mean of the donor's (normalised) target over the donor voxels
    of the same class (dark → dark, mid → mid, bright → bright). The donor's volumes can be on
    another grid than the source.

    Returns:
        (remapped ``(D, H, W)`` float32 volume, 0 outside ``mask``; the 3 class means).
    """
    donor_labels = three_class_segmentation(donor_source, np.asarray(donor_mask, bool))
    means = np.array([float(np.mean(donor_target[donor_labels == k + 1]))
                      if np.any(donor_labels == k + 1) else 0.0 for k in range(3)])
    labels = three_class_segmentation(source, np.asarray(mask, bool))
    out = np.zeros(np.shape(source), np.float32)
    inside = labels > 0
    out[inside] = means[labels[inside] - 1]
    return out, means
