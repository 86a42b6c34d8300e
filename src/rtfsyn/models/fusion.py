"""Cross-modal adaptive fusion: packed cross-attention + text-conditioned dynamic convolution.

* :func:`pixel_unshuffle_3d` / :func:`pixel_shuffle_3d` — 3D pixel packing / recovery
  (exact inverses; channel order ``(c, i, j, k)`` like :func:`torch.nn.functional.pixel_unshuffle`).
* :func:`cross_attention` — explicit multi-head softmax attention with a key padding mask
  (explicit so that the attention map is a visible ``(B, heads, M, L)`` tensor whose size
  and FLOPs can be measured; ``torch.utils.flop_counter`` does not count CPU SDPA).
* :func:`dynamic_depthwise_conv3d` — per-sample depthwise kernels in ONE grouped conv.
* :class:`DynamicDepthwiseConv3d` — kernels mixed from a small learned basis by metadata.
* :class:`CrossModalAdaptiveFusion` — the module of DESIGN.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rtfsyn.models._common import (
    ModelError,
    check_int,
    check_prob,
    crop_to,
    norm3d,
    pad_to_multiple,
)

__all__ = [
    "CrossModalAdaptiveFusion",
    "DynamicDepthwiseConv3d",
    "cross_attention",
    "dynamic_depthwise_conv3d",
    "packed_grid",
    "pixel_shuffle_3d",
    "pixel_unshuffle_3d",
]


# --------------------------------------------------------------------------- packing
def pixel_unshuffle_3d(x: torch.Tensor, r: int) -> torch.Tensor:
    """Pack ``(B, C, D, H, W)`` → ``(B, C·r³, D/r, H/r, W/r)`` (each r³ block into channels)."""
    if r == 1:
        return x
    b, c, d, h, w = x.shape
    if d % r or h % r or w % r:
        raise ModelError(f"spatial shape {(d, h, w)} is not divisible by pack factor r={r}")
    x = x.reshape(b, c, d // r, r, h // r, r, w // r, r)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * r**3, d // r, h // r, w // r)


def pixel_shuffle_3d(x: torch.Tensor, r: int) -> torch.Tensor:
    """Recover ``(B, C·r³, D, H, W)`` → ``(B, C, D·r, H·r, W·r)``; inverse of the above."""
    if r == 1:
        return x
    b, cr, d, h, w = x.shape
    if cr % r**3:
        raise ModelError(f"channels={cr} are not divisible by r³={r**3}")
    c = cr // r**3
    x = x.reshape(b, c, r, r, r, d, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c, d * r, h * r, w * r)


def packed_grid(shape: Sequence[int], r: int) -> tuple[int, int, int]:
    """Spatial shape of the packed token grid for a feature volume of ``shape`` (padded)."""
    d, h, w = (math.ceil(int(s) / r) for s in shape)
    return d, h, w


# --------------------------------------------------------------------------- attention
def cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Softmax attention ``softmax(q kᵀ/√dh) v``.

    Args:
        q: ``(B, heads, M, dh)`` queries.
        k, v: ``(B, heads, L, dh)`` keys / values.
        key_mask: ``(B, L)`` bool, True = attend (False = padding).
        dropout_p: dropout on the attention weights (use 0 in eval).

    Returns ``(B, heads, M, dh)`` and the shape of the attention map ``(B, heads, M, L)``.
    """
    scores = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-1, -2)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    att = scores.softmax(-1)
    if dropout_p > 0:
        att = F.dropout(att, dropout_p)
    return att @ v, tuple(scores.shape)


