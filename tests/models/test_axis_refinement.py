from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from rtfsyn.models import AxisAwareRefinement, ModelError

PERM = (0, 1, 3, 2, 4)  # swap the D and H axes


def _randomise(m: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)


def test_shape_on_odd_sizes() -> None:
    torch.manual_seed(0)
    m = AxisAwareRefinement(8, kernel_size=7)
    x = torch.randn(2, 8, 5, 9, 3)
    assert m(x).shape == x.shape


def test_untied_module_is_axis_aware() -> None:
    torch.manual_seed(0)
    m = AxisAwareRefinement(4, kernel_size=5, tie_weights=False).eval()
    _randomise(m)
    x = torch.randn(1, 4, 8, 8, 8)
    assert not torch.allclose(m(x.permute(PERM)), m(x).permute(PERM), atol=1e-3)


def test_tied_module_with_equal_mixing_commutes_with_axis_permutation() -> None:
    torch.manual_seed(0)
    m = AxisAwareRefinement(4, kernel_size=5, tie_weights=True).eval()
    _randomise(m)
    with torch.no_grad():
        m.mix.zero_()
    x = torch.randn(1, 4, 8, 8, 8)
    torch.testing.assert_close(m(x.permute(PERM)), m(x).permute(PERM), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # unequal mixing weights: directional again
        m.mix.copy_(torch.tensor([2.0, -1.0, 0.0]))
    assert not torch.allclose(m(x.permute(PERM)), m(x).permute(PERM), atol=1e-3)


def test_tied_has_fewer_parameters() -> None:
    tied = sum(p.numel() for p in AxisAwareRefinement(8, tie_weights=True).parameters())
    untied = sum(p.numel() for p in AxisAwareRefinement(8, tie_weights=False).parameters())
    assert tied < untied


def _flops(m: torch.nn.Module, n: int) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(torch.randn(1, 16, n, n, n))
    return fc.get_total_flops()


def test_cost_is_linear_in_voxel_count() -> None:
    m = AxisAwareRefinement(16, kernel_size=7)
    ratio = _flops(m, 32) / _flops(m, 16)
    assert ratio == pytest.approx(8.0, rel=0.03)


def test_invalid_arguments() -> None:
    with pytest.raises(ModelError, match="kernel_size=6"):
        AxisAwareRefinement(8, kernel_size=6)
    with pytest.raises(ModelError, match="channels=0"):
        AxisAwareRefinement(0)
    with pytest.raises(ModelError, match=r"\(B, 8, D, H, W\)"):
        AxisAwareRefinement(8)(torch.randn(1, 4, 4, 4, 4))
