from __future__ import annotations

import math

import numpy as np
import pytest

from rtfsyn.metrics import all_metrics, mae, nmse, psnr, ssim3d


def _vol(seed=0, shape=(24, 24, 24)):
    rng = np.random.default_rng(seed)
    return rng.random(shape).astype(np.float32)


def test_identical_volumes() -> None:
    x = _vol()
    m = all_metrics(x, x)
    assert m["psnr"] == math.inf
    assert m["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert m["mae"] == 0.0 and m["nmse"] == 0.0


def test_constant_offset_known_values() -> None:
    x = np.full((20, 20, 20), 0.5, np.float32)
    y = x + 0.1
    assert mae(y, x) == pytest.approx(0.1, abs=1e-6)
    assert psnr(y, x) == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.01)
    assert nmse(y, x) == pytest.approx(0.01 / 0.25, rel=1e-5)


def test_mask_restricts_metrics() -> None:
    x = np.zeros((16, 16, 16), np.float32)
    y = x.copy()
    y[:8] = 0.2  # error only outside the mask
    mask = np.zeros_like(x, bool)
    mask[8:] = True
    assert mae(y, x, mask) == 0.0
    assert psnr(y, x, mask) == math.inf
    assert mae(y, x) == pytest.approx(0.1)


def test_ssim_drops_with_noise_and_is_symmetric() -> None:
    x = _vol(1)
    noisy = np.clip(x + np.random.default_rng(2).normal(0, 0.2, x.shape), 0, 1)
    s = ssim3d(noisy, x)
    assert 0.0 < s < 0.95
    assert ssim3d(x, noisy) == pytest.approx(s, rel=1e-5)
    worse = np.clip(x + np.random.default_rng(2).normal(0, 0.4, x.shape), 0, 1)
    assert ssim3d(worse, x) < s


def test_shape_mismatch_and_empty_mask() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="mask is empty"):
        mae(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), np.zeros((4, 4, 4), bool))
