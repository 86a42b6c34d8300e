"""Baselines trained and evaluated with the same code as RTFSyn (DESIGN.md).

* :class:`UNet3D` (``unet3d``): pix2pix-style 3D U-Net; the only conditioning is a one-hot of
  the target contrast, given as constant extra input channels (no other metadata).
* :class:`CrossAttnSynth` (``crossattn``): the same visual encoder, metadata conditioner and
  implicit decoder as RTFSyn, but conventional cross-attention in which *every* latent voxel
  is a query over the metadata tokens (no packing, no refinement, no dynamic conv, no gates).

Both have RTFSyn's forward signature ``(image, source_meta, target_meta, out_shape=None)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rtfsyn.metadata import CONTRASTS
from rtfsyn.models._common import (
    ModelError,
    ResBlock3d,
    check_int,
    check_prob,
    crop_to,
    norm3d,
    pad_to_multiple,
)
from rtfsyn.models.fusion import cross_attention
from rtfsyn.models.implicit_decoder import ImplicitDecoder
from rtfsyn.models.metadata_encoder import (
    CATEGORICAL_FIELDS,
    MetadataConditioner,
    MetadataEncoding,
    MetaInput,
    as_metadata_list,
)
from rtfsyn.models.rtfsyn import LatentSynthesizer
from rtfsyn.models.visual_encoder import VisualEncoder

__all__ = ["CrossAttnSynth", "UNet3D", "VoxelCrossAttention", "contrast_one_hot"]


def contrast_one_hot(meta: MetaInput, batch_size: int, device: torch.device) -> torch.Tensor:
    """One-hot ``(B, len(CONTRASTS))`` of the contrast in ``meta`` (Metadata or field tensors)."""
    n = len(CONTRASTS)
    if isinstance(meta, Mapping):
        idx = meta["categorical"][:, CATEGORICAL_FIELDS.index("contrast")].to(device) - 1
    else:
        metas = as_metadata_list(meta, batch_size)
        idx = torch.tensor([CONTRASTS.index(m.contrast.value) for m in metas], device=device)
    if idx.shape[0] != batch_size:
        raise ModelError(f"got {idx.shape[0]} target metadata records for a batch of {batch_size}")
    out = torch.zeros(batch_size, n, device=device)
    valid = (idx >= 0) & (idx < n)
    out[valid, idx[valid]] = 1.0
    return out


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, dropout: float) -> None:
        super().__init__(
            nn.Conv3d(cin, cout, 3, padding=1), norm3d(cout), nn.LeakyReLU(0.2),
            nn.Dropout3d(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv3d(cout, cout, 3, padding=1), norm3d(cout), nn.LeakyReLU(0.2),
        )


class UNet3D(nn.Module):
    """pix2pix-style 3D U-Net conditioned on the target contrast only.

    Args:
        in_channels: image channels (1); ``len(CONTRASTS)`` one-hot channels are appended.
        channels: width per level (``len(channels) - 1`` stride-2 down-samplings).
        dropout: channel dropout in the conv blocks.

    ``forward(image (B, 1, D, H, W), source_meta, target_meta, out_shape=None)`` →
    ``(B, 1, *out_shape)``. Only ``target_meta``'s contrast is used. The input is padded to a
    multiple of ``2^(levels-1)`` and the output cropped back; a different ``out_shape`` is
    reached by trilinear interpolation (the U-Net has no continuous decoder).
    """

    def __init__(
        self, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64), dropout: float = 0.0
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels)
        channels = list(channels)
        if len(channels) < 2:
            raise ModelError(f"unet channels={channels} need at least 2 levels")
        for c in channels:
            check_int("channels item", c)
        check_prob("dropout", dropout)
        self.in_channels = in_channels
        self.factor = 2 ** (len(channels) - 1)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        cin = in_channels + len(CONTRASTS)
        for i, c in enumerate(channels):
            self.enc.append(_DoubleConv(cin, c, dropout))
            if i < len(channels) - 1:
                self.down.append(nn.Conv3d(c, c, 2, stride=2))
            cin = c
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(len(channels) - 1, 0, -1):
            self.up.append(nn.ConvTranspose3d(channels[i], channels[i - 1], 2, stride=2))
            self.dec.append(_DoubleConv(2 * channels[i - 1], channels[i - 1], dropout))
        self.out = nn.Conv3d(channels[0], 1, 1)

    def forward(
        self,
        image: torch.Tensor,
        source_meta: MetaInput | None,
        target_meta: MetaInput,
        out_shape: Sequence[int] | None = None,
    ) -> torch.Tensor:
        if image.ndim != 5 or image.shape[1] != self.in_channels:
            raise ModelError(
                f"image must be (B, {self.in_channels}, D, H, W): got {tuple(image.shape)}"
            )
        b = image.shape[0]
        onehot = contrast_one_hot(target_meta, b, image.device).to(image.dtype)
        x, shape = pad_to_multiple(image, self.factor)
        x = torch.cat([x, onehot[:, :, None, None, None].expand(-1, -1, *x.shape[2:])], dim=1)
        skips = []
        for i, enc in enumerate(self.enc):
            x = enc(x)
            if i < len(self.down):
                skips.append(x)
                x = self.down[i](x)
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        y = crop_to(self.out(x), shape)
        if out_shape is not None and tuple(int(s) for s in out_shape) != tuple(shape):
            y = F.interpolate(y, size=tuple(int(s) for s in out_shape), mode="trilinear",
                              align_corners=False)
        return y


class VoxelCrossAttention(nn.Module):
    """Conventional cross-attention: every voxel token attends to the metadata tokens.

    ``x + W_o · attn(W_q · GroupNorm(x)_voxel, W_k T, W_v T)`` — no packing, no gating.
    The attention map has ``B·heads·N·L`` elements (``N = D·H·W``).

    ``forward(x (B, C, D, H, W), tokens (B, L, d), mask (B, L), pooled) -> (B, C, D, H, W)``.
    """

    def __init__(self, channels: int, context_dim: int, attn_dim: int = 64, heads: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.channels = check_int("channels", channels)
        check_int("context_dim", context_dim)
        check_int("attn_dim", attn_dim)
        self.heads = check_int("heads", heads)
        if attn_dim % heads:
            raise ModelError(f"attn_dim={attn_dim} is not divisible by heads={heads}")
        self.dropout = check_prob("dropout", dropout)
        self.norm = norm3d(channels)
        self.q_proj = nn.Linear(channels, attn_dim)
        self.k_proj = nn.Linear(context_dim, attn_dim)
        self.v_proj = nn.Linear(context_dim, attn_dim)
        self.out_proj = nn.Linear(attn_dim, channels)
        self.last_attention_shape: tuple[int, ...] | None = None

    def attention_map_elements(self, shape: Sequence[int], num_tokens: int,
                               batch_size: int = 1) -> int:
        """Elements of the attention map for features of spatial ``shape``: B·heads·N·L."""
        return batch_size * self.heads * math.prod(int(s) for s in shape) * num_tokens

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                pooled: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        tok = self.norm(x).flatten(2).transpose(1, 2)  # (B, N, C)
        n, lt = tok.shape[1], tokens.shape[1]
        q = self.q_proj(tok).view(b, n, self.heads, -1).transpose(1, 2)
        k = self.k_proj(tokens).view(b, lt, self.heads, -1).transpose(1, 2)
        v = self.v_proj(tokens).view(b, lt, self.heads, -1).transpose(1, 2)
        o, self.last_attention_shape = cross_attention(
            q, k, v, mask, self.dropout if self.training else 0.0
        )
        o = self.out_proj(o.transpose(1, 2).reshape(b, n, -1))
        return x + o.transpose(1, 2).reshape(x.shape)


class CrossAttnSynth(LatentSynthesizer):
    """``crossattn`` baseline: VisualEncoder → fusion_blocks × VoxelCrossAttention →
    post_blocks × ResBlock3d → ImplicitDecoder (RTFSyn's encoder, conditioner and decoder).

    Arguments as :class:`~rtfsyn.models.rtfsyn.RTFSyn` (those of the removed components are
    absent). ``forward(image, source_meta, target_meta, out_shape=None) -> (B, 1, *out_shape)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        encoder_channels: Sequence[int] = (16, 48),
        encoder_blocks: Sequence[int] = (1, 2),
        downsample: int = 2,
        d_model: int = 64,
        metadata_encoder: str = "structured",
        metadata_encoder_kwargs: Mapping[str, Any] | None = None,
        metadata_layers: int = 1,
        heads: int = 4,
        attn_dim: int = 64,
        fusion_blocks: int = 1,
        post_blocks: int = 1,
        decoder_hidden: int = 64,
        decoder_layers: int = 3,
        decoder_skip: bool = True,
        chunk_size: int = 4096,
        field_dropout: float = 0.1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_int("fusion_blocks", fusion_blocks)
        check_int("post_blocks", post_blocks, minimum=0)
        self.conditioner = MetadataConditioner(
            metadata_encoder, d_model=d_model, heads=heads, layers=metadata_layers,
            field_dropout=field_dropout, encoder_kwargs=metadata_encoder_kwargs,
        )
        self.encoder = VisualEncoder(in_channels, encoder_channels, encoder_blocks, downsample,
                                     dropout=dropout)
        c = self.encoder.out_channels
        self.attentions = nn.ModuleList(
            VoxelCrossAttention(c, d_model, attn_dim, heads, dropout) for _ in range(fusion_blocks)
        )
        self.post = nn.Sequential(*(ResBlock3d(c, dropout=dropout) for _ in range(post_blocks)))
        self.use_skip = bool(decoder_skip)
        self.decoder = ImplicitDecoder(
            c, embed_dim=d_model, hidden=decoder_hidden, layers=decoder_layers,
            skip_channels=self.encoder.skip_channels if decoder_skip else 0,
            chunk_size=chunk_size,
        )

    def fuse(self, latent: torch.Tensor, cond: MetadataEncoding) -> torch.Tensor:
        for att in self.attentions:
            latent = att(latent, cond.tokens, cond.mask, cond.pooled)
        return self.post(latent)
