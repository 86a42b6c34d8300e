"""Per-site scanner models: protocols, bias field, thick slices and Rician noise.

A :class:`Site` is a scanner (field strength, vendor, model) with one :class:`Protocol` per
contrast, a bias-field strength, a noise level and a global intensity scale.
:data:`DEFAULT_SITES` are four sites that differ clearly (1.5 T / 3 T, three vendors, four
T1w sequence families, 1–5 mm slices). The image-formation steps are deterministic functions
of their inputs (the random parameters are drawn elsewhere, see :mod:`rtfsyn.phantom.cohort`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from rtfsyn.errors import RtfsynError
from rtfsyn.phantom.anatomy import separable_sum
from rtfsyn.phantom.physics import (
    TissueParams,
    null_inversion_time,
    sequence_signal,
    tissue_params,
)

__all__ = [
    "CONTRAST_ORDER",
    "DEFAULT_SITES",
    "Protocol",
    "Site",
    "add_rician_noise",
    "bias_field",
    "get_sites",
    "legendre_basis",
    "thick_slice_acquisition",
]

#: Contrasts every phantom subject has, in output order.
CONTRAST_ORDER: tuple[str, ...] = ("T1w", "T2w", "FLAIR", "PDw")


@dataclass(frozen=True)
class Protocol:
    """Acquisition parameters of one contrast (times in s, angles in deg, sizes in mm).

    For ``MPRAGE``, ``tr`` is the inversion cycle time and ``echo_spacing`` / ``n_readout``
    describe the readout train. ``slice_thickness`` larger than the grid spacing is simulated
    as thick slices along ``slice_axis`` (0 = x sagittal, 1 = y coronal, 2 = z axial).
    """

    contrast: str
    family: str
    tr: float
    te: float
    ti: float | None = None
    flip_angle: float = 90.0
    slice_thickness: float = 1.0
    slice_axis: int = 2
    series_description: str = ""
    echo_spacing: float | None = None
    n_readout: int | None = None

    @property
    def acquisition_type(self) -> str:
        """``3D`` for GRE/MPRAGE volumes, ``2D`` for the spin-echo families."""
        return "3D" if self.family in ("GRE", "MPRAGE") else "2D"

    def signal(self, tissue: TissueParams) -> float:
        """Signal of one tissue with this protocol (see :mod:`rtfsyn.phantom.physics`)."""
        return sequence_signal(self.family, tissue, tr=self.tr, te=self.te, ti=self.ti,
                               flip_angle=self.flip_angle, echo_spacing=self.echo_spacing,
                               n_readout=self.n_readout)


@dataclass(frozen=True)
class Site:
    """A scanner with its protocols and image-quality characteristics.

    Attributes:
        bias: RMS of the log bias field (0.1 ≈ ±10 % smooth intensity variation).
        noise: Rician noise σ as a fraction of the brightest tissue (BrainWeb convention).
        scale: global intensity scale (brightest tissue ≈ 1000 × scale).
    """

    name: str
    field_strength: float
    manufacturer: str
    model: str
    protocols: dict[str, Protocol] = field(repr=False)
    bias: float = 0.1
    noise: float = 0.02
    scale: float = 1.0

    def nominal_tissues(self) -> dict[str, TissueParams]:
        """Nominal (un-jittered) tissue parameters at this site's field strength."""
        return tissue_params(self.field_strength)


def _flair_ti(field_strength: float, tr: float) -> float:
    """TI nulling the nominal CSF at this field and TR, rounded to 10 ms."""
    t1_csf = tissue_params(field_strength)["CSF"].t1
    return round(null_inversion_time(t1_csf, tr), 2)


def _site(name: str, field_strength: float, manufacturer: str, model: str,
          protocols: list[Protocol], **kw: float) -> Site:
    return Site(name, field_strength, manufacturer, model,
                {p.contrast: p for p in protocols}, **kw)


