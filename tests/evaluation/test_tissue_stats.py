from __future__ import annotations

import math

import numpy as np
import pytest

from rtfsyn.evaluation.stats import mean_std, paired_comparison
from rtfsyn.evaluation.tissue import (
    relative_volume_errors,
    three_class_segmentation,
    tissue_volumes,
)


def test_three_classes_recovered() -> None:
    rng = np.random.default_rng(0)
    vol = np.zeros((20, 20, 20), np.float32)
    vol[:, :, :6] = 0.2
    vol[:, :, 6:14] = 0.5
    vol[:, :, 14:] = 0.9
    vol += rng.normal(0, 0.03, vol.shape).astype(np.float32)
    mask = np.ones(vol.shape, bool)
    mask[0] = False
    labels = three_class_segmentation(vol, mask)
    assert np.all(labels[0] == 0)
    assert np.mean(labels[1:, :, :6] == 1) > 0.99
    assert np.mean(labels[1:, :, 6:14] == 2) > 0.99
    assert np.mean(labels[1:, :, 14:] == 3) > 0.99
    vols = tissue_volumes(labels, "T2w", voxel_ml=0.001)
    assert vols["WM"] == pytest.approx(19 * 20 * 6 * 0.001, rel=0.02)
    err = relative_volume_errors({"WM": 1.1, "GM": 2.0}, {"WM": 1.0, "GM": 2.0})
    assert err == pytest.approx({"WM": 0.1, "GM": 0.0})


def test_mean_std_ignores_nan() -> None:
    assert mean_std([1.0, 3.0, float("nan")]) == pytest.approx((2.0, math.sqrt(2)))
    assert math.isnan(mean_std([])[0])


def test_paired_comparison() -> None:
    a = [30.0, 31.0, 29.5, 32.0, 30.5, 31.5]
    b = [x - 1.0 + 0.1 * i for i, x in enumerate(a)]
    r = paired_comparison(a, b)
    assert r["n"] == 6
    assert r["mean_diff"] == pytest.approx(1.0 - 0.25)
    assert 0 < r["p_wilcoxon"] < 0.05
    assert paired_comparison(a[:4], b[:4])["p_wilcoxon"] is None
    assert paired_comparison(a, a)["p_wilcoxon"] == 1.0


def test_tissue_remap_paints_donor_class_means() -> None:
    from rtfsyn.evaluation.tissue import tissue_remap

    rng = np.random.default_rng(0)
    src = rng.choice([0.1, 0.5, 0.9], size=(12, 12, 12)) + rng.normal(0, 0.01, (12, 12, 12))
    mask = np.ones(src.shape, bool)
    mask[0] = False
    donor = rng.choice([0.2, 0.6, 1.0], size=(10, 10, 10))  # another grid, other levels
    target = np.select([donor < 0.4, donor < 0.8], [0.7, 0.3], 0.1)  # T1 → T2-like inversion
    out, means = tissue_remap(src, mask, donor, np.ones(donor.shape, bool), target)
    assert means == pytest.approx([0.7, 0.3, 0.1])
    assert np.allclose(out[mask & (src < 0.3)], 0.7) and np.allclose(out[mask & (src > 0.7)], 0.1)
    assert (out[~mask] == 0).all()
