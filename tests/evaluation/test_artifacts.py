from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from rtfsyn.evaluation.artifacts import ARTIFACTS, SEVERITIES, apply_artifact, sample_artifact


def _phantom(shape=(32, 32, 32)):
    z, y, x = np.indices(shape, dtype=np.float32)
    c = (np.array(shape) - 1) / 2
    r = np.sqrt(((z - c[0]) / 12) ** 2 + ((y - c[1]) / 13) ** 2 + ((x - c[2]) / 11) ** 2)
    vol = np.where(r <= 1, 0.4 + 0.5 * (r < 0.5), 0.0).astype(np.float32)
    return ndimage.gaussian_filter(vol, 0.7)


@pytest.mark.parametrize("kind", ARTIFACTS)
def test_each_artifact_changes_image_more_with_severity(kind) -> None:
    vol = _phantom()
    errors = []
    for sev in SEVERITIES:
        out = apply_artifact(vol, sample_artifact(kind, sev, seed=1))
        assert out.shape == vol.shape and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0
        errors.append(float(np.mean(np.abs(out - vol))))
    assert errors[0] > 0
    assert errors[0] < errors[2], (kind, errors)


@pytest.mark.parametrize("kind", ARTIFACTS)
def test_artifacts_are_deterministic(kind) -> None:
    vol = _phantom()
    a = apply_artifact(vol, sample_artifact(kind, 2, seed=5))
    b = apply_artifact(vol, sample_artifact(kind, 2, seed=5))
    np.testing.assert_array_equal(a, b)
    if kind not in ("blur", "thick_slices"):  # these have (almost) no random part
        assert sample_artifact(kind, 2, seed=5) != sample_artifact(kind, 2, seed=6)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="artifact 'smear' is unknown"):
        sample_artifact("smear", 1, 0)
    with pytest.raises(ValueError, match="severity 4 is invalid"):
        sample_artifact("blur", 4, 0)
