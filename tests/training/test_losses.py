"""The training loss (rtfsyn.training.losses)."""

from __future__ import annotations

import pytest
import torch
from monai.metrics.regression import compute_ssim_and_cs

from rtfsyn.training.losses import masked_ssim, ssim_map, synthesis_loss


@pytest.mark.parametrize("k", [7, 5, 3])
def test_separable_ssim_equals_monai(k) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 1, 12, 10, 14, requires_grad=True)
    y = torch.rand(2, 1, 12, 10, 14)
    ref, _ = compute_ssim_and_cs(x, y, 3, [k] * 3, [1.5] * 3, 1.0)
    ours = ssim_map(x, y, k)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    g_ref = torch.autograd.grad(ref.sum(), x)[0]
    g_ours = torch.autograd.grad(ours.sum(), x)[0]
    torch.testing.assert_close(g_ours, g_ref, atol=1e-4, rtol=1e-4)


def test_ssim_of_an_image_with_itself_is_one_and_drops_with_noise() -> None:
    torch.manual_seed(1)
    x = torch.rand(1, 1, 16, 16, 16)
    mask = torch.ones_like(x)
    assert float(masked_ssim(x, x, mask)) == pytest.approx(1.0, abs=1e-5)
    assert float(masked_ssim(x + 0.3 * torch.randn_like(x), x, mask)) < 0.9


def test_masked_ssim_ignores_voxels_outside_the_mask() -> None:
    torch.manual_seed(2)
    x = torch.rand(1, 1, 16, 16, 16)
    y = x.clone()
    y[..., 12:] = torch.rand_like(y[..., 12:])  # damage only outside the mask
    mask = torch.zeros_like(x)
    mask[..., :6] = 1
    assert float(masked_ssim(y, x, mask)) == pytest.approx(1.0, abs=1e-5)
    assert float(masked_ssim(y, x, torch.ones_like(x))) < 0.95


def test_synthesis_loss_parts() -> None:
    x = torch.rand(1, 1, 12, 12, 12)
    loss, parts = synthesis_loss(x, x, torch.ones_like(x))
    assert parts["l1"] == 0.0 and parts["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert float(loss) == pytest.approx(0.0, abs=1e-5)
