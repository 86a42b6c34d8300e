"""The training loss (rtfsyn.training.losses)."""

from __future__ import annotations

import pytest
import torch
from monai.metrics.regression import compute_ssim_and_cs

from rtfsyn.training.losses import (
    masked_l1,
    masked_sorted_l1,
    masked_ssim,
    ssim_map,
    synthesis_loss,
)


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


def test_sorted_l1_is_zero_for_a_rearrangement_and_at_most_l1() -> None:
    torch.manual_seed(3)
    x = torch.rand(2, 1, 8, 8, 8)
    mask = torch.ones_like(x)
    shuffled = x.flatten(2)[..., torch.randperm(512)].reshape(x.shape)
    assert float(masked_sorted_l1(shuffled, x, mask)) == pytest.approx(0.0, abs=1e-7)
    assert float(masked_l1(shuffled, x, mask)) > 0.2
    y = torch.rand_like(x)
    assert float(masked_sorted_l1(y, x, mask)) <= float(masked_l1(y, x, mask)) + 1e-7


def test_sorted_l1_costs_a_narrowed_range_and_pushes_it_back_out() -> None:
    torch.manual_seed(4)
    target = torch.rand(1, 1, 8, 8, 8)
    mask = torch.ones_like(target)
    narrowed = (0.5 + 0.5 * (target - 0.5)).requires_grad_(True)  # same order, half the range
    dist = masked_sorted_l1(narrowed, target, mask)
    assert float(dist) == pytest.approx(float((0.5 * (target - 0.5)).abs().mean()), rel=1e-5)
    (grad,) = torch.autograd.grad(dist, narrowed)
    # a gradient step lowers the dark voxels and raises the bright ones: the range widens
    assert float(grad[target < 0.3].max()) > 0 and float(grad[target > 0.7].min()) < 0


def test_sorted_l1_uses_only_mask_voxels_and_skips_empty_patches() -> None:
    torch.manual_seed(5)
    target = torch.rand(2, 1, 8, 8, 8)
    pred = target.clone()
    pred[:, :, 4:] = 5.0  # wrong only outside the mask
    mask = torch.zeros_like(target)
    mask[0, :, :4] = 1  # the second patch has no brain voxel
    assert float(masked_sorted_l1(pred, target, mask)) == pytest.approx(0.0, abs=1e-7)
    assert float(masked_sorted_l1(pred, target, torch.zeros_like(mask))) == 0.0


def test_synthesis_loss_adds_the_sorted_term_only_when_weighted() -> None:
    torch.manual_seed(6)
    x, y = torch.rand(1, 1, 12, 12, 12), torch.rand(1, 1, 12, 12, 12)
    mask = torch.ones_like(x)
    base, parts = synthesis_loss(0.5 + 0.2 * (y - 0.5), x, mask)
    assert "sorted" not in parts
    loss, parts = synthesis_loss(0.5 + 0.2 * (y - 0.5), x, mask, sorted_weight=2.0)
    assert parts["sorted"] > 0.1
    assert float(loss) == pytest.approx(float(base) + 2.0 * parts["sorted"], rel=1e-5)
