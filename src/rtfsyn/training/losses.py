"""Training loss: L1 + (1 − SSIM), both restricted to the brain region of the patch, and
optionally a distribution term (:func:`masked_sorted_l1`) against contrast compression."""

from __future__ import annotations

import torch

from rtfsyn.models._common import axis_conv3d

__all__ = ["masked_l1", "masked_sorted_l1", "masked_ssim", "ssim_map", "synthesis_loss"]


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |pred − target| over mask voxels. Shapes ``(B, 1, D, H, W)``."""
    w = mask.to(pred.dtype)
    return (torch.abs(pred - target) * w).sum() / w.sum().clamp_min(1.0)


def masked_sorted_l1(pred: torch.Tensor, target: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """Mean |sort(pred) − sort(target)| over each patch's mask voxels, averaged over patches
    with at least one such voxel: the 1-D Wasserstein-1 distance between the two intensity
    distributions of a patch. Shapes ``(B, 1, D, H, W)``.

    It ignores where a value sits, only which values occur, so it is zero for any rearrangement
    of the target and never above :func:`masked_l1` of the same patch. L1 alone lets a model
    that is unsure pull its output towards the middle (an L1 optimum is a conditional median),
    which narrows the output's range; the 0.5–99.5 percentile normalisation of every reported
    metric then shifts the whole brain's level (stage 11 of MODEL_CARD.md: the demo PDw). This
    term costs exactly that narrowing.
    """
    terms = []
    for p, t, m in zip(pred, target, mask, strict=True):
        keep = m > 0.5
        if keep.any():
            terms.append(torch.abs(torch.sort(p[keep]).values - torch.sort(t[keep]).values)
                         .mean())
    if not terms:
        return pred.sum() * 0.0
    return torch.stack(terms).mean()


def masked_ssim(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kernel_size: int = 7,
    sigma: float = 1.5,
) -> torch.Tensor:
    """3-D SSIM map (Gaussian window, data range 1) averaged over mask voxels."""
    k = min(kernel_size, *pred.shape[2:])
    k -= 1 - k % 2
    smap = ssim_map(pred.float(), target.float(), k, sigma)
    h = k // 2
    m = mask[:, :, h : mask.shape[2] - h, h : mask.shape[3] - h, h : mask.shape[4] - h]
    m = m.to(smap.dtype)
    return (smap * m).sum() / m.sum().clamp_min(1.0)


def ssim_map(
    x: torch.Tensor, y: torch.Tensor, kernel_size: int = 7, sigma: float = 1.5,
    data_range: float = 1.0, k1: float = 0.01, k2: float = 0.03,
) -> torch.Tensor:
    """SSIM map of ``x, y (B, 1, D, H, W)`` over a Gaussian window, valid part only
    ``(B, 1, D − k + 1, …)``: MONAI's ``compute_ssim_and_cs`` (same window, constants and
    formula), with the 3-D window applied as three 1-D passes over the five local moments
    at once (the Gaussian is separable): 3·k instead of k³ taps, and a fast backward pass
    (the single-channel k³ convolution's was a tenth of a CPU training step). The passes are
    :func:`~rtfsyn.models._common.axis_conv3d` (shifted multiply-adds, faster than the
    grouped ``conv3d`` on a CPU)."""
    dist = torch.arange((1 - kernel_size) / 2, (1 + kernel_size) / 2, 1.0)
    g = torch.exp(-torch.pow(dist / sigma, 2) / 2)
    g = (g / g.sum()).to(device=x.device, dtype=x.dtype)
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B, 5, D, H, W)
    for axis in range(3):
        moments = axis_conv3d(moments, g, axis=axis, same=False)
    mu_x, mu_y, mu_xx, mu_yy, mu_xy = moments.split(1, dim=1)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    sigma_x = mu_xx - mu_x * mu_x
    sigma_y = mu_yy - mu_y * mu_y
    sigma_xy = mu_xy - mu_x * mu_y
    cs = (2 * sigma_xy + c2) / (sigma_x + sigma_y + c2)
    return ((2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)) * cs


def synthesis_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, ssim_weight: float = 1.0,
    sorted_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``L1 + w·(1 − SSIM) + v·sorted L1`` in the brain; returns the loss and its parts for
    logging (``sorted`` only when ``v > 0``)."""
    l1 = masked_l1(pred, target, mask)
    loss = l1
    parts = {"l1": float(l1.detach())}
    if ssim_weight > 0:
        ssim = masked_ssim(pred, target, mask)
        loss = loss + ssim_weight * (1.0 - ssim)
        parts["ssim"] = float(ssim.detach())
    if sorted_weight > 0:
        dist = masked_sorted_l1(pred, target, mask)
        loss = loss + sorted_weight * dist
        parts["sorted"] = float(dist.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts
