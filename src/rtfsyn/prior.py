"""Training-free physics prior: source → tissue fractions → PD/T1/T2 → target signal equation.

:func:`physics_prior` turns a source volume and two metadata records into an image of the
target contrast without any training:

1. **Tissue fractions of the source** (:func:`tissue_posteriors`). The brain intensities of the
   robustly normalised source are fitted by a 1-D Gaussian mixture (EM, ``n`` = 3 classes,
   deterministic initialisation at quantiles). The classes, sorted by mean, are matched to
   CSF / GM / WM in the order the *source* protocol predicts — its signal equation evaluated
   with literature tissue values (:mod:`rtfsyn.phantom.physics`), e.g. CSF < GM < WM for a
   T1w, WM < GM < CSF for a T2w, CSF < WM < GM for a FLAIR. The per-voxel fractions are
   either the mixture posteriors (``method="gmm"``) or a partial-volume model that
   interpolates linearly between adjacent class means (``method="pv"``, default: a voxel
   half way between the GM and WM means is half GM, half WM, so the source's fine structure
   and partial volume survive).
2. **Parameter maps** (:func:`parameter_maps`): fraction-weighted literature PD, T1, T2, T2*
   at the target's field strength (3 T when unknown).
3. **Target signal**: the target protocol (:func:`rtfsyn.phantom.ranges.protocol_from_metadata`;
   missing TR/TE/TI/FA/sequence → typical values, a FLAIR without TI nulls CSF) applied to
   every tissue, mixed by the fractions (``mixing="signal"``, the phantom's partial-volume
   model, default) or applied to the parameter maps voxel by voxel (``mixing="parameters"``).
4. **Normalisation** to [0, 1] in the brain, as DESIGN.md normalises real images (0.5–99.5
   percentile in the mask → [0, 1]). A real image's percentiles sit in the tails of its tissue
   distributions; the prior has no within-tissue spread, so ``normalise="matched"``
   (default) takes the percentiles of the prior plus Gaussian spread of the source's relative
   within-class width (mixture SD over the span of the class means, times the span of the
   target's tissue signals; fixed seed, used for the two percentiles only — the image itself
   is not noised). ``"percentile"`` is :func:`rtfsyn.preprocess.robust_normalize` of the
   prior itself (its darkest tissue becomes 0); ``"physical"`` divides by the 99.5th
   percentile (zero signal stays 0). The default was chosen on the four phantom sites and
   the training case BraTS-GLI-00001-000 (never on the cases of ``benchmarks/physics_prior.py``):
   ``matched`` was best or within 1 dB of the best for T2w, FLAIR and PDw there.

Lesions are not modelled (a single source contrast cannot tell them from GM); the prior is a
physically consistent starting point that moves with the requested metadata, not a lesion
detector.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from rtfsyn.errors import InputImageError
from rtfsyn.metadata import Metadata
from rtfsyn.phantom.physics import (
    TissueParams,
    inversion_recovery,
    mprage,
    spin_echo,
    spoiled_gre,
    tissue_params,
)
from rtfsyn.phantom.ranges import DEFAULT_FIELD, protocol_from_metadata
from rtfsyn.phantom.scanner import Protocol
from rtfsyn.preprocess import robust_normalize

__all__ = [
    "PRIOR_TISSUES",
    "fit_mixture",
    "parameter_maps",
    "physics_prior",
    "prior_for_volume",
    "protocol_signal",
    "source_tissue_order",
    "tissue_posteriors",
    "wants_prior",
]

#: Tissue classes of the prior, in the order of :func:`tissue_posteriors`' first axis.
PRIOR_TISSUES: tuple[str, ...] = ("CSF", "GM", "WM")

Method = Literal["pv", "gmm"]


def _field(meta: Metadata) -> float:
    return DEFAULT_FIELD if meta.field_strength is None else float(meta.field_strength)


def protocol_signal(protocol: Protocol, pd: np.ndarray | float, t1: np.ndarray | float,
                    t2: np.ndarray | float, t2s: np.ndarray | float) -> np.ndarray:
    """Signal of ``protocol`` for (arrays of) tissue parameters (broadcast, float64)."""
    fam = protocol.family
    if fam in ("SE", "TSE"):
        return spin_echo(pd, t1, t2, protocol.tr, protocol.te)
    if fam == "IR":
        return inversion_recovery(pd, t1, t2, protocol.tr, protocol.te, protocol.ti or 0.0)
    if fam == "GRE":
        return spoiled_gre(pd, t1, t2s, protocol.tr, protocol.te, protocol.flip_angle)
    return mprage(pd, t1, t2s, protocol.tr, protocol.te, protocol.ti or 0.9,
                  protocol.flip_angle, echo_spacing=protocol.echo_spacing or 0.007,
                  n_readout=protocol.n_readout or 160)


def _tissue_signal(protocol: Protocol, t: TissueParams) -> float:
    return float(protocol_signal(protocol, t.pd, t.t1, t.t2, t.t2s))


def source_tissue_order(source_meta: Metadata) -> tuple[str, ...]:
    """CSF / GM / WM from darkest to brightest under the source protocol (nominal values)."""
    protocol = protocol_from_metadata(source_meta)
    tissues = tissue_params(_field(source_meta))
    signals = {name: _tissue_signal(protocol, tissues[name]) for name in PRIOR_TISSUES}
    return tuple(sorted(PRIOR_TISSUES, key=lambda n: signals[n]))


def fit_mixture(values: np.ndarray, n_classes: int = 3, iters: int = 80,
                max_samples: int = 200_000, seed: int = 0, bins: int = 2048
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D Gaussian mixture by EM: ``(means, sds, weights)``, each ``(n_classes,)``, sorted by
    mean. Deterministic (quantile initialisation).

    EM runs on a ``bins``-bin histogram of all values (each bin centre weighted by its count):
    for 1-D data this is the exact EM of the binned values, ~1000× cheaper than EM over the
    voxels, with bin widths of 1/``bins`` of the range (far below any tissue class width).
    ``bins=0`` runs EM over (at most ``max_samples``, fixed-``seed`` subsampled) voxels instead.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < n_classes * 10:
        raise InputImageError(
            f"only {x.size} brain voxels: too few to fit {n_classes} tissue classes"
        )
    q = (np.arange(n_classes) + 0.5) / n_classes * 100.0
    means = np.percentile(x, q)
    spread = max(float(x.std()), 1e-6)
    if bins:
        counts, edges = np.histogram(x, bins=bins)
        keep = counts > 0
        w = counts[keep].astype(np.float64)
        x = (0.5 * (edges[:-1] + edges[1:]))[keep]
    else:
        if x.size > max_samples:
            x = np.random.default_rng(seed).choice(x, max_samples, replace=False)
        w = np.ones(x.size)
    total = w.sum()
    sds = np.full(n_classes, spread / n_classes)
    weights = np.full(n_classes, 1.0 / n_classes)
    floor = 1e-3 * spread
    for _ in range(iters):
        logp = (-0.5 * ((x[:, None] - means) / sds) ** 2 - np.log(sds) + np.log(weights))
        logp -= logp.max(axis=1, keepdims=True)
        r = np.exp(logp)
        r /= r.sum(axis=1, keepdims=True)
        r *= w[:, None]
        nk = r.sum(axis=0) + 1e-12
        new_means = (r * x[:, None]).sum(axis=0) / nk
        sds = np.sqrt((r * (x[:, None] - new_means) ** 2).sum(axis=0) / nk)
        sds = np.maximum(sds, floor)
        weights = np.maximum(nk / total, 1e-6)
        converged = np.allclose(new_means, means, atol=1e-6 * spread)
        means = new_means
        if converged:
            break
    order = np.argsort(means)
    return means[order], sds[order], weights[order]


def tissue_posteriors(source: np.ndarray, mask: np.ndarray, source_meta: Metadata,
                      method: Method = "pv") -> np.ndarray:
    """CSF / GM / WM fractions of every voxel: ``(3, D, H, W)`` float32, zero outside ``mask``.

    See the module docstring; the fractions sum to 1 inside the mask.
    """
    source = np.asarray(source, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != source.shape:
        raise InputImageError(f"mask shape {mask.shape} does not match source {source.shape}")
    if not mask.any():
        raise InputImageError("the brain mask is empty")
    post, _ = _posteriors_and_spread(source, mask, source_meta, method)
    return post


def _posteriors_and_spread(source: np.ndarray, mask: np.ndarray, source_meta: Metadata,
                           method: Method) -> tuple[np.ndarray, float]:
    """Fractions ``(3, D, H, W)`` and the source's relative within-class spread
    (weighted class SD over the span of the class means)."""
    source = np.asarray(source, dtype=np.float32)
    norm, _ = robust_normalize(source, mask)
    x = norm[mask].astype(np.float64)
    means, sds, weights = fit_mixture(x)
    spread = float((weights * sds).sum() / max(means[-1] - means[0], 1e-6))
    order = source_tissue_order(source_meta)  # tissue of the darkest, middle, brightest class
    n = len(means)
    if method == "gmm":
        logp = -0.5 * ((x[:, None] - means) / sds) ** 2 - np.log(sds) + np.log(weights)
        logp -= logp.max(axis=1, keepdims=True)
        frac = np.exp(logp)
        frac /= frac.sum(axis=1, keepdims=True)
        # beyond the extreme means the broadest class must not win back: clamp
        frac[x <= means[0]] = np.eye(n)[0]
        frac[x >= means[-1]] = np.eye(n)[-1]
    elif method == "pv":
        frac = np.stack([np.interp(x, means, np.eye(n)[k]) for k in range(n)], axis=1)
    else:
        raise ValueError(f"method={method!r}: use 'pv' or 'gmm'")
    out = np.zeros((len(PRIOR_TISSUES), *source.shape), np.float32)
    for k, tissue in enumerate(order):
        out[PRIOR_TISSUES.index(tissue)][mask] = frac[:, k]
    return out, spread


def parameter_maps(posteriors: np.ndarray, field_strength: float = DEFAULT_FIELD
                   ) -> dict[str, np.ndarray]:
    """Fraction-weighted literature ``pd``, ``t1``, ``t2``, ``t2s`` maps (s; PD rel. to CSF)."""
    tissues = tissue_params(field_strength)
    out = {}
    for key in ("pd", "t1", "t2", "t2s"):
        vals = np.array([getattr(tissues[t], key) for t in PRIOR_TISSUES], np.float32)
        out[key] = np.tensordot(vals, posteriors, axes=(0, 0)).astype(np.float32)
    return out


def physics_prior(
    source: np.ndarray,
    mask: np.ndarray,
    source_meta: Metadata,
    target_meta: Metadata,
    *,
    method: Method = "pv",
    mixing: Literal["signal", "parameters"] = "signal",
    normalise: Literal["matched", "physical", "percentile"] = "matched",
) -> np.ndarray:
    """The target contrast predicted from the source by MR physics alone.

    Args:
        source: ``(D, H, W)`` source volume (any intensity scale; normalised internally).
        mask: ``(D, H, W)`` brain mask (bool or 0/1).
        source_meta: metadata of the source (its contrast orders the tissue classes).
        target_meta: the requested target metadata (contrast, TR/TE/TI/FA, sequence, field;
            missing values → typical ones).
        method, mixing, normalise: see the module docstring.

    Returns:
        ``(D, H, W)`` float32 in [0, 1] inside the mask, 0 outside.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != np.shape(source):
        raise InputImageError(f"mask shape {mask.shape} does not match source "
                              f"{np.shape(source)}")
    if not mask.any():
        raise InputImageError("the brain mask is empty")
    post, spread = _posteriors_and_spread(source, mask, source_meta, method)
    field = _field(target_meta)
    protocol = protocol_from_metadata(target_meta)
    tissues = tissue_params(field)
    if mixing == "signal":
        image = np.zeros(mask.shape, np.float32)
        for k, name in enumerate(PRIOR_TISSUES):
            image += post[k] * np.float32(_tissue_signal(protocol, tissues[name]))
    elif mixing == "parameters":
        maps = parameter_maps(post, field)
        with np.errstate(divide="ignore", invalid="ignore"):
            safe = {k: np.where(mask, v, 1.0) for k, v in maps.items()}
            image = protocol_signal(protocol, safe["pd"], safe["t1"], safe["t2"],
                                    safe["t2s"]).astype(np.float32)
    else:
        raise ValueError(f"mixing={mixing!r}: use 'signal' or 'parameters'")
    image[~mask] = 0.0
    values = image[mask]
    if normalise == "percentile":
        return robust_normalize(image, mask)[0]
    if normalise == "physical":
        lo, hi = 0.0, float(np.percentile(values, 99.5))
    elif normalise == "matched":
        signals = [_tissue_signal(protocol, tissues[n]) for n in PRIOR_TISSUES]
        sigma = spread * (max(signals) - min(signals))
        rng = np.random.default_rng(0)
        sample = rng.choice(values, min(values.size, 200_000), replace=False)
        sample = sample + rng.normal(0.0, sigma, sample.size)
        lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    else:
        raise ValueError(f"normalise={normalise!r}: use 'matched', 'physical' or 'percentile'")
    out = np.clip((image - lo) / max(hi - lo, 1e-12), 0.0, 1.0).astype(np.float32)
    out[~mask] = 0.0
    return out


