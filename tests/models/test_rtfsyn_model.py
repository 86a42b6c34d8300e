from __future__ import annotations

import pytest
import torch
from _model_helpers import metas, targets, tiny_model

from rtfsyn.models import (
    AxisAwareRefinement,
    ConvHead,
    CrossModalAdaptiveFusion,
    ImplicitDecoder,
    ModelError,
    RTFSyn,
    cell_size,
    encode_fields,
    make_coord_grid,
)

ODD = (20, 24, 18)


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("arch", ["rtfsyn", "crossattn", "unet3d"])
@pytest.mark.parametrize("shape", [ODD, (9, 11, 7)])
def test_output_shape_odd_sizes(arch: str, shape) -> None:
    m = tiny_model(arch=arch).eval()
    x = torch.rand(2, 1, *shape)
    with torch.no_grad():
        y = m(x, metas()[:2], targets()[:2])
    assert y.shape == (2, 1, *shape)
    assert torch.isfinite(y).all()


def test_conv_head_shapes() -> None:
    m = tiny_model(decoder="conv").eval()
    assert isinstance(m.decoder, ConvHead)
    with torch.no_grad():
        assert m(torch.rand(1, 1, *ODD), metas()[0], targets()[0]).shape == (1, 1, *ODD)
        y = m(torch.rand(1, 1, 10, 12, 9), metas()[0], targets()[0], out_shape=(20, 12, 9))
    assert y.shape == (1, 1, 20, 12, 9)
    with pytest.raises(ModelError, match="implicit decoder"):
        m.query(m.encode(torch.rand(1, 1, 8, 8, 8), metas()[0], targets()[0]),
                torch.zeros(1, 1, 3), torch.ones(3))


@pytest.mark.parametrize(
    "kw", [{}, {"arch": "crossattn"}, {"arch": "unet3d"}, {"decoder": "conv"}],
    ids=["rtfsyn", "crossattn", "unet3d", "conv-head"],
)
def test_gradients_reach_every_parameter(kw) -> None:
    # field dropout on: the batch also has missing fields, so every null token,
    # every value embedding and every Fourier projection is used by some sample
    m = tiny_model(field_dropout=0.3, **kw).train()
    torch.manual_seed(3)
    x = torch.rand(3, 1, 12, 10, 14)
    y = m(x, metas(), targets(), out_shape=(12, 10, 14))
    ((y - x) ** 2).mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kw", [{}, {"arch": "crossattn"}, {"arch": "unet3d"},
                                {"decoder": "conv"}],
                         ids=["rtfsyn", "crossattn", "unet3d", "conv-head"])
def test_batch_consistency(kw) -> None:
    m = tiny_model(**kw).eval()
    torch.manual_seed(1)
    x = torch.rand(3, 1, 14, 12, 10)
    with torch.no_grad():
        y = m(x, metas(), targets())
        for b in range(3):
            yb = m(x[b:b + 1], [metas()[b]], [targets()[b]])
            torch.testing.assert_close(y[b:b + 1], yb, atol=1e-5, rtol=1e-5)
    # metadata matters: other targets give other outputs
    with torch.no_grad():
        assert not torch.allclose(m(x, metas(), targets()[::-1]), y, atol=1e-4)


def test_metadata_as_encoded_fields_or_single_record() -> None:
    m = tiny_model().eval()
    x = torch.rand(2, 1, 8, 8, 8)
    with torch.no_grad():
        ref = m(x, metas()[:2], targets()[:2])
        torch.testing.assert_close(m(x, encode_fields(metas()[:2]), encode_fields(targets()[:2])),
                                   ref)
        one = m(x, metas()[0], targets()[0])
        torch.testing.assert_close(one[1:], m(x[1:], [metas()[0]], [targets()[0]]),
                                   atol=1e-5, rtol=1e-5)


def test_arbitrary_output_grid() -> None:
    m = tiny_model().eval()
    x = torch.rand(1, 1, 10, 12, 8)
    with torch.no_grad():
        fine = m(x, metas()[0], targets()[0], out_shape=(20, 12, 8))  # 2× along D
        assert fine.shape == (1, 1, 20, 12, 8)
        coarse = m(x, metas()[0], targets()[0], out_shape=(5, 6, 4))
        assert coarse.shape == (1, 1, 5, 6, 4)
        # forward == explicit query() on the same coordinates (one code path)
        state = m.encode(x, metas()[0], targets()[0])
        q = m.query(state, make_coord_grid((20, 12, 8))[None], cell_size((20, 12, 8)),
                    chunk_size=97)
        torch.testing.assert_close(q.transpose(1, 2).reshape(1, 1, 20, 12, 8), fine,
                                   atol=1e-6, rtol=1e-6)