# Protocol values are typical of clinical / research brain protocols for each vendor.
DEFAULT_SITES: tuple[Site, ...] = (
    _site("SiteA", 1.5, "Philips", "Achieva", [
        Protocol("T1w", "GRE", tr=0.025, te=0.0046, flip_angle=30.0, slice_thickness=1.2,
                 series_description="T1_FFE_3D"),
        Protocol("T2w", "TSE", tr=5.7, te=0.100, slice_thickness=3.0,
                 series_description="T2W_TSE_TRA"),
        Protocol("FLAIR", "IR", tr=11.0, te=0.140, ti=_flair_ti(1.5, 11.0),
                 slice_thickness=3.0, series_description="FLAIR_TRA"),
        Protocol("PDw", "TSE", tr=5.7, te=0.008, slice_thickness=3.0,
                 series_description="PDW_TSE_TRA"),
    ], bias=0.08, noise=0.03, scale=1.0),
    _site("SiteB", 3.0, "Siemens", "Prisma", [
        Protocol("T1w", "MPRAGE", tr=2.3, te=0.00298, ti=0.9, flip_angle=9.0,
                 slice_thickness=1.0, echo_spacing=0.0071, n_readout=176,
                 series_description="t1_mprage_sag_p2_iso"),
        Protocol("T2w", "TSE", tr=6.0, te=0.090, slice_thickness=1.0,
                 series_description="t2_tse_tra"),
        Protocol("FLAIR", "IR", tr=9.0, te=0.089, ti=_flair_ti(3.0, 9.0),
                 slice_thickness=1.0, series_description="t2_tirm_tra_dark-fluid"),
        Protocol("PDw", "TSE", tr=6.0, te=0.011, slice_thickness=1.0,
                 series_description="pd_tse_tra"),
    ], bias=0.15, noise=0.015, scale=2.5),
    _site("SiteC", 3.0, "GE", "Discovery MR750", [
        Protocol("T1w", "GRE", tr=0.0082, te=0.0032, flip_angle=12.0, slice_thickness=1.2,
                 series_description="Sag FSPGR 3D"),
        Protocol("T2w", "TSE", tr=5.0, te=0.102, slice_thickness=2.0,
                 series_description="Ax T2 FSE"),
        Protocol("FLAIR", "IR", tr=10.0, te=0.120, ti=_flair_ti(3.0, 10.0),
                 slice_thickness=2.0, series_description="Ax T2 FLAIR"),
        Protocol("PDw", "TSE", tr=5.0, te=0.020, slice_thickness=2.0,
                 series_description="Ax PD FSE"),
    ], bias=0.12, noise=0.02, scale=0.6),
    _site("SiteD", 1.5, "Siemens", "Avanto", [
        Protocol("T1w", "SE", tr=0.55, te=0.012, slice_thickness=5.0,
                 series_description="t1_se_tra"),
        Protocol("T2w", "TSE", tr=4.0, te=0.095, slice_thickness=5.0,
                 series_description="t2_tse_tra"),
        Protocol("FLAIR", "IR", tr=8.0, te=0.100, ti=_flair_ti(1.5, 8.0),
                 slice_thickness=5.0, series_description="t2_tirm_tra_dark-fluid"),
        Protocol("PDw", "TSE", tr=4.5, te=0.013, slice_thickness=5.0,
                 series_description="pd_tse_tra"),
    ], bias=0.06, noise=0.04, scale=1.3),
)


def get_sites(n_sites: int) -> tuple[Site, ...]:
    """The first ``n_sites`` of :data:`DEFAULT_SITES` (1 ≤ n_sites ≤ 4)."""
    n_max = len(DEFAULT_SITES)
    if isinstance(n_sites, bool) or not isinstance(n_sites, (int, np.integer)) or not (
            1 <= n_sites <= n_max):
        raise RtfsynError(
            f"sites={n_sites!r} is out of range: the phantom has {n_max} sites "
            f"({', '.join(s.name for s in DEFAULT_SITES)}); use 1 to {n_max}"
        )
    return DEFAULT_SITES[: int(n_sites)]


