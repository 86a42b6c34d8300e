"""Training loss: L1 + (1 − SSIM), both restricted to the brain region of the patch."""

from __future__ import annotations

import torch
from monai.metrics.regression import compute_ssim_and_cs

__all__ = ["masked_l1", "masked_ssim", "synthesis_loss"]


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |pred − target| over mask voxels. Shapes ``(B, 1, D, H, W)``."""
    w = mask.to(pred.dtype)
    return (torch.abs(pred - target) * w).sum() / w.sum().clamp_min(1.0)


def masked_ssim(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kernel_size: int = 7,
    sigma: float = 1.5,
) -> torch.Tensor:
    """3-D SSIM map (Gaussian window, data range 1) averaged over mask voxels."""
    k = min(kernel_size, *pred.shape[2:])
    k -= 1 - k % 2
    ssim_map, _ = compute_ssim_and_cs(
        pred.float(), target.float(), spatial_dims=3, kernel_size=[k] * 3,
        kernel_sigma=[sigma] * 3, data_range=1.0,
    )
    h = k // 2
    m = mask[:, :, h : mask.shape[2] - h, h : mask.shape[3] - h, h : mask.shape[4] - h]
    m = m.to(ssim_map.dtype)
    return (ssim_map * m).sum() / m.sum().clamp_min(1.0)


def synthesis_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, ssim_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """``L1 + w·(1 − SSIM)`` in the brain; returns the loss and its parts for logging."""
    l1 = masked_l1(pred, target, mask)
    loss = l1
    parts = {"l1": float(l1.detach())}
    if ssim_weight > 0:
        ssim = masked_ssim(pred, target, mask)
        loss = loss + ssim_weight * (1.0 - ssim)
        parts["ssim"] = float(ssim.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts
