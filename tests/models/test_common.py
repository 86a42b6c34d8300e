from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rtfsyn.models._common import ModelError, axis_conv3d


def _grouped_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, axis: int,
                  same: bool) -> torch.Tensor:
    c, k = x.shape[1], w.shape[-1]
    w = w.expand(c, k) if w.ndim == 1 else w
    shape, pad = [1, 1, 1], [0, 0, 0]
    shape[axis] = k
    pad[axis] = k // 2 if same else 0
    return F.conv3d(x, w.reshape(c, 1, *shape), b, padding=tuple(pad), groups=c)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("same", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_axis_conv3d_matches_grouped_conv3d(axis: int, same: bool, shared: bool) -> None:
    torch.manual_seed(axis)
    x = torch.randn(2, 3, 9, 10, 11, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5 if shared else (3, 5), dtype=torch.float64, requires_grad=True)
    b = None if shared else torch.randn(3, dtype=torch.float64, requires_grad=True)
    got = axis_conv3d(x, w, b, axis=axis, same=same)
    ref = _grouped_conv(x, w, b, axis, same)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    inputs = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad(got, inputs, g)
    refs = torch.autograd.grad(ref, inputs, g)
    for a, r in zip(grads, refs, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


def test_axis_conv3d_rejects_bad_arguments() -> None:
    x = torch.zeros(1, 2, 4, 4, 4)
    with pytest.raises(ModelError, match="axis=3"):
        axis_conv3d(x, torch.zeros(3), axis=3)
    with pytest.raises(ModelError, match="odd k"):
        axis_conv3d(x, torch.zeros(2, 4))
    with pytest.raises(ModelError, match=r"expected \(k,\) or \(2, k\)"):
        axis_conv3d(x, torch.zeros(3, 3))
    with pytest.raises(ModelError, match="< kernel 5"):
        axis_conv3d(x, torch.zeros(5), same=False)
