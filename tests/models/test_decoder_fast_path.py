"""The implicit decoder's grid fast path equals the general per-query path (issue 14)."""

from __future__ import annotations

import pytest
import torch
from _model_helpers import tiny_model

from rtfsyn.metadata import Metadata
from rtfsyn.models import ImplicitDecoder
from rtfsyn.models.implicit_decoder import make_coord_grid


def _grid_vs_general(dec: ImplicitDecoder, latent, shape, emb, skip, scale) -> float:
    """Max |grid path − general path| on the voxel centres of ``shape``."""
    b = latent.shape[0]
    with torch.no_grad():
        fast = dec.forward_grid(latent, shape, emb, skip, scale=scale)
        coords = (make_coord_grid(shape) + 1.0) * scale - 1.0
        ref = dec(latent, coords[None].expand(b, -1, -1),
                  torch.tensor([2.0 / n for n in shape]) * scale, emb, skip)
    assert fast.shape == (b, 1, *shape)
    return float((fast - ref.transpose(1, 2).reshape(fast.shape)).abs().max())


@pytest.mark.parametrize("shape", [(8, 10, 6), (16, 20, 12), (24, 30, 18), (5, 13, 7),
                                   (1, 3, 2)])
def test_grid_path_equals_general_path_random_weights(shape) -> None:
    # aligned (×1, ×2, ×3 the latent grid) and arbitrary output grids, with and without a
    # padded-frame scale, batch of 2 with different embeddings, skip at another resolution
    torch.manual_seed(0)
    dec = ImplicitDecoder(6, embed_dim=4, hidden=16, layers=3, skip_channels=3)
    for p in dec.parameters():
        torch.nn.init.normal_(p, std=0.5)
    latent = torch.randn(2, 6, 8, 10, 6)
    emb, skip = torch.randn(2, 4), torch.randn(2, 3, 16, 20, 12)
    for scale in (torch.ones(3), torch.tensor([0.875, 1.0, 0.75])):
        assert _grid_vs_general(dec, latent, shape, emb, skip, scale) <= 1e-5


def test_grid_path_without_skip_or_embedding_and_with_grad() -> None:
    torch.manual_seed(1)
    dec = ImplicitDecoder(5, hidden=8, layers=1)
    latent = torch.randn(1, 5, 4, 3, 5, requires_grad=True)
    assert _grid_vs_general(dec, latent.detach(), (8, 6, 10), None, None, torch.ones(3)) <= 1e-5
    # training uses the grid path: gradients equal those of the general path
    y = dec.forward_grid(latent, (8, 6, 10))
    g_fast = torch.autograd.grad(y.square().sum(), latent)[0]
    dec.fast_path = False
    y = dec.forward_grid(latent, (8, 6, 10))
    g_ref = torch.autograd.grad(y.square().sum(), latent)[0]
    torch.testing.assert_close(g_fast, g_ref, atol=1e-5, rtol=1e-5)


def test_grid_chunking_does_not_change_the_result() -> None:
    torch.manual_seed(2)
    dec = ImplicitDecoder(4, embed_dim=2, hidden=8, layers=2, skip_channels=2)
    latent, emb, skip = torch.randn(1, 4, 5, 6, 7), torch.randn(1, 2), torch.randn(1, 2, 10, 12, 14)
    with torch.no_grad():
        ref = dec.forward_grid(latent, (10, 12, 14), emb, skip)
        dec.grid_chunk = 1  # one row of the output per slab
        torch.testing.assert_close(dec.forward_grid(latent, (10, 12, 14), emb, skip), ref,
                                   atol=1e-6, rtol=1e-6)


def test_model_forward_uses_the_fast_path_and_matches_the_general_path() -> None:
    model = tiny_model().eval()
    x = torch.rand(1, 1, 14, 12, 10)  # padded to 14×12×10 (already even): no padding
    x2 = torch.rand(1, 1, 13, 11, 9)  # odd: padded, so the scale is not 1
    src, tgt = Metadata(contrast="T1w"), Metadata(contrast="T2w")
    for image, out_shape in ((x, (28, 24, 20)), (x2, (13, 11, 9)), (x2, (20, 17, 30))):
        with torch.no_grad():
            model.decoder.fast_path = True
            fast = model(image, src, tgt, out_shape=out_shape)
            model.decoder.fast_path = False
            ref = model(image, src, tgt, out_shape=out_shape)
        assert fast.shape == (1, 1, *out_shape)
        assert float((fast - ref).abs().max()) <= 1e-5


