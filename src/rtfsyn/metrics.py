"""Image-quality metrics inside a brain mask (DESIGN.md evaluation protocol).

Both volumes are expected on the same grid and normalised the same way (see
:func:`rtfsyn.preprocess.robust_normalize`, data range 1). PSNR, MAE and NMSE use the mask
voxels; SSIM is the 3-D SSIM map (MONAI's Gaussian-window implementation, 11³ window,
σ = 1.5) averaged over the mask voxels where the window fits.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics.regression import compute_ssim_and_cs

__all__ = ["all_metrics", "mae", "nmse", "psnr", "ssim3d"]


def _masked(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None):
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs target {target.shape}")
    if mask is None:
        mask = np.ones(pred.shape, bool)
    mask = np.asarray(mask, bool)
    if mask.shape != pred.shape:
        raise ValueError(f"mask shape {mask.shape} does not match {pred.shape}")
    if not mask.any():
        raise ValueError("the mask is empty")
    return pred[mask], target[mask]


def mae(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error inside the mask."""
    p, t = _masked(pred, target, mask)
    return float(np.mean(np.abs(p - t)))


def nmse(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised MSE: ‖p − t‖² / ‖t‖² inside the mask."""
    p, t = _masked(pred, target, mask)
    denom = float(np.sum(t**2))
    return float(np.sum((p - t) ** 2) / denom) if denom > 0 else math.inf


def psnr(
    pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None, data_range: float = 1.0
) -> float:
    """PSNR in dB inside the mask; ``inf`` for identical volumes."""
    p, t = _masked(pred, target, mask)
    mse = float(np.mean((p - t) ** 2))
    if mse == 0.0:
        return math.inf
    return float(10.0 * math.log10(data_range**2 / mse))


def ssim3d(
    pred: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray | None = None,
    data_range: float = 1.0,
    kernel_size: int = 11,
    sigma: float = 1.5,
) -> float:
    """3-D SSIM averaged over the mask (MONAI ``compute_ssim_and_cs`` map)."""
    pred = np.asarray(pred, dtype=np.float32)
    target = np.asarray(target, dtype=np.float32)
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs target {target.shape}")
    k = min(kernel_size, *pred.shape)
    if k % 2 == 0:
        k -= 1
    p = torch.from_numpy(pred)[None, None]
    t = torch.from_numpy(target)[None, None]
    ssim_map, _ = compute_ssim_and_cs(
        p, t, spatial_dims=3, kernel_size=[k] * 3, kernel_sigma=[sigma] * 3,
        data_range=data_range,
    )
    ssim_map = ssim_map[0, 0].double().numpy()
    h = k // 2
    inner = tuple(slice(h, s - h) for s in pred.shape)
    if mask is None:
        return float(ssim_map.mean())
    m = np.asarray(mask, bool)[inner]
    if not m.any():
        return float(ssim_map.mean())
    return float(ssim_map[m].mean())


def all_metrics(
    pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, float]:
    """PSNR, SSIM, MAE and NMSE in one dict."""
    return {
        "psnr": psnr(pred, target, mask),
        "ssim": ssim3d(pred, target, mask),
        "mae": mae(pred, target, mask),
        "nmse": nmse(pred, target, mask),
    }
