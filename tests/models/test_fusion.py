from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from rtfsyn.models import (
    CrossModalAdaptiveFusion,
    DynamicDepthwiseConv3d,
    ModelError,
    dynamic_depthwise_conv3d,
    pixel_shuffle_3d,
    pixel_unshuffle_3d,
)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_pixel_shuffle_unshuffle_are_inverses(r: int) -> None:
    x = torch.randn(2, 3, 2 * r, 3 * r, r)
    packed = pixel_unshuffle_3d(x, r)
    assert packed.shape == (2, 3 * r**3, 2, 3, 1)
    torch.testing.assert_close(pixel_shuffle_3d(packed, r), x, rtol=0, atol=0)
    y = torch.randn(2, 3 * r**3, 2, 1, 3)
    torch.testing.assert_close(pixel_unshuffle_3d(pixel_shuffle_3d(y, r), r), y, rtol=0, atol=0)


def test_pixel_unshuffle_layout() -> None:
    r = 2
    x = torch.randn(1, 2, 4, 6, 2)
    p = pixel_unshuffle_3d(x, r)
    c, i, j, k, d, h, w = 1, 1, 0, 1, 1, 2, 0
    channel = c * r**3 + i * r * r + j * r + k
    assert p[0, channel, d, h, w] == x[0, c, d * r + i, h * r + j, w * r + k]


def test_pixel_unshuffle_rejects_indivisible() -> None:
    with pytest.raises(ModelError, match="r=2"):
        pixel_unshuffle_3d(torch.randn(1, 1, 3, 4, 4), 2)


def test_grouped_dynamic_conv_equals_per_sample_loop() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4, 6, 5, 7)
    w = torch.randn(3, 4, 3, 3, 3)
    bias = torch.randn(4)
    y = dynamic_depthwise_conv3d(x, w, bias)
    for b in range(3):
        ref = torch.nn.functional.conv3d(x[b:b + 1], w[b].unsqueeze(1), bias, padding=1, groups=4)
        torch.testing.assert_close(y[b:b + 1], ref, atol=1e-5, rtol=1e-5)


def test_dynamic_kernels_depend_on_metadata() -> None:
    torch.manual_seed(0)
    m = DynamicDepthwiseConv3d(4, 8, basis_size=3, kernel_size=3)
    pooled = torch.randn(2, 8)
    k = m.kernels(pooled)
    assert k.shape == (2, 4, 3, 3, 3)
    assert not torch.allclose(k[0], k[1])
    assert sum(p.numel() for p in m.parameters()) == 3 * 4 * 27 + 9 * 3 + 4


def _fusion(**kw) -> CrossModalAdaptiveFusion:
    torch.manual_seed(0)
    args = dict(channels=8, context_dim=12, attn_dim=16, heads=2, pack_factor=2)
    args.update(kw)
    return CrossModalAdaptiveFusion(**args).eval()


def _context(b: int, length: int = 6):
    torch.manual_seed(1)
    tokens = torch.randn(b, length, 12)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[1:, -2:] = False  # padding in samples 1, 2
    return tokens, mask, torch.randn(b, 12)


@pytest.mark.parametrize("shape", [(8, 8, 8), (7, 9, 5)])
def test_fusion_shape_with_padding(shape) -> None:
    m = _fusion()
    tokens, mask, pooled = _context(2)
    x = torch.randn(2, 8, *shape)
    assert m(x, tokens, mask, pooled).shape == x.shape


def test_fusion_batch_consistency() -> None:
    m = _fusion()
    tokens, mask, pooled = _context(3)
    x = torch.randn(3, 8, 7, 6, 5)
    with torch.no_grad():
        y = m(x, tokens, mask, pooled)
        for b in range(3):
            yb = m(x[b:b + 1], tokens[b:b + 1], mask[b:b + 1], pooled[b:b + 1])
            torch.testing.assert_close(y[b:b + 1], yb, atol=1e-5, rtol=1e-5)


def test_padded_tokens_are_ignored() -> None:
    m = _fusion()
    tokens, mask, pooled = _context(3)
    x = torch.randn(3, 8, 4, 4, 4)
    changed = tokens.clone()
    changed[1:, -2:] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(m(x, tokens, mask, pooled), m(x, changed, mask, pooled))


def _attention_bmm_flops(m: CrossModalAdaptiveFusion, x, ctx) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(x, *ctx)
    counts = fc.get_flop_counts()["Global"]
    return sum(v for op, v in counts.items() if "bmm" in str(op) or "matmul" in str(op))


def test_packing_shrinks_attention_map_by_r_cubed() -> None:
    x = torch.randn(2, 8, 8, 8, 8)
    ctx = _context(2, length=6)
    # no dynamic conv: its kernel mixing (einsum → bmm) would be counted too
    full = _fusion(use_packing=False, use_dynamic_conv=False)
    packed = _fusion(pack_factor=2, use_dynamic_conv=False)
    full(x, *ctx)
    packed(x, *ctx)
    assert full.last_attention_shape == (2, 2, 512, 6)  # (B, heads, N, L)
    assert packed.last_attention_shape == (2, 2, 64, 6)  # (B, heads, N/r³, L)
    assert packed.attention_map_elements((8, 8, 8), 6, 2) == 2 * 2 * 64 * 6
    ratio = _attention_bmm_flops(full, x, ctx) / _attention_bmm_flops(packed, x, ctx)
    assert ratio == pytest.approx(8.0)


def test_dynamic_conv_flag_removes_branch() -> None:
    with_dyn, without = _fusion(), _fusion(use_dynamic_conv=False)
    assert without.dynconv is None and with_dyn.dynconv is not None
    n = [sum(p.numel() for p in m.parameters()) for m in (with_dyn, without)]
    assert n[0] > n[1]
    tokens, mask, pooled = _context(2)
    assert without(torch.randn(2, 8, 4, 4, 4), tokens, mask, pooled).shape == (2, 8, 4, 4, 4)


def test_invalid_arguments() -> None:
    with pytest.raises(ModelError, match="attn_dim=10"):
        _fusion(attn_dim=10, heads=4)
    with pytest.raises(ModelError, match="kernel_size=4"):
        _fusion(kernel_size=4)
