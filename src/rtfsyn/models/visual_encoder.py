"""3D residual convolutional encoder: image → latent feature volume (↓ 1, 2, 4 or 8)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from rtfsyn.models._common import ModelError, ResBlock3d, check_int, check_prob, norm3d

__all__ = ["EncoderFeatures", "VisualEncoder"]


class EncoderFeatures(NamedTuple):
    """Output of :class:`VisualEncoder`.

    Attributes:
        latent: ``(B, C_last, D/s, H/s, W/s)`` features, ``s`` = ``downsample``.
        skip: ``(B, C_0, D, H, W)`` full-resolution features of the first stage.
    """

    latent: torch.Tensor
    skip: torch.Tensor


class VisualEncoder(nn.Module):
    """Residual 3D conv encoder with GroupNorm (batch-size independent).

    Stage 0 works at full resolution (stem conv + ``blocks[0]`` residual blocks); each
    further stage halves every axis with a kernel-2 / stride-2 convolution (so latent voxel
    ``i`` covers exactly input voxels ``2i, 2i+1``: its centre is the centre of that block)
    then applies ``blocks[i]`` residual blocks.

    Args:
        in_channels: image channels (1).
        channels: width of each stage; ``len(channels) = 1 + log2(downsample)``.
        blocks: residual blocks per stage, same length as ``channels`` (0 allowed).
        downsample: total down-sampling factor, 1, 2, 4 or 8.
        dropout: channel dropout inside residual blocks.

    Shapes: ``(B, in_channels, D, H, W)`` with D, H, W divisible by ``downsample`` →
    :class:`EncoderFeatures`.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 48),
        blocks: Sequence[int] = (1, 2),
        downsample: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels)
        if downsample not in (1, 2, 4, 8):
            raise ModelError(f"downsample={downsample!r} is invalid: use 1, 2, 4 or 8")
        n_stages = 1 + int(math.log2(downsample))
        channels, blocks = list(channels), list(blocks)
        if len(channels) != n_stages or len(blocks) != n_stages:
            raise ModelError(
                f"downsample={downsample} needs {n_stages} stages: got channels={channels} and "
                f"blocks={blocks} (one entry per stage)"
            )
        for c in channels:
            check_int("channels item", c)
        for n in blocks:
            check_int("blocks item", n, minimum=0)
        check_prob("dropout", dropout)
        self.downsample = downsample
        self.out_channels = channels[-1]
        self.skip_channels = channels[0]
        self.stem = nn.Conv3d(in_channels, channels[0], 3, padding=1)
        self.stage0 = nn.Sequential(*(ResBlock3d(channels[0], dropout=dropout)
                                      for _ in range(blocks[0])))
        self.stages = nn.ModuleList()
        for i in range(1, n_stages):
            self.stages.append(nn.Sequential(
                norm3d(channels[i - 1]),
                nn.Conv3d(channels[i - 1], channels[i], kernel_size=2, stride=2),
                *(ResBlock3d(channels[i], dropout=dropout) for _ in range(blocks[i])),
            ))
        self.out_norm = norm3d(channels[-1])

    def forward(self, x: torch.Tensor) -> EncoderFeatures:
        if x.ndim != 5:
            raise ModelError(f"image must be (B, C, D, H, W): got shape {tuple(x.shape)}")
        if any(s % self.downsample for s in x.shape[2:]):
            raise ModelError(
                f"spatial shape {tuple(x.shape[2:])} is not divisible by downsample="
                f"{self.downsample}: pad it first (rtfsyn.models._common.pad_to_multiple)"
            )
        skip = self.stage0(self.stem(x))
        h = skip
        for stage in self.stages:
            h = stage(h)
        return EncoderFeatures(self.out_norm(h), skip)
