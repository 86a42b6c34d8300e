"""Convolutional decoder head (ablation of the implicit decoder)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rtfsyn.models._common import ModelError, check_int, norm3d

__all__ = ["ConvHead"]


class ConvHead(nn.Module):
    """Upsampling conv decoder: resample features to the output grid, then convolve.

    The latent volume (and the optional full-resolution skip features) are resampled
    trilinearly (``align_corners=False``) at the voxel centres of the output grid, given as
    normalised coordinates (see :mod:`rtfsyn.models.implicit_decoder`), concatenated, then
    ``conv3³ → (+ embedding bias) → GroupNorm → GELU → conv3³ → GELU → conv1³ → 1``.

    Args:
        latent_channels: ``C`` of the latent volume.
        skip_channels: channels of the skip features (0: none).
        embed_dim: per-sample embedding width (0: none).
        hidden: conv width.
        out_channels: predicted channels.

    ``forward(latent (B, C, d, h, w), grid (B, Do, Ho, Wo, 3), embedding (B, E) | None,
    skip (B, S, D, H, W) | None) -> (B, out_channels, Do, Ho, Wo)``.
    """

    def __init__(
        self,
        latent_channels: int,
        skip_channels: int = 0,
        embed_dim: int = 0,
        hidden: int = 32,
        out_channels: int = 1,
    ) -> None:
        super().__init__()
        self.latent_channels = check_int("latent_channels", latent_channels)
        self.skip_channels = check_int("skip_channels", skip_channels, minimum=0)
        check_int("embed_dim", embed_dim, minimum=0)
        check_int("hidden", hidden)
        check_int("out_channels", out_channels)
        self.conv1 = nn.Conv3d(latent_channels + skip_channels, hidden, 3, padding=1)
        self.embed_proj = nn.Linear(embed_dim, hidden) if embed_dim else None
        self.norm = norm3d(hidden)
        self.conv2 = nn.Conv3d(hidden, hidden, 3, padding=1)
        self.out = nn.Conv3d(hidden, out_channels, 1)

    def forward(
        self,
        latent: torch.Tensor,
        grid: torch.Tensor,
        embedding: torch.Tensor | None = None,
        skip: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if grid.ndim != 5 or grid.shape[-1] != 3:
            raise ModelError(f"grid must be (B, Do, Ho, Wo, 3): got {tuple(grid.shape)}")
        g = grid.flip(-1).to(latent.dtype)
        feats = [F.grid_sample(latent, g, mode="bilinear", padding_mode="border",
                               align_corners=False)]
        if self.skip_channels:
            if skip is None:
                raise ModelError("ConvHead built with skip_channels > 0 needs skip features")
            feats.append(F.grid_sample(skip, g.to(skip.dtype), mode="bilinear",
                                       padding_mode="border", align_corners=False))
        h = self.conv1(torch.cat(feats, dim=1))
        if self.embed_proj is not None and embedding is not None:
            h = h + self.embed_proj(embedding)[:, :, None, None, None]
        h = F.gelu(self.norm(h))
        h = F.gelu(self.conv2(h))
        return self.out(h)
