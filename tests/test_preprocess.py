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


# --------------------------------------------------------------------------- issue 13
def test_skull_strip_warning_on_synthetic_heads() -> None:
    from rtfsyn.preprocess import skull_strip_warning

    rng = np.random.default_rng(0)
    z, y, x = np.indices((40, 40, 40), dtype=np.float32)
    r = ((z - 19.5) / 12) ** 2 + ((y - 19.5) / 14) ** 2 + ((x - 19.5) / 10) ** 2
    stripped = np.where(r <= 1, 500 + 100 * rng.random(r.shape), 0).astype(np.float32)
    assert skull_strip_warning(stripped, brain_mask(stripped)) is None
    head = stripped + np.where(r > 1, 5 + 5 * rng.random(r.shape), 0).astype(np.float32)
    msg = skull_strip_warning(head, brain_mask(head))
    assert msg is not None and "not skull-stripped" in msg
    assert "--mask" in msg and "HD-BET" in msg and "SynthStrip" in msg and "BET" in msg


def test_skull_strip_warning_on_real_scans(real_data) -> None:
    from rtfsyn import io
    from rtfsyn.preprocess import skull_strip_warning

    def warn(path):
        data = np.asarray(io.load_nifti(path).dataobj)
        return skull_strip_warning(data, brain_mask(data))

    mprage = real_data / "sidecar-example" / "5_anat-T1w_acq-tfl.nii.gz"
    msg = warn(mprage)
    assert msg is not None and "field of view" in msg
    brats = real_data / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t1n.nii.gz"
    assert warn(brats) is None
    assert warn(real_data / "MNI152-template" / "MNI152_T1_1mm_brain.nii.gz") is None
