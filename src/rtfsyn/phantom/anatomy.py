"""Phantom anatomy: ICBM 2009a tissue maps, per-subject deformation and lesions.

The base anatomy comes from the ICBM 2009a (MNI152 nonlinear asymmetric) templates that
nilearn ships (no download): the GM and WM probability maps and the brain mask;
CSF = mask − GM − WM (clipped ≥ 0). It is resampled once per grid spacing and cached in
memory (:func:`base_anatomy`). The population probabilities are sharpened (``p^γ``,
renormalised, γ = 2) towards the tissue purity of a single brain.

Each subject is the base anatomy pulled through a smooth random deformation
(:class:`Deformation`: a small affine about the grid centre plus a smooth elastic
displacement made of low-frequency cosine modes), optionally with lesions
(:class:`Lesion`: smooth ellipsoidal blobs centred in white matter that replace the
parenchyma they cover). All randomness is in the parameter objects; the functions here are
deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

__all__ = [
    "BaseAnatomy",
    "Deformation",
    "Lesion",
    "SubjectAnatomy",
    "base_anatomy",
    "sample_deformation",
    "sample_lesions",
    "separable_sum",
    "subject_anatomy",
]

#: Number of cosine modes per axis of the elastic displacement field.
ELASTIC_MODES = 4
#: Exponent sharpening the template tissue probabilities (1 = as shipped).
SHARPEN_GAMMA = 2.0


@dataclass(frozen=True)
class BaseAnatomy:
    """Template tissue maps on the ICBM grid at ``spacing`` mm (read-only float32 arrays)."""

    spacing: float
    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray  # brain mask as a float map in [0, 1] (partial volume at the edge)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.gm.shape)


@lru_cache(maxsize=1)
def _templates_1mm() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GM, WM, brain mask (float32, 1 mm) and their affine from nilearn's bundled files."""
    from nilearn import datasets

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    wm_img = datasets.load_mni152_wm_template(resolution=1)
    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    mask = (np.asarray(mask_img.get_fdata(dtype=np.float32)) > 0.5).astype(np.float32)
    gm = np.clip(np.asarray(gm_img.get_fdata(dtype=np.float32)), 0, 1) * mask
    wm = np.clip(np.asarray(wm_img.get_fdata(dtype=np.float32)), 0, 1) * mask
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    # The template maps are population probabilities, blurrier than one brain's partial
    # volume; sharpening (p_k^γ, renormalised to the mask) brings the tissue purity closer
    # to a single subject's so that GM/WM/CSF contrast is not washed out.
    fractions = np.stack([csf, gm, wm]) ** SHARPEN_GAMMA
    total = fractions.sum(axis=0)
    scale = np.divide(mask, total, out=np.zeros_like(total), where=total > 0)
    gm = fractions[1] * scale
    wm = fractions[2] * scale
    return gm, wm, mask, np.asarray(mask_img.affine, dtype=np.float64)


@lru_cache(maxsize=4)
def base_anatomy(spacing: float = 1.0) -> BaseAnatomy:
    """The template anatomy on the ICBM grid resampled to ``spacing`` mm (cached per spacing).

    The grid keeps the template's origin voxel and field of view: ``(n − 1)/spacing + 1``
    voxels per axis (the 2 mm grid is 99 × 117 × 95, as nilearn's). Downsampling first
    smooths with a Gaussian (σ ≈ 0.42·√(s² − 1) mm) so that the maps keep their partial
    volume instead of aliasing.
    """
    spacing = float(spacing)
    gm, wm, mask, affine1 = _templates_1mm()
    zoom = spacing / float(np.sqrt((affine1[:3, :3] ** 2).sum(axis=0))[0])
    shape = tuple(math.floor((n - 1) / zoom + 1e-6) + 1 for n in gm.shape)
    affine = affine1.copy()
    affine[:3, :3] = affine1[:3, :3] * zoom
    maps = []
    for volume in (gm, wm, mask):
        if abs(zoom - 1.0) < 1e-6:
            out = volume.copy()
        else:
            src = volume
            if zoom > 1.0:
                src = ndimage.gaussian_filter(volume, 0.42 * math.sqrt(zoom ** 2 - 1.0),
                                              mode="constant")
            out = ndimage.affine_transform(src, np.full(3, zoom), output_shape=shape, order=1,
                                           mode="constant", cval=0.0, prefilter=False,
                                           output=np.float32)
        out = np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
        out.setflags(write=False)
        maps.append(out)
    affine.setflags(write=False)
    return BaseAnatomy(spacing, affine, *maps)


