from __future__ import annotations

import numpy as np
import pytest
import torch

from rtfsyn.training.augment import (
    IntensityAugment,
    apply_intensity_augment,
    sample_intensity_augment,
)


def _volume() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 12, 12, generator=g)
    x[:3] = 0.0  # background
    return x


def test_identity_draw_changes_nothing() -> None:
    x = _volume()
    assert torch.allclose(apply_intensity_augment(x, IntensityAugment()), x, atol=1e-6)


def test_strength_zero_is_identity() -> None:
    aug = sample_intensity_augment(np.random.default_rng(3), strength=0.0)
    x = _volume()
    assert torch.allclose(apply_intensity_augment(x, aug), x, atol=1e-6)


def test_background_stays_zero_and_range_is_kept() -> None:
    rng = np.random.default_rng(1)
    x = _volume()
    for _ in range(20):
        y = apply_intensity_augment(x, sample_intensity_augment(rng))
        assert torch.all(y[:3] == 0)
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert not torch.allclose(y, x)


def test_without_bias_the_tissue_order_is_kept() -> None:
    x = torch.linspace(0.01, 1.0, 1000).reshape(10, 10, 10)
    aug = IntensityAugment(gamma=1.3, warp=(0.3, 0.45, 0.8))
    y = apply_intensity_augment(x, aug).flatten()
    assert torch.all(y[1:] >= y[:-1])


def test_sampling_is_a_function_of_the_generator() -> None:
    a = sample_intensity_augment(np.random.default_rng(7))
    b = sample_intensity_augment(np.random.default_rng(7))
    assert a == b


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"gamma": 9.0}, "gamma=9.0"), ({"warp": (0.5, 0.4, 0.8)}, "warp=")],
)
def test_bad_parameters_are_named(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        IntensityAugment(**kwargs)


def test_bad_strength_is_named() -> None:
    with pytest.raises(ValueError, match="strength=3"):
        sample_intensity_augment(np.random.default_rng(0), strength=3)