# --------------------------------------------------------------------------- dynamic conv
def dynamic_depthwise_conv3d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Depthwise 3D convolution with a different kernel per sample, as ONE grouped conv.

    ``x (B, C, D, H, W)`` is viewed as ``(1, B·C, D, H, W)`` and convolved with ``weight``
    ``(B, C, k, k, k)`` viewed as ``(B·C, 1, k, k, k)``, ``groups = B·C`` ('same' padding,
    odd ``k``), so any batch size is correct. ``bias``: ``(C,)`` or ``(B, C)``.
    """
    b, c = x.shape[:2]
    if weight.shape[:2] != (b, c):
        raise ModelError(
            f"dynamic kernels {tuple(weight.shape)} do not match features {tuple(x.shape)}"
        )
    ks = tuple(int(s) for s in weight.shape[2:])
    if any(s % 2 == 0 for s in ks):
        raise ModelError(f"dynamic kernel size {ks} must be odd")
    bb = None
    if bias is not None:
        bb = (bias.expand(b, c) if bias.ndim == 1 else bias).reshape(b * c)
    y = F.conv3d(
        x.reshape(1, b * c, *x.shape[2:]), weight.reshape(b * c, 1, *ks), bb,
        padding=tuple(s // 2 for s in ks), groups=b * c,
    )
    return y.view(b, c, *y.shape[2:])


class DynamicDepthwiseConv3d(nn.Module):
    """Text-conditioned depthwise conv: kernel = Σ_k softmax(W t)_k · basis_k.

    Args:
        channels: feature channels ``C``.
        context_dim: width of the pooled metadata vector ``t``.
        basis_size: number ``K`` of basis kernels (each ``C × k³``).
        kernel_size: odd ``k``.

    ``forward(x (B, C, D, H, W), pooled (B, context_dim)) -> (B, C, D, H, W)``.
    Parameters: ``K·C·k³ + (context_dim+1)·K + C`` — a few thousand, not millions.
    """

    def __init__(
        self, channels: int, context_dim: int, basis_size: int = 4, kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.channels = check_int("channels", channels)
        check_int("context_dim", context_dim)
        self.basis_size = check_int("basis_size", basis_size)
        if check_int("kernel_size", kernel_size) % 2 == 0:
            raise ModelError(f"kernel_size={kernel_size} must be odd")
        k = kernel_size
        bound = 1.0 / math.sqrt(k**3)
        basis = torch.empty(basis_size, channels, k, k, k).uniform_(-bound, bound)
        self.basis = nn.Parameter(basis)
        self.coef = nn.Linear(context_dim, basis_size)
        self.bias = nn.Parameter(torch.zeros(channels))

    def kernels(self, pooled: torch.Tensor) -> torch.Tensor:
        """Per-sample kernels ``(B, C, k, k, k)`` from ``pooled (B, context_dim)``."""
        w = self.coef(pooled).softmax(-1)  # (B, K)
        return torch.einsum("bk,kcxyz->bcxyz", w, self.basis)

    def forward(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return dynamic_depthwise_conv3d(x, self.kernels(pooled), self.bias)


# --------------------------------------------------------------------------- fusion
class CrossModalAdaptiveFusion(nn.Module):
    """Packed cross-attention + dynamic convolution, each gated by metadata, residual.

    (a) ``GroupNorm`` → pad to a multiple of ``r`` → 3D pixel-unshuffle by ``r`` (``C·r³``
    channels, ``M = N/r³`` tokens) → linear to ``attn_dim`` → multi-head cross-attention
    (queries = packed voxel tokens, keys/values = metadata tokens, key padding mask) →
    linear back to ``C·r³`` → pixel-shuffle → crop. The attention map holds
    ``B·heads·M·L`` elements, ``M = ⌈D/r⌉⌈H/r⌉⌈W/r⌉``.
    (b) :class:`DynamicDepthwiseConv3d` with kernels from the pooled metadata, then GELU
    and a 1×1×1 projection (channel mixing).
    (c) ``y = x + σ(g_a(t)) ⊙ a + σ(g_b(t)) ⊙ b`` with per-channel gates from ``t``.

    Args:
        channels: feature channels ``C``.
        context_dim: metadata token width ``d``.
        attn_dim: attention width (divisible by ``heads``).
        heads: attention heads.
        pack_factor: packing factor ``r`` (used when ``use_packing``).
        use_packing: False → ``r = 1`` (every voxel a query: conventional full resolution).
        use_dynamic_conv: False → branch (b) is absent.
        basis_size, kernel_size: dynamic-conv basis ``K`` and kernel size ``k``.
        dropout: dropout on the attention weights (training only).

    ``forward(x (B, C, D, H, W), tokens (B, L, d), mask (B, L), pooled (B, d))`` →
    ``(B, C, D, H, W)``; any D, H, W (padded to a multiple of ``r`` internally).
    """

    def __init__(
        self,
        channels: int,
        context_dim: int,
        attn_dim: int = 64,
        heads: int = 4,
        pack_factor: int = 2,
        use_packing: bool = True,
        use_dynamic_conv: bool = True,
        basis_size: int = 4,
        kernel_size: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.channels = check_int("channels", channels)
        check_int("context_dim", context_dim)
        check_int("attn_dim", attn_dim)
        self.heads = check_int("heads", heads)
        if attn_dim % heads:
            raise ModelError(f"attn_dim={attn_dim} is not divisible by heads={heads}")
        check_int("pack_factor", pack_factor)
        self.dropout = check_prob("dropout", dropout)
        self.use_packing = bool(use_packing)
        self.use_dynamic_conv = bool(use_dynamic_conv)
        self.r = pack_factor if use_packing else 1
        packed = channels * self.r**3
        self.norm = norm3d(channels)
        self.q_proj = nn.Linear(packed, attn_dim)
        self.k_proj = nn.Linear(context_dim, attn_dim)
        self.v_proj = nn.Linear(context_dim, attn_dim)
        self.out_proj = nn.Linear(attn_dim, packed)
        self.gate_attn = nn.Linear(context_dim, channels)
        if self.use_dynamic_conv:
            self.dynconv: DynamicDepthwiseConv3d | None = DynamicDepthwiseConv3d(
                channels, context_dim, basis_size, kernel_size
            )
            self.dyn_proj: nn.Module | None = nn.Conv3d(channels, channels, 1)
            self.gate_dyn: nn.Module | None = nn.Linear(context_dim, channels)
        else:
            self.dynconv = self.dyn_proj = self.gate_dyn = None
        for gate in (self.gate_attn, self.gate_dyn):
            if gate is not None:
                nn.init.normal_(gate.weight, std=0.02)
                nn.init.zeros_(gate.bias)
        #: shape ``(B, heads, M, L)`` of the attention map of the last forward call
        self.last_attention_shape: tuple[int, ...] | None = None

    def attention_map_elements(
        self, shape: Sequence[int], num_tokens: int, batch_size: int = 1
    ) -> int:
        """Elements of the attention map for features of spatial ``shape``: B·heads·(N/r³)·L."""
        m = math.prod(packed_grid(shape, self.r))
        return batch_size * self.heads * m * num_tokens

    def attend(self, h: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Branch (a) on normalised features ``h (B, C, D, H, W)`` → ``(B, C, D, H, W)``."""
        hp, shape = pad_to_multiple(h, self.r, mode="constant")
        packed = pixel_unshuffle_3d(hp, self.r)
        b, cp = packed.shape[:2]
        grid = packed.shape[2:]
        tok = packed.flatten(2).transpose(1, 2)  # (B, M, C r³)
        q = self.q_proj(tok).view(b, tok.shape[1], self.heads, -1).transpose(1, 2)
        k = self.k_proj(tokens).view(b, tokens.shape[1], self.heads, -1).transpose(1, 2)
        v = self.v_proj(tokens).view(b, tokens.shape[1], self.heads, -1).transpose(1, 2)
        o, att_shape = cross_attention(q, k, v, mask, self.dropout if self.training else 0.0)
        self.last_attention_shape = att_shape
        o = self.out_proj(o.transpose(1, 2).reshape(b, tok.shape[1], -1))
        o = o.transpose(1, 2).reshape(b, cp, *grid)
        return crop_to(pixel_shuffle_3d(o, self.r), shape)

    def forward(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        pooled: torch.Tensor,
    ) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.channels:
            raise ModelError(
                f"CrossModalAdaptiveFusion expects (B, {self.channels}, D, H, W): "
                f"got {tuple(x.shape)}"
            )
        h = self.norm(x)
        gate_shape = (x.shape[0], self.channels, 1, 1, 1)
        out = x + torch.sigmoid(self.gate_attn(pooled)).view(gate_shape) * self.attend(
            h, tokens, mask
        )
        if self.dynconv is not None:
            assert self.dyn_proj is not None and self.gate_dyn is not None
            d = self.dyn_proj(F.gelu(self.dynconv(h, pooled)))
            out = out + torch.sigmoid(self.gate_dyn(pooled)).view(gate_shape) * d
        return out