# --------------------------------------------------------------------------- deformation
@dataclass(frozen=True)
class Deformation:
    """A smooth spatial transform from subject space to template space.

    ``x_template = R·diag(scales)·(x − c) + c + translation + d(x)`` in mm, with ``c`` the
    grid centre, ``R`` the rotation by ``angles_deg`` (about x, y, z) and ``d`` the elastic
    displacement ``d_i(x) = Σ_abc elastic[i, a, b, c] · cos(πa·u) cos(πb·v) cos(πc·w)`` (mm)
    with (u, v, w) ∈ [0, 1] across the field of view.
    """

    angles_deg: tuple[float, float, float]
    scales: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    elastic: np.ndarray  # (3, K, K, K) cosine coefficients in mm

    def matrix(self) -> np.ndarray:
        """The 3 × 3 linear part ``R · diag(scales)``."""
        ax, ay, az = (math.radians(a) for a in self.angles_deg)
        rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)],
                       [0, math.sin(ax), math.cos(ax)]])
        ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0],
                       [-math.sin(ay), 0, math.cos(ay)]])
        rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0],
                       [0, 0, 1]])
        return rz @ ry @ rx @ np.diag(self.scales)


def sample_deformation(
    rng: np.random.Generator,
    *,
    max_rotation_deg: float = 4.0,
    max_scale: float = 0.05,
    max_translation_mm: float = 3.0,
    elastic_rms_mm: tuple[float, float] = (1.0, 2.0),
) -> Deformation:
    """Draw a random :class:`Deformation` (rotations ≤ 4°, scale ±5 %, shift ≤ 3 mm, elastic
    displacement of 1–2 mm RMS, i.e. a few mm at most)."""
    angles = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
    # a global size factor plus a smaller per-axis part, within ±max_scale overall
    size = rng.uniform(-0.7 * max_scale, 0.7 * max_scale)
    scales = 1.0 + np.clip(size + rng.uniform(-0.3 * max_scale, 0.3 * max_scale, 3),
                           -max_scale, max_scale)
    shift = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    k = ELASTIC_MODES
    freq = np.add.outer(np.add.outer(np.arange(k) ** 2, np.arange(k) ** 2), np.arange(k) ** 2)
    amp = 1.0 / (1.0 + freq.astype(float))  # lower frequencies dominate
    amp[0, 0, 0] = 0.0  # no constant term (that is the translation)
    coeffs = rng.standard_normal((3, k, k, k)) * amp
    # mean square of cos(πa u) over [0, 1] is 1 for a = 0 and 1/2 otherwise
    weights = np.ones((k, k, k))
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = k
        weights = weights * np.where(np.arange(k) > 0, 0.5, 1.0).reshape(shape)
    rms = float(np.sqrt((coeffs ** 2 * weights).sum() / 3.0))
    target = rng.uniform(*elastic_rms_mm)
    coeffs *= target / max(rms, 1e-12)
    coeffs.setflags(write=False)
    return Deformation(tuple(float(a) for a in angles), tuple(float(s) for s in scales),
                       tuple(float(t) for t in shift), coeffs)


def _cosine_basis(n: int, k: int) -> np.ndarray:
    u = np.linspace(0.0, 1.0, n)
    return np.cos(np.pi * np.outer(u, np.arange(k)))


def template_coordinates(base: BaseAnatomy, deformation: Deformation) -> np.ndarray:
    """For every output voxel, its position in template voxel indices: (3, X, Y, Z) float32."""
    shape = base.shape
    affine = base.affine
    inv = np.linalg.inv(affine)
    # world coordinates of the output grid, one 1-D array per axis (axis-aligned affine)
    axes = [np.arange(n, dtype=np.float64) for n in shape]
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2.0) + affine[:3, 3]
    lin = deformation.matrix()
    # voxel → world → deformed world → template voxel, composed into one affine
    # x_tpl_vox = inv · (lin · (A·i + a − c) + c + t + d)
    a_lin = affine[:3, :3]
    m = inv[:3, :3] @ lin @ a_lin
    b = inv[:3, :3] @ (lin @ (affine[:3, 3] - centre) + centre
                       + np.asarray(deformation.translation_mm)) + inv[:3, 3]
    k = deformation.elastic.shape[1]
    bases = [_cosine_basis(n, k) for n in shape]
    coords = np.empty((3, *shape), dtype=np.float32)
    for i in range(3):
        out = coords[i]
        out[...] = np.float32(b[i])
        out += (m[i, 0] * axes[0]).astype(np.float32)[:, None, None]
        out += (m[i, 1] * axes[1]).astype(np.float32)[None, :, None]
        out += (m[i, 2] * axes[2]).astype(np.float32)[None, None, :]
    # elastic displacement (mm) converted to template voxels, one component at a time
    for j in range(3):
        if not np.any(inv[:3, j]):
            continue
        displacement = separable_sum(deformation.elastic[j], *bases)
        for i in range(3):
            if inv[i, j] != 0.0:
                coords[i] += np.float32(inv[i, j]) * displacement
        del displacement
    return coords


def separable_sum(c: np.ndarray, bx: np.ndarray, by: np.ndarray, bz: np.ndarray) -> np.ndarray:
    """``Σ_abc c[a,b,c]·bx[x,a]·by[y,b]·bz[z,c]`` as float32 (X, Y, Z), one axis at a time."""
    t = np.einsum("abc,zc->abz", c, bz)
    t = np.einsum("abz,yb->ayz", t, by)
    out = bx.astype(np.float32) @ t.reshape(c.shape[0], -1).astype(np.float32)
    return out.reshape(bx.shape[0], by.shape[0], bz.shape[0])


