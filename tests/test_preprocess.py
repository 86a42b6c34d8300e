from __future__ import annotations

import numpy as np
import pytest

from rtfsyn.errors import InputImageError
from rtfsyn.preprocess import bounding_box, brain_mask, robust_normalize


def _ball(shape=(30, 30, 30), r=10):
    z, y, x = np.indices(shape)
    c = (np.array(shape) - 1) / 2
    return ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= r**2


def test_brain_mask_fills_holes_and_drops_specks() -> None:
    ball = _ball()
    data = ball * 100.0
    data[15, 15, 15] = 0.0  # hole
    data[0, 0, 0] = 50.0  # speck
    m = brain_mask(data)
    assert m[15, 15, 15] and not m[0, 0, 0]
    assert m.sum() == ball.sum()


def test_brain_mask_empty_image() -> None:
    with pytest.raises(InputImageError, match="all zero"):
        brain_mask(np.zeros((5, 5, 5)))


def test_robust_normalize_range_and_background() -> None:
    rng = np.random.default_rng(0)
    ball = _ball()
    data = np.where(ball, rng.normal(500, 50, ball.shape), 0.0)
    out, (lo, hi) = robust_normalize(data, ball)
    assert out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.all(out[~ball] == 0)
    assert lo < 500 < hi
    frac_clipped = np.mean(out[ball] >= 1.0)
    assert 0.003 < frac_clipped < 0.01  # 0.5% above the 99.5th percentile


def test_robust_normalize_is_scale_invariant() -> None:
    rng = np.random.default_rng(1)
    ball = _ball()
    data = np.where(ball, rng.gamma(2.0, 100.0, ball.shape), 0.0)
    a, _ = robust_normalize(data, ball)
    b, _ = robust_normalize(data * 7.5 + 3.0, ball)
    np.testing.assert_allclose(a[ball], b[ball], atol=1e-5)


def test_bounding_box_margin_clipped() -> None:
    m = np.zeros((10, 10, 10), bool)
    m[2:5, 3:4, 8:10] = True
    assert bounding_box(m, margin=2) == (slice(0, 7), slice(1, 6), slice(6, 10))