def test_bundled_model_same_output_on_both_paths() -> None:
    from rtfsyn.inference import _wants_prior, load_model

    lm = load_model(None, "cpu")
    torch.manual_seed(3)
    x = torch.rand(1, 2 if _wants_prior(lm) else 1, 20, 18, 16)  # + the prior channel
    src = Metadata(contrast="T1w", voxel_size=(2.0, 2.0, 2.0))
    tgt = Metadata(contrast="T2w", voxel_size=(1.0, 1.0, 1.0))
    with torch.inference_mode():
        lm.model.decoder.fast_path = True
        fast = lm.model(x, src, tgt, out_shape=(40, 36, 32))  # the 1 mm output of 2 mm work
        lm.model.decoder.fast_path = False
        ref = lm.model(x, src, tgt, out_shape=(40, 36, 32))
    assert float((fast - ref).abs().max()) <= 1e-5
    assert float(ref.std()) > 1e-3  # a real output, not a constant


@pytest.mark.parametrize(("layers", "skip_ch", "embed", "chunk"),
                         [(3, 3, 4, 37), (1, 0, 0, 1000), (2, 2, 0, 64)])
def test_chunked_training_path_equals_autograd(layers, skip_ch, embed, chunk) -> None:
    # the CPU training path against plain autograd through the slab path: same output and the
    # same gradient for every input and weight, on an aligned and an arbitrary (padded-frame)
    # grid; chunks that do not divide the grid; every chunk recomputed in the backward pass
    # (keep 0), every chunk's activations kept (keep 1e12), and a kept prefix of 2 chunks
    torch.manual_seed(3)
    dec = ImplicitDecoder(6, embed_dim=embed, hidden=16, layers=layers, skip_channels=skip_ch)
    for p in dec.parameters():
        torch.nn.init.normal_(p, std=0.5)
    latent = torch.randn(2, 6, 5, 4, 6, requires_grad=True)
    emb = torch.randn(2, embed, requires_grad=True) if embed else None
    skip = torch.randn(2, skip_ch, 10, 8, 12, requires_grad=True) if skip_ch else None
    inputs = [t for t in (latent, emb, skip) if t is not None] + list(dec.parameters())
    for shape, scale in (((10, 8, 12), None), ((7, 9, 5), torch.tensor([0.875, 1.0, 0.75]))):
        results = []
        per_chunk = 8 * chunk * 16 * 4 * (1 + len(dec.layers))  # bytes of one chunk's acts
        for train_chunk, keep in ((0, 0), (chunk, 0), (chunk, 10**12), (chunk, 2.5 * per_chunk)):
            dec.train_chunk, dec.train_keep_bytes = train_chunk, keep
            y = dec.forward_grid(latent, shape, emb, skip, scale=scale)
            loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() + y.square().sum()
            results.append((y.detach(), torch.autograd.grad(loss, inputs)))
        (y_a, g_a), *chunked = results
        for y_c, g_c in chunked:
            torch.testing.assert_close(y_c, y_a, atol=1e-5, rtol=1e-5)
            for a, b in zip(g_c, g_a, strict=True):
                torch.testing.assert_close(a, b, atol=1e-5 * float(b.abs().max()) + 1e-6,
                                           rtol=1e-4)
        # keeping the activations or recomputing them is the same arithmetic: bit for bit
        for y_c, g_c in chunked[1:]:
            assert torch.equal(y_c, chunked[0][0])
            assert all(torch.equal(a, b) for a, b in zip(g_c, chunked[0][1], strict=True))


def test_chunked_training_path_is_used_only_with_autograd_on_a_cpu() -> None:
    from rtfsyn.models import implicit_decoder

    dec = ImplicitDecoder(4, hidden=8, layers=2)
    latent = torch.randn(1, 4, 3, 3, 3, requires_grad=True)
    calls = []
    original = implicit_decoder._EnsembleMLP.apply

    def spy(*args):
        calls.append(1)
        return original(*args)

    implicit_decoder._EnsembleMLP.apply = spy  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            dec.forward_grid(latent, (6, 6, 6))
        assert not calls  # inference: the slab path
        dec.forward_grid(latent, (6, 6, 6)).sum().backward()
        assert calls == [1] and latent.grad is not None
    finally:
        implicit_decoder._EnsembleMLP.apply = original  # type: ignore[method-assign]
