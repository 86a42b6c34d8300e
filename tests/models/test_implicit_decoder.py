from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rtfsyn.models import ImplicitDecoder, ModelError, cell_size, make_coord_grid, sample_features


def test_coord_grid_convention() -> None:
    g = make_coord_grid((2, 4, 1))
    assert g.shape == (8, 3)
    # voxel centres -1 + (2j+1)/n, (D, H, W) order, W fastest then H then D
    assert g[:, 0].tolist() == [-0.5] * 4 + [0.5] * 4
    assert g[:4, 1].tolist() == [-0.75, -0.25, 0.25, 0.75]
    assert g[:, 2].tolist() == [0.0] * 8
    assert make_coord_grid((3, 2, 5), flatten=False).shape == (3, 2, 5, 3)
    torch.testing.assert_close(cell_size((2, 4, 8)), torch.tensor([1.0, 0.5, 0.25]))


def test_sample_features_matches_voxels_and_interpolate() -> None:
    torch.manual_seed(0)
    vol = torch.randn(1, 2, 3, 4, 5)  # asymmetric: catches axis-order mistakes
    got = sample_features(vol, make_coord_grid((3, 4, 5))[None])
    torch.testing.assert_close(got, vol.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
    # a finer grid reproduces F.interpolate(trilinear, align_corners=False) inside the volume
    fine = sample_features(vol, make_coord_grid((6, 8, 10))[None])
    ref = F.interpolate(vol, size=(6, 8, 10), mode="trilinear", align_corners=False)
    torch.testing.assert_close(fine, ref.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)


def _decoder(**kw) -> ImplicitDecoder:
    torch.manual_seed(0)
    args = dict(latent_channels=6, embed_dim=4, hidden=16, layers=2, skip_channels=3)
    args.update(kw)
    return ImplicitDecoder(**args)


def _inputs(b: int = 2, q: int = 300):
    torch.manual_seed(1)
    latent = torch.randn(b, 6, 4, 5, 3)
    coords = torch.rand(b, q, 3) * 2 - 1
    cell = torch.full((b, q, 3), 0.1)
    return latent, coords, cell, torch.randn(b, 4), torch.randn(b, 3, 8, 10, 6)


def test_output_shape_and_chunking_is_exact() -> None:
    dec = _decoder()
    latent, coords, cell, emb, skip = _inputs()
    with torch.no_grad():
        ref = dec(latent, coords, cell, emb, skip, chunk_size=10_000)
        assert ref.shape == (2, 300, 1)
        for chunk in (1, 7, 64, 299):
            torch.testing.assert_close(dec(latent, coords, cell, emb, skip, chunk_size=chunk),
                                       ref, atol=1e-6, rtol=1e-6)


def test_cell_may_be_broadcast() -> None:
    dec = _decoder()
    latent, coords, cell, emb, skip = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(dec(latent, coords, torch.tensor([0.1] * 3), emb, skip),
                                   dec(latent, coords, cell, emb, skip))


def test_local_ensemble_uses_only_the_8_neighbours() -> None:
    dec = _decoder(skip_channels=0)
    latent, _, _, emb, _ = _inputs(b=1)
    size = torch.tensor([4.0, 5.0, 3.0])
    # query between latent voxels (1, 2, 0) and (2, 3, 1): continuous index 1.3, 2.6, 0.5
    u = torch.tensor([1.3, 2.6, 0.5])
    x = ((u + 0.5) * 2 / size - 1).view(1, 1, 3)
    cell = torch.full((1, 1, 3), 0.2)
    with torch.no_grad():
        y = dec(latent, x, cell, emb)
        changed = latent.clone()
        keep = torch.zeros_like(changed, dtype=torch.bool)
        keep[:, :, 1:3, 2:4, 0:2] = True
        changed[~keep] = 50.0
        torch.testing.assert_close(dec(changed, x, cell, emb), y)
        changed[:, :, 1, 2, 0] += 1.0  # a neighbour: output changes
        assert not torch.allclose(dec(changed, x, cell, emb), y)


def test_output_is_continuous_across_latent_cells() -> None:
    dec = _decoder(skip_channels=0)
    latent, _, _, emb, _ = _inputs(b=1)
    # crossing latent centre 2 along D, where the neighbour set switches from {1, 2} to {2, 3}
    eps = 1e-4
    u = torch.tensor([[2.0 - eps, 2.2, 1.1], [2.0 + eps, 2.2, 1.1]])
    x = ((u + 0.5) * 2 / torch.tensor([4.0, 5.0, 3.0]) - 1).unsqueeze(0)
    with torch.no_grad():
        y = dec(latent, x, torch.tensor([0.2] * 3), emb)
    assert (y[0, 0] - y[0, 1]).abs().item() < 1e-2


def test_errors() -> None:
    dec = _decoder()
    latent, coords, cell, emb, skip = _inputs()
    with pytest.raises(ModelError, match="coords"):
        dec(latent, coords[..., :2], cell, emb, skip)
    with pytest.raises(ModelError, match="embedding missing"):
        dec(latent, coords, cell, None, skip)
    with pytest.raises(ModelError, match="latent"):
        dec(latent[:, :3], coords, cell, emb, skip)