# --------------------------------------------------------------------------- lesions
@dataclass(frozen=True)
class Lesion:
    """A smooth ellipsoidal lesion.

    ``position`` ∈ [0, 1) picks the centre among the subject's white-matter voxels (WM
    probability ≥ 0.9, in index order), so a lesion always sits in white matter whatever the
    grid spacing; ``radii_mm`` are the ellipsoid semi-axes; ``edge`` the width of the smooth
    border relative to the radius.
    """

    position: float
    radii_mm: tuple[float, float, float]
    edge: float = 0.25


def sample_lesions(rng: np.random.Generator) -> tuple[Lesion, ...]:
    """Draw 1–3 lesions with semi-axes of 4–12 mm (always the same number of draws)."""
    count = int(rng.integers(1, 4))
    positions = rng.uniform(0.0, 1.0, 3)
    radii = rng.uniform(4.0, 12.0, (3, 3))
    edges = rng.uniform(0.15, 0.35, 3)
    return tuple(Lesion(float(positions[i]), tuple(float(r) for r in radii[i]),
                        float(edges[i])) for i in range(count))


def _lesion_fraction(shape: tuple[int, int, int], spacing: float, centre: np.ndarray,
                     lesion: Lesion, out: np.ndarray) -> None:
    """Write ``max(out, blob)`` for one lesion into ``out`` (in place, local box only)."""
    radii_vox = np.asarray(lesion.radii_mm) / spacing
    reach = radii_vox * (1.0 + 4.0 * lesion.edge)
    lo = np.maximum(np.floor(centre - reach).astype(int), 0)
    hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, np.array(shape))
    if np.any(hi <= lo):
        return
    grids = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii_vox, strict=True))
    r = np.sqrt(r2)
    blob = 1.0 / (1.0 + np.exp((r - 1.0) / lesion.edge))
    blob = np.where(blob < 1e-3, 0.0, blob).astype(np.float32)
    box = out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    np.maximum(box, blob, out=box)


# --------------------------------------------------------------------------- subject
@dataclass(frozen=True)
class SubjectAnatomy:
    """Tissue fractions of one subject on the output grid.

    ``fractions`` maps each tissue of :data:`rtfsyn.phantom.physics.TISSUES` to a float32
    map; they sum to the (soft) brain mask. ``mask`` is the binary brain mask and ``labels``
    the uint8 tissue labels (0 background, 1 CSF, 2 GM, 3 WM, 4 lesion).
    """

    fractions: dict[str, np.ndarray]
    mask: np.ndarray
    labels: np.ndarray


def subject_anatomy(base: BaseAnatomy, deformation: Deformation,
                    lesions: tuple[Lesion, ...] = ()) -> SubjectAnatomy:
    """Warp the base anatomy by ``deformation`` and insert ``lesions`` (deterministic)."""
    coords = template_coordinates(base, deformation)
    kw = {"order": 1, "mode": "constant", "cval": 0.0, "prefilter": False}
    mask_soft = ndimage.map_coordinates(base.mask, coords, output=np.float32, **kw)
    gm = ndimage.map_coordinates(base.gm, coords, output=np.float32, **kw)
    wm = ndimage.map_coordinates(base.wm, coords, output=np.float32, **kw)
    del coords
    np.clip(mask_soft, 0.0, 1.0, out=mask_soft)
    np.minimum(gm, mask_soft, out=gm)
    np.minimum(wm, mask_soft - gm, out=wm)
    np.maximum(wm, 0.0, out=wm)
    csf = mask_soft - gm - wm
    np.maximum(csf, 0.0, out=csf)
    lesion = np.zeros_like(gm)
    if lesions:
        candidates = np.flatnonzero(wm >= 0.9)
        if candidates.size == 0:  # pragma: no cover - only for absurd grids
            candidates = np.flatnonzero(wm >= wm.max() * 0.5)
        for les in lesions:
            index = candidates[min(int(les.position * candidates.size), candidates.size - 1)]
            centre = np.array(np.unravel_index(index, wm.shape), dtype=np.float64)
            _lesion_fraction(base.shape, base.spacing, centre, les, lesion)
        # the lesion replaces parenchyma (GM and WM), not CSF
        lesion *= gm + wm
        keep = 1.0 - np.divide(lesion, gm + wm, out=np.zeros_like(lesion),
                               where=(gm + wm) > 0)
        gm *= keep
        wm *= keep
    mask = mask_soft >= 0.5
    # label = 1 + argmax over (CSF, GM, WM, lesion), without stacking four volumes
    labels = np.ones(gm.shape, dtype=np.uint8)
    best = csf.copy()
    for value, fraction in ((2, gm), (3, wm), (4, lesion)):
        better = fraction > best
        labels[better] = value
        np.maximum(best, fraction, out=best)
    del best
    labels[~mask] = 0
    return SubjectAnatomy({"CSF": csf, "GM": gm, "WM": wm, "lesion": lesion}, mask, labels)
