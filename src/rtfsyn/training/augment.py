"""Source-side intensity augmentation: gamma, smooth bias field, monotone histogram warp.

Scanners, sequences and preprocessing pipelines differ in how they map tissue to intensity
even for one nominal contrast; a network trained on a few sites learns their exact histograms.
Training therefore perturbs the **source** patch (never the target, never the physics-prior
channel) with random, monotone-in-tissue changes of that mapping:

* gamma ``x → x ** γ`` (contrast between dark and bright tissue);
* a smooth multiplicative bias field ``exp(a·u + b·v + c·w + d·(u² + v² + w² − 1))`` over the
  patch's normalised coordinates ``u, v, w ∈ [−1, 1]`` (residual inhomogeneity);
* a monotone piecewise-linear histogram warp with knots at 0, ¼, ½, ¾, 1 (the end points
  fixed, the inner values jittered and sorted): relative tissue intensities change while
  their order stays.

Zero (background) stays zero and the result is clipped to [0, 1], the range of normalised
inputs. Randomness is drawn once (:func:`sample_intensity_augment`, from the sample's own
generator) and applied by a deterministic function (:func:`apply_intensity_augment`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["IntensityAugment", "apply_intensity_augment", "sample_intensity_augment"]

_KNOTS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])


@dataclass(frozen=True)
class IntensityAugment:
    """One draw of the source intensity augmentation (see the module doc)."""

    gamma: float = 1.0
    bias: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    warp: tuple[float, float, float] = (0.25, 0.5, 0.75)

    def __post_init__(self) -> None:
        if not 0.2 <= self.gamma <= 5.0:
            raise ValueError(f"gamma={self.gamma!r} must lie in [0.2, 5]")
        if len(self.bias) != 4 or len(self.warp) != 3:
            raise ValueError(f"bias needs 4 and warp 3 values, got {self.bias!r}, {self.warp!r}")
        w = (0.0, *self.warp, 1.0)
        if any(b <= a for a, b in itertools.pairwise(w)):
            raise ValueError(f"warp={self.warp!r} must increase strictly inside (0, 1)")


def sample_intensity_augment(rng: np.random.Generator, strength: float = 1.0
                             ) -> IntensityAugment:
    """A random :class:`IntensityAugment`; ``strength`` scales every perturbation (0: none)."""
    if not 0.0 <= strength <= 2.0:
        raise ValueError(f"strength={strength!r} must lie in [0, 2]")
    gamma = float(np.exp(rng.uniform(-0.35, 0.35) * strength))  # ≈ 0.70 … 1.42
    bias = tuple(float(v) for v in rng.uniform(-0.12, 0.12, 4) * strength)
    inner = _KNOTS[1:4] + rng.uniform(-0.08, 0.08, 3) * strength
    inner = np.sort(np.clip(inner, 0.02, 0.98))
    for i in range(1, 3):  # keep strictly increasing
        inner[i] = max(inner[i], inner[i - 1] + 1e-3)
    return IntensityAugment(gamma, bias, tuple(float(v) for v in inner))  # type: ignore[arg-type]


def apply_intensity_augment(x: torch.Tensor, aug: IntensityAugment) -> torch.Tensor:
    """``x`` ``(D, H, W)`` in [0, 1] → the augmented volume (same shape, float32)."""
    x = x.float()
    fg = x > 0
    y = x.clamp(0.0, 1.0) ** aug.gamma
    knots = torch.tensor(_KNOTS, dtype=torch.float32)
    vals = torch.tensor([0.0, *aug.warp, 1.0], dtype=torch.float32)
    idx = torch.clamp(torch.bucketize(y, knots[1:-1]), 0, len(knots) - 2)
    t = (y - knots[idx]) / (knots[idx + 1] - knots[idx])
    y = vals[idx] + t * (vals[idx + 1] - vals[idx])
    if any(aug.bias):
        axes = [torch.linspace(-1.0, 1.0, n) for n in x.shape]
        u, v, w = torch.meshgrid(*axes, indexing="ij")
        a, b, c, d = aug.bias
        y = y * torch.exp(a * u + b * v + c * w + d * (u * u + v * v + w * w - 1.0))
    return torch.where(fg, y.clamp(0.0, 1.0), torch.zeros_like(y))