def test_ablation_flags_remove_components() -> None:
    full = tiny_model()
    assert isinstance(full, RTFSyn)
    assert isinstance(full.refinement, AxisAwareRefinement)
    assert isinstance(full.decoder, ImplicitDecoder)
    fusion = full.fusions[0]
    assert isinstance(fusion, CrossModalAdaptiveFusion) and fusion.r == 2
    assert fusion.dynconv is not None
    n_full = _count(full)

    no_ref = tiny_model(use_refinement=False)
    assert no_ref.refinement is None
    assert not any(isinstance(x, AxisAwareRefinement) for x in no_ref.modules())
    no_pack = tiny_model(use_packing=False)
    assert no_pack.fusions[0].r == 1 and no_pack.fusions[0].q_proj.in_features == 16
    no_dyn = tiny_model(use_dynamic_conv=False)
    assert no_dyn.fusions[0].dynconv is None
    conv = tiny_model(decoder="conv")
    assert isinstance(conv.decoder, ConvHead)
    assert not any(isinstance(x, ImplicitDecoder) for x in conv.modules())
    counts = {_count(m) for m in (no_ref, no_pack, no_dyn, conv)}
    assert n_full not in counts and len(counts) == 4
    x = torch.rand(1, 1, 8, 8, 8)
    for m in (no_ref, no_pack, no_dyn, conv):
        with torch.no_grad():
            assert m.eval()(x, metas()[0], targets()[0]).shape == (1, 1, 8, 8, 8)


def test_determinism_under_seed() -> None:
    x = torch.rand(2, 1, 10, 8, 12)
    outs = []
    for _ in range(2):
        m = tiny_model(seed=7, field_dropout=0.5).train()
        torch.manual_seed(123)  # field dropout draws from the torch RNG
        outs.append(m(x, metas()[:2], targets()[:2]).detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    other = tiny_model(seed=8).eval()
    with torch.no_grad():
        assert not torch.allclose(other(x, metas()[:2], targets()[:2]), outs[0])


def test_state_dict_round_trip() -> None:
    a, b = tiny_model(seed=1).eval(), tiny_model(seed=2).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 1, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(a(x, metas()[0], targets()[0]), b(x, metas()[0], targets()[0]))


def test_errors() -> None:
    m = tiny_model().eval()
    with pytest.raises(ModelError, match="out_shape"):
        m(torch.rand(1, 1, 8, 8, 8), metas()[0], targets()[0], out_shape=(8, 8))
    with pytest.raises(ModelError, match="got 3 metadata records for a batch of 2"):
        m(torch.rand(2, 1, 8, 8, 8), metas(), targets())
    with pytest.raises(ModelError, match=r"\(B, C, D, H, W\)"):
        m(torch.rand(1, 8, 8, 8), metas()[0], targets()[0])


@pytest.mark.parametrize(
    "kw",
    [
        {"downsample": 4, "encoder_channels": [8, 12, 16], "encoder_blocks": [1, 0, 1]},
        {"pack_factor": 3, "tie_axis_weights": True, "fusion_blocks": 2, "post_blocks": 0},
        {"downsample": 1, "encoder_channels": [8], "encoder_blocks": [1], "decoder_skip": False},
    ],
    ids=["down4", "pack3-tied-2fusions", "down1-noskip"],
)
def test_other_configurations(kw) -> None:
    m = tiny_model(**kw).eval()
    with torch.no_grad():
        y = m(torch.rand(2, 1, *ODD), metas()[:2], targets()[:2], out_shape=(10, 24, 36))
    assert y.shape == (2, 1, 10, 24, 36) and torch.isfinite(y).all()


def test_padding_keeps_voxel_centres() -> None:
    """Odd input sizes are padded at the end; output voxel j must map to padded voxel j."""
    m = tiny_model().eval()
    with torch.no_grad():
        state = m.encode(torch.rand(1, 1, 21, 20, 19), metas()[0], targets()[0])
    assert state.in_shape == (21, 20, 19) and state.padded_shape == (22, 20, 20)
    mapped = m._to_padded(state, make_coord_grid((21, 20, 19), flatten=False))
    ref = make_coord_grid((22, 20, 20), flatten=False)[:21, :, :19]
    torch.testing.assert_close(mapped, ref)