# --------------------------------------------------------------------------- bias field
def legendre_basis(n: int, degree: int) -> np.ndarray:
    """Legendre polynomials P0..P_degree sampled at ``n`` points on [−1, 1]: (n, degree+1)."""
    x = np.linspace(-1.0, 1.0, n)
    return np.stack([np.polynomial.legendre.Legendre.basis(d)(x) for d in range(degree + 1)],
                    axis=1)


def bias_field(shape: tuple[int, int, int], coefficients: np.ndarray) -> np.ndarray:
    """Smooth multiplicative bias field ``exp(Σ c_ijk P_i(x) P_j(y) P_k(z))`` (float32).

    ``coefficients`` is a (d+1, d+1, d+1) array of Legendre coefficients over the grid's
    extent (normalised to [−1, 1] per axis). The tensor product is contracted one axis at a
    time, so the cost is a few multiply-adds per voxel.
    """
    c = np.asarray(coefficients, dtype=np.float64)
    bx, by, bz = (legendre_basis(n, c.shape[i] - 1) for i, n in enumerate(shape))
    log_field = separable_sum(c, bx, by, bz)
    return np.exp(log_field, dtype=np.float32)


# --------------------------------------------------------------------------- thick slices
def thick_slice_acquisition(
    image: np.ndarray,
    factor: float,
    *,
    axis: int = 2,
    offset: float = 0.0,
    noise: tuple[float, np.random.Generator] | None = None,
) -> np.ndarray:
    """Simulate 2-D slices ``factor`` grid voxels thick, put back on the same grid.

    The image is averaged over a box ``factor`` voxels wide along ``axis`` (the slice
    profile), sampled at slice centres ``factor`` voxels apart (first centre shifted by
    ``offset`` ∈ [0, 1) slice), optionally given Rician noise on the slices (``noise`` =
    (σ, rng)), and interpolated linearly back to every grid position — so all contrasts stay
    co-registered on the common grid. With ``factor`` ≤ 1 only the noise is added.
    """
    image = np.asarray(image, dtype=np.float32)
    if factor <= 1.0 + 1e-3:
        if noise is None:
            return image
        return add_rician_noise(image, noise[0], noise[1])
    moved = np.moveaxis(image, axis, -1)
    n = moved.shape[-1]
    n_slices = max(1, math.ceil(n / factor))
    first = (n - 1) / 2.0 - (n_slices - 1) * factor / 2.0 + (offset - 0.5) * factor
    centres = first + factor * np.arange(n_slices)
    # box average via the cumulative integral of the piece-wise constant voxel profile
    cum = np.zeros((*moved.shape[:-1], n + 1), dtype=np.float64)
    np.cumsum(moved, axis=-1, out=cum[..., 1:])
    lo = _interp_last(cum, np.clip(centres - factor / 2.0 + 0.5, 0.0, n))
    hi = _interp_last(cum, np.clip(centres + factor / 2.0 + 0.5, 0.0, n))
    slices = ((hi - lo) / factor).astype(np.float32)
    del cum, lo, hi
    if noise is not None:
        slices = add_rician_noise(slices, noise[0], noise[1])
    # back to the grid: linear interpolation between slice centres (clamped at the ends)
    pos = np.clip((np.arange(n) - first) / factor, 0.0, n_slices - 1)
    out = _interp_last(slices, pos).astype(np.float32)
    return np.ascontiguousarray(np.moveaxis(out, -1, axis))


def _interp_last(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``values`` along its last axis at fractional ``positions``."""
    n = values.shape[-1]
    i0 = np.clip(np.floor(positions).astype(np.int64), 0, n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (positions - i0).astype(values.dtype)
    a = np.take(values, i0, axis=-1)
    b = np.take(values, i1, axis=-1)
    return a + (b - a) * w


# --------------------------------------------------------------------------- noise
def add_rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise of std ``sigma`` per channel."""
    image = np.asarray(image, dtype=np.float32)
    if sigma <= 0:
        return image.copy()
    real = rng.standard_normal(image.shape, dtype=np.float32)
    real *= np.float32(sigma)
    real += image
    imag = rng.standard_normal(image.shape, dtype=np.float32)
    imag *= np.float32(sigma)
    return np.hypot(real, imag, out=real)