# --------------------------------------------------------------------------- model hooks
def wants_prior(model_config: dict | None) -> bool:
    """Whether a checkpoint's model config (dict) takes the physics prior as a channel."""
    return bool((model_config or {}).get("physics_prior", False))


def prior_for_volume(source: np.ndarray, source_meta: Metadata, target_meta: Metadata,
                     mask: np.ndarray | None = None) -> np.ndarray:
    """:func:`physics_prior` of a normalised, skull-stripped source (the model's 2nd channel).

    Without ``mask`` the brain is the source's non-zero region with holes filled
    (:func:`rtfsyn.preprocess.brain_mask`), which is what training volumes are (zero outside
    the brain). The channel uses ``normalise="physical"`` (zero signal stays 0, ratios between
    tissues are the signal equation's), so that it carries the metadata dependence to the
    network: percentile-type normalisations pin the darkest and brightest tissue and flatten
    e.g. the CSF/WM ratio across TE (measured in ``benchmarks/physics_prior.py``).
    """
    from rtfsyn.preprocess import brain_mask

    source = np.asarray(source, dtype=np.float32)
    if mask is None:
        try:
            mask = brain_mask(source)
        except InputImageError:
            return np.zeros_like(source)
    mask = np.asarray(mask, bool)
    if mask.sum() < 30:
        return np.zeros_like(source)
    return physics_prior(source, mask, source_meta, target_meta, normalise="physical")
