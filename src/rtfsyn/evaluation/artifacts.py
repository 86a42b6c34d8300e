"""Imaging artifacts at three fixed severities, for robustness evaluation.

TorchIO style: :func:`sample_artifact` draws every random parameter once from a seeded
generator into an :class:`ArtifactSpec`; :func:`apply_artifact` is deterministic given the
spec (it uses TorchIO's deterministic ``Motion``, ``Ghosting``, ``Spike``, ``BiasField`` and
``Blur`` transforms, and numpy for noise and thick slices). Volumes are expected normalised to
[0, 1] (noise levels are fractions of that range).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torchio as tio
from scipy import ndimage

__all__ = ["ARTIFACTS", "SEVERITIES", "ArtifactSpec", "apply_artifact", "sample_artifact"]

SEVERITIES = (1, 2, 3)

#: per artifact: the parameter that grows with severity (levels for severities 1, 2, 3)
_LEVELS: dict[str, tuple[float, float, float]] = {
    "motion": (2.0, 5.0, 10.0),  # max rotation (deg) and translation (mm)
    "ghosting": (0.15, 0.35, 0.6),  # ghost intensity
    "spike": (0.15, 0.4, 0.8),  # spike intensity (k-space)
    "bias": (0.2, 0.4, 0.7),  # max |polynomial coefficient| (order 3)
    "gaussian_noise": (0.02, 0.05, 0.10),  # std, fraction of the [0, 1] range
    "rician_noise": (0.02, 0.05, 0.10),  # sigma of each complex channel
    "blur": (0.5, 1.0, 2.0),  # Gaussian std in mm
    "thick_slices": (2.0, 3.0, 5.0),  # slice-thickness factor along one axis
}
ARTIFACTS: tuple[str, ...] = tuple(_LEVELS)


@dataclass(frozen=True)
class ArtifactSpec:
    """A fully determined corruption: kind, severity and the sampled parameters."""

    kind: str
    severity: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.severity}"


def sample_artifact(kind: str, severity: int, seed: int | Sequence[int]) -> ArtifactSpec:
    """Draw the random parameters of an artifact once (deterministic for a seed).

    ``seed`` is an int or a sequence of ints (e.g. run seed + a hash of the case key, see
    :func:`rtfsyn.evaluation.runner.artifact_seed`).
    """
    if kind not in _LEVELS:
        raise ValueError(f"artifact {kind!r} is unknown: use one of {', '.join(ARTIFACTS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity} is invalid: use 1, 2 or 3")
    level = _LEVELS[kind][severity - 1]
    # the same random pattern at every severity, scaled by the level: effects grow monotonically
    rng = np.random.default_rng([*(int(v) for v in np.atleast_1d(seed)), ARTIFACTS.index(kind)])
    p: dict[str, Any] = {"level": level}
    if kind == "motion":
        n = 2
        signs = rng.choice([-1.0, 1.0], (2, n, 3))
        p["degrees"] = (level * signs[0] * rng.uniform(0.5, 1.0, (n, 3))).tolist()
        p["translation"] = (level * signs[1] * rng.uniform(0.5, 1.0, (n, 3))).tolist()
        p["times"] = sorted(rng.uniform(0.3, 0.8, n).tolist())
    elif kind == "ghosting":
        p["num_ghosts"] = int(rng.integers(4, 9))
        p["axis"] = int(rng.integers(3))
        p["intensity"] = level
    elif kind == "spike":
        p["positions"] = rng.uniform(0.05, 0.45, (int(rng.integers(1, 3)), 3)).tolist()
        p["intensity"] = level
    elif kind == "bias":
        p["coefficients"] = (level * rng.uniform(-1, 1, 20)).tolist()  # order-3 polynomial
    elif kind in ("gaussian_noise", "rician_noise"):
        p["std"] = level
        p["noise_seed"] = int(rng.integers(2**31))
    elif kind == "blur":
        p["std_mm"] = level
    elif kind == "thick_slices":
        p["factor"] = level
        p["axis"] = int(rng.integers(3))
    return ArtifactSpec(kind, severity, p)


def apply_artifact(
    volume: np.ndarray, spec: ArtifactSpec, spacing: tuple[float, float, float] = (1, 1, 1)
) -> np.ndarray:
    """Corrupt a ``(D, H, W)`` volume as ``spec`` says; the result is float32, clipped ≥ 0."""
    vol = np.asarray(volume, dtype=np.float32)
    p = spec.params
    kind = spec.kind
    if kind in ("motion", "ghosting", "spike", "bias", "blur"):
        affine = np.diag([*spacing, 1.0])
        image = tio.ScalarImage(tensor=torch.from_numpy(vol.copy())[None], affine=affine)
        if kind == "motion":
            t = tio.Motion(degrees=np.array(p["degrees"]), translation=np.array(p["translation"]),
                           times=np.array(p["times"]), image_interpolation="linear")
        elif kind == "ghosting":
            t = tio.Ghosting(num_ghosts=p["num_ghosts"], axis=p["axis"],
                             intensity=p["intensity"], restore=0.02)
        elif kind == "spike":
            t = tio.Spike(spikes_positions=np.array(p["positions"]), intensity=p["intensity"])
        elif kind == "bias":
            t = tio.BiasField(coefficients=p["coefficients"], order=3)
        else:
            t = tio.Blur(std=(p["std_mm"],) * 3)
        out = t(image).data[0].numpy()
    elif kind == "gaussian_noise":
        rng = np.random.default_rng(p["noise_seed"])
        out = vol + rng.normal(0.0, p["std"], vol.shape).astype(np.float32)
    elif kind == "rician_noise":
        rng = np.random.default_rng(p["noise_seed"])
        n1 = rng.normal(0.0, p["std"], vol.shape)
        n2 = rng.normal(0.0, p["std"], vol.shape)
        out = np.sqrt((vol + n1) ** 2 + n2**2)
    elif kind == "thick_slices":
        out = _thick_slices(vol, p["factor"], p["axis"])
    else:  # pragma: no cover - guarded by sample_artifact
        raise ValueError(kind)
    return np.clip(out, 0.0, None).astype(np.float32)


def _thick_slices(vol: np.ndarray, factor: float, axis: int) -> np.ndarray:
    """Average slabs of ``factor`` slices along ``axis`` and interpolate back (partial volume)."""
    n = vol.shape[axis]
    m = max(2, round(n / factor))
    zoom = [1.0, 1.0, 1.0]
    zoom[axis] = m / n
    sigma = [0.0, 0.0, 0.0]
    sigma[axis] = factor / 2.355  # slab profile ≈ Gaussian of FWHM = thickness
    low = ndimage.zoom(ndimage.gaussian_filter(vol, sigma), zoom, order=1)
    back = [1.0, 1.0, 1.0]
    back[axis] = n / low.shape[axis]
    out = ndimage.zoom(low, back, order=1)
    # zoom may be off by one voxel: crop/pad to the original shape
    fixed = np.zeros_like(vol)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(out.shape, vol.shape, strict=True))
    fixed[sl] = out[sl]
    return fixed
