"""Real-anatomy simulation with continuous protocols (``rtfsyn simulate``).

From each anatomy — a real co-registered case (any layout :func:`rtfsyn.data.load_cases`
reads) or a deformed phantom anatomy — tissue fractions are derived, turned into PD / T1 / T2
maps and imaged with the signal equations of :mod:`rtfsyn.phantom.physics` under protocols
drawn from continuous ranges (:func:`rtfsyn.phantom.ranges.sample_protocol`). Every simulated
subject gets its own field strength, vendor, intensity scale, bias field, noise level and
per-contrast protocol (TR/TE/TI/FA, slice thickness), written exactly into its sidecars, so
that a model learns metadata as physics and never as a site code.

Tissue fractions of a real case (:func:`real_fractions`):

* healthy tissue: CSF / GM / WM from a diagonal multi-contrast Gaussian mixture over the
  normalised T1w, T2w, FLAIR and PDw present, initialised from the T1w tissue classes of
  :func:`rtfsyn.prior.tissue_posteriors` (so component k stays tissue k);
* pathology: given label maps win — BraTS ``seg`` (1 necrosis, 2 oedema, 3 enhancing); a
  binary label map (values 0/1, e.g. open-ms ``GOLD_STANDARD`` as the open-ms reader gives
  it) or a lesion mask beside the images (``*GOLD_STANDARD*``, ``*lesion*``,
  ``*consensus*``) → ``lesion``; without labels, FLAIR hyperintensities (by their ratio to
  white matter, :func:`flair_hyperintensities`) become ``lesion``, and within 3 voxels of
  them T1Gd − T1w > 4 SD (of that difference in WM) becomes ``enhancing``, T1-dark abnormal
  voxels ``necrosis``.

Tissue values: :data:`rtfsyn.phantom.physics.TISSUE_PARAMS` for CSF / GM / WM / lesion
(oedema, MS lesion) plus :data:`EXTRA_TISSUES` (necrosis: long, fluid-like T1 and T2;
enhancing tumour: T1 and T2 between oedema and necrosis, and on T1Gd its R1 raised by
:data:`GD_R1` — r1 ≈ 4 /mM/s × ≈ 0.5 mM of gadolinium), with per-subject jitter as in the
phantom cohort, and a per-subject severity of the lesion between white matter and the
nominal lesion (:data:`LESION_SEVERITY`). It is a simulator: results on it are labelled as
such, and real paired volumes stay the ground truth of every reported number.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtfsyn.errors import DatasetError, RtfsynError
from rtfsyn.metadata import Metadata
from rtfsyn.phantom.physics import TissueParams, tissue_params
from rtfsyn.phantom.ranges import FIELDS, VENDORS, sample_protocol
from rtfsyn.phantom.scanner import Protocol, Site, bias_field, thick_slice_acquisition

__all__ = [
    "EXTRA_TISSUES",
    "GD_R1",
    "LESION_SEVERITY",
    "SIM_TISSUES",
    "Anatomy",
    "Session",
    "draw_session",
    "lesion_at_severity",
    "phantom_anatomy",
    "real_anatomy",
    "real_fractions",
    "simulate_dataset",
    "simulate_session",
    "subject_tissues",
]

#: Tissue classes of the simulator (fractions sum to 1 in the brain).
SIM_TISSUES: tuple[str, ...] = ("CSF", "GM", "WM", "lesion", "necrosis", "enhancing")
#: Pathological classes beyond the phantom's (field → tissue → nominal values).
EXTRA_TISSUES: dict[float, dict[str, TissueParams]] = {
    1.5: {"necrosis": TissueParams(t1=2.600, t2=0.500, t2s=0.250, pd=0.95),
          "enhancing": TissueParams(t1=1.300, t2=0.120, t2s=0.080, pd=0.85)},
    3.0: {"necrosis": TissueParams(t1=3.000, t2=0.450, t2s=0.200, pd=0.95),
          "enhancing": TissueParams(t1=1.600, t2=0.110, t2s=0.070, pd=0.85)},
}
#: Per-subject severity of the ``lesion`` class (oedema, MS lesion, non-enhancing tumour),
#: drawn uniformly from these ranges, one for T1 and one for T2 (T2* and PD follow T2): the
#: lesion's T1 is WM × (nominal lesion / WM) ** s_t1, its T2 and T2* likewise with s_t2, its PD
#: WM + s_t2 × (lesion − WM) (s = 1: the nominal lesion of
#: :data:`rtfsyn.phantom.physics.TISSUE_PARAMS`, T1 2× and T2 2.3–2.5× WM, at the severe end).
#: The lesion class of the real tumour cases is 1.7–2.0× WM on T2w, 1.6–2.1× on FLAIR and
#: 0.8–1.03× on T1w (``benchmarks/sim_lesions.py --real``, results/sim_lesions_v3.md): its T2
#: is prolonged much more than its T1. With these ranges the lesions of the simulations of
#: those anatomies are 0.73–1.28× WM on T1w, 1.3–2.6× on T2w and 1.15–2.3× on FLAIR (same
#: table). They replace stage 9's
#: ``LESION_SPREAD`` (T1 × 0.75–1, T2 × 1–1.8 on the nominal lesion), whose simulations of the
#: BraTS anatomies put their lesions at 2.8–3.7× WM on T2w.
LESION_SEVERITY: dict[str, tuple[float, float]] = {"t1": (0.35, 1.0), "t2": (0.4, 1.0)}
#: FLAIR lesions of a case without labels (:func:`flair_hyperintensities`): at least this many
#: times the white-matter median, and the grey-matter ratio plus this margin. On the training
#: cases the cortex reaches 0.8-1.2 x WM and the brightest 0.5 % of the brain 1.4-2.4 x WM.
LESION_FLAIR_RATIO = 1.45
LESION_FLAIR_MARGIN = 0.35
#: Smallest connected group of FLAIR-abnormal voxels kept (4 voxels = 32 mm³ at 2 mm).
LESION_MIN_VOXELS = 4
#: R1 (1/s) added to enhancing tissue on a post-contrast (T1Gd) image.
GD_R1 = 2.0
#: Contrasts simulated per subject (T1Gd only where the anatomy has enhancing tissue).
SIM_CONTRASTS: tuple[str, ...] = ("T1w", "T2w", "FLAIR", "PDw", "T1Gd")
_GENERATOR = "rtfsyn simulate"


@dataclass
class Anatomy:
    """Tissue fractions of one anatomy on its grid (RAS, ``spacing`` mm)."""

    name: str
    fractions: dict[str, np.ndarray]  # SIM_TISSUES → (D, H, W) float32 in [0, 1]
    mask: np.ndarray  # (D, H, W) bool
    spacing: tuple[float, float, float]

    @property
    def labels(self) -> np.ndarray:
        """Most likely class per voxel: 0 background, 1 + index in :data:`SIM_TISSUES`."""
        stack = np.stack([self.fractions[t] for t in SIM_TISSUES])
        out = (stack.argmax(0) + 1).astype(np.uint8)
        out[~self.mask] = 0
        return out


@dataclass(frozen=True)
class Session:
    """The scanner and protocols of one simulated subject."""

    field_strength: float
    manufacturer: str
    model: str
    scale: float
    bias: float
    noise: float
    protocols: dict[str, Protocol]

    def site(self) -> Site:
        return Site("simulated", self.field_strength, self.manufacturer, self.model,
                    self.protocols, bias=self.bias, noise=self.noise, scale=self.scale)


# --------------------------------------------------------------------------- anatomies
def _diag_gmm(x: np.ndarray, resp: np.ndarray, iters: int = 25) -> np.ndarray:
    """Diagonal-covariance GMM by EM from initial responsibilities ``(N, K)`` → posteriors."""
    floor = 1e-3
    for _ in range(iters):
        nk = resp.sum(0) + 1e-9
        means = resp.T @ x / nk[:, None]
        var = np.maximum((resp.T @ (x ** 2)) / nk[:, None] - means ** 2, floor ** 2)
        w = nk / nk.sum()
        logp = (-0.5 * (((x[:, None, :] - means[None]) ** 2) / var[None]).sum(-1)
                - 0.5 * np.log(var).sum(-1)[None] + np.log(w)[None])
        logp -= logp.max(1, keepdims=True)
        resp = np.exp(logp)
        resp /= resp.sum(1, keepdims=True)
    return resp


def real_fractions(volumes: dict[str, np.ndarray], mask: np.ndarray,
                   labels: dict[str, np.ndarray] | None = None,
                   flair: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Tissue fractions of a real case from its normalised co-registered contrasts.

    Args:
        volumes: contrast → ``(D, H, W)`` normalised volume (needs ``T1w``).
        mask: brain mask.
        labels: optional pathology masks, ``lesion`` / ``necrosis`` / ``enhancing`` → bool.
        flair: the FLAIR before normalisation, ``(D, H, W)`` (default: ``volumes["FLAIR"]``).
            Lesions are found by their ratio to white matter, which the percentile
            normalisation (an offset, and a clip at the 99.5th percentile) does not keep.
    """
    from rtfsyn.prior import PRIOR_TISSUES, tissue_posteriors

    if "T1w" not in volumes:
        raise DatasetError("real-anatomy simulation needs a T1w of each case")
    mask = np.asarray(mask, bool)
    t1_post = tissue_posteriors(volumes["T1w"], mask, Metadata.from_dict({"contrast": "T1w"}),
                                method="pv")
    feats = [c for c in ("T1w", "T2w", "FLAIR", "PDw") if c in volumes]
    x = np.stack([volumes[c][mask] for c in feats], axis=1).astype(np.float64)
    init = np.stack([t1_post[k][mask] for k in range(3)], axis=1).astype(np.float64)
    init = np.eye(3)[init.argmax(1)] * 0.9 + 0.1 / 3
    post = _diag_gmm(x, init) if len(feats) > 1 else init
    healthy = {name: post[:, k] for k, name in enumerate(PRIOR_TISSUES)}
    patho = {t: np.zeros(x.shape[0]) for t in ("lesion", "necrosis", "enhancing")}
    given = {k: np.asarray(v, bool)[mask] for k, v in (labels or {}).items() if v is not None}
    if given:
        for k, v in given.items():
            patho[k][v] = 1.0
    elif "FLAIR" in volumes:
        raw = volumes["FLAIR"] if flair is None else np.asarray(flair, np.float32)
        abnormal = flair_hyperintensities(raw, mask, t1_post)
        if abnormal is not None:
            patho["lesion"][abnormal] = 1.0
            _split_tumour(volumes, mask, healthy, patho, abnormal, t1_post[0][mask] > 0.5)
    abnormal = sum(patho.values())
    abnormal = np.minimum(abnormal, 1.0)
    out = {}
    for name in SIM_TISSUES:
        values = healthy[name] * (1.0 - abnormal) if name in healthy else patho[name]
        vol = np.zeros(mask.shape, np.float32)
        vol[mask] = values
        out[name] = vol
    return out


def flair_hyperintensities(flair: np.ndarray, mask: np.ndarray,
                           t1_post: np.ndarray) -> np.ndarray | None:
    """FLAIR lesions (oedema, MS lesions) of a case without labels, as a bool over ``mask``.

    A voxel is abnormal when its FLAIR exceeds :data:`LESION_FLAIR_RATIO` times the median of
    white matter and the grey-matter ratio plus :data:`LESION_FLAIR_MARGIN` (normal cortex is
    brighter than WM on some FLAIRs), lies inside the mask eroded by one voxel
    (brain-mask rims are bright on unstripped heads) and belongs to a connected group of at
    least :data:`LESION_MIN_VOXELS`. No CSF test: CSF is dark on FLAIR, and a CSF class that
    also sees the T1w and T2w takes in oedema (dark on T1w, bright on T2w). White and grey
    matter are the T1w classes ``t1_post`` ``(3, D, H, W)`` (CSF, GM, WM); the FLAIR is the
    raw one (ratios). Returns None when there is too little GM or WM to measure.
    """
    from scipy import ndimage

    wm = (t1_post[2] > 0.5) & mask
    gm = (t1_post[1] > 0.5) & mask
    if wm.sum() <= 10 or gm.sum() <= 10:
        return None
    w = float(np.median(flair[wm]))
    if w <= 0:
        return None
    gm_ratio = float(np.median(flair[gm])) / w
    threshold = max(LESION_FLAIR_RATIO, gm_ratio + LESION_FLAIR_MARGIN) * w
    inner = ndimage.binary_erosion(mask)
    return _drop_specks(inner & (flair > threshold), LESION_MIN_VOXELS)[mask]


def _drop_specks(vol: np.ndarray, min_voxels: int) -> np.ndarray:
    """``vol`` (bool, ``(D, H, W)``) without its connected groups of fewer than
    ``min_voxels`` voxels."""
    from scipy import ndimage

    lab, n = ndimage.label(vol)
    if not n:
        return vol
    sizes = ndimage.sum(vol, lab, index=np.arange(1, n + 1))
    return np.isin(lab, np.flatnonzero(sizes >= min_voxels) + 1)


def _split_tumour(volumes: dict[str, np.ndarray], mask: np.ndarray,
                  healthy: dict[str, np.ndarray], patho: dict[str, np.ndarray],
                  abnormal: np.ndarray, t1_csf: np.ndarray) -> None:
    """Without labels: in and around the FLAIR-abnormal region, voxels that enhance strongly
    on T1Gd (T1Gd − T1w > 4 SD of that difference in WM) become ``enhancing``, and abnormal
    voxels dark as CSF on the T1w (``t1_csf``: the T1w-only class, since the multi-contrast
    CSF class takes in oedema, dark on T1w and bright on T2w) become ``necrosis`` (in place)."""
    from scipy import ndimage

    if not abnormal.any():
        return
    region = np.zeros(mask.shape, bool)
    region[mask] = abnormal
    near = ndimage.binary_dilation(region, iterations=3)[mask]
    if "T1Gd" in volumes:
        diff = volumes["T1Gd"][mask] - volumes["T1w"][mask]
        wm = healthy["WM"] > 0.5
        if wm.sum() > 10:
            enh = near & (diff > diff[wm].mean() + 4.0 * diff[wm].std())
            vol = np.zeros(mask.shape, bool)
            vol[mask] = enh
            enh = _drop_specks(vol, 8)[mask]  # noise
            patho["enhancing"][enh] = 1.0
            patho["lesion"][enh] = 0.0
    necrosis = abnormal & t1_csf & (patho["enhancing"] == 0)
    patho["necrosis"][necrosis] = 1.0
    patho["lesion"][necrosis] = 0.0


def _find_lesion_mask(case: Any) -> Path | None:
    folder = Path(next(iter(case.images.values()))).parent
    for pattern in ("*GOLD_STANDARD*.nii*", "*lesion*.nii*", "*consensus*.nii*"):
        hits = sorted(folder.glob(pattern))
        if hits:
            return hits[0]
    return None


def real_anatomy(case: Any, spacing: float | None = None) -> Anatomy | None:
    """The :class:`Anatomy` of a co-registered real :class:`~rtfsyn.data.cases.Case`.

    Returns None when its contrasts are not on one grid (not co-registered: simulate only
    from registered cases) or it has no T1w.
    """
    from rtfsyn import io
    from rtfsyn.preprocess import brain_mask, robust_normalize

    if "T1w" not in case.images:
        return None
    ref = io.to_canonical(io.load_nifti(case.images["T1w"]))
    grids = {}
    for contrast in case.contrasts:
        img = io.to_canonical(io.load_nifti(case.images[contrast]))
        if not io.same_grid(img, ref, atol=1e-2):
            if contrast == "T1Gd":  # only used to find enhancement: leave it out
                continue
            return None
        grids[contrast] = img
    if spacing is not None:
        grids = {c: io.resample_to_spacing(img, spacing) for c, img in grids.items()}
    ref = grids["T1w"]
    data = {c: np.asarray(img.dataobj, np.float32) for c, img in grids.items()}
    if case.mask is not None:
        m = io.resample_to_reference(io.to_canonical(io.load_nifti(case.mask)), ref, order=0)
        mask = np.asarray(m.dataobj) > 0.5
    else:
        mask = np.logical_and.reduce([brain_mask(v) for c, v in data.items() if c != "T1Gd"])
    labels: dict[str, np.ndarray] = {}

    def on_grid(path: Path) -> np.ndarray:
        img = io.resample_to_reference(io.to_canonical(io.load_nifti(path)), ref, order=0)
        return np.rint(np.asarray(img.dataobj)).astype(np.int16)

    if case.labels is not None:
        seg = on_grid(case.labels)
        if seg.max() <= 1:  # a binary lesion mask (open-ms GOLD_STANDARD)
            labels = {"lesion": seg > 0}
        else:  # BraTS: 1 necrosis, 2 oedema, 3 (or 4) enhancing
            labels = {"necrosis": seg == 1, "lesion": seg == 2,
                      "enhancing": (seg == 3) | (seg == 4)}
    else:
        lesion = _find_lesion_mask(case)
        if lesion is not None:
            labels = {"lesion": on_grid(lesion) > 0}
    volumes = {c: robust_normalize(v, mask)[0] for c, v in data.items()}
    fractions = real_fractions(volumes, mask, {k: v & mask for k, v in labels.items()} or None,
                               flair=data.get("FLAIR"))
    return Anatomy(case.subject, fractions, mask,
                   tuple(round(s, 4) for s in io.spacing_of(ref)))  # type: ignore[arg-type]


def phantom_anatomy(index: int, seed: int, spacing: float = 1.0,
                    lesions: bool = True) -> Anatomy:
    """A deformed ICBM anatomy (as in the phantom cohort), with WM lesions by default."""
    from rtfsyn.phantom.anatomy import (
        base_anatomy,
        sample_deformation,
        sample_lesions,
        subject_anatomy,
    )

    rng = np.random.default_rng([int(seed), int(index), 11])
    base = base_anatomy(float(spacing))
    deformation = sample_deformation(rng)
    lesion_list = sample_lesions(rng) if lesions else ()
    anat = subject_anatomy(base, deformation, lesion_list)
    zeros = np.zeros(base.shape, np.float32)
    fractions = {t: np.asarray(anat.fractions.get(t, zeros), np.float32) for t in SIM_TISSUES}
    return Anatomy(f"phantom-{index:03d}", fractions, np.asarray(anat.mask, bool),
                   (float(spacing),) * 3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- physics
def subject_tissues(field_strength: float, rng: np.random.Generator,
                    jitter: tuple[float, float] = (0.06, 0.03)) -> dict[str, TissueParams]:
    """Nominal tissue values at the field (1.5–3 T interpolated) with per-subject jitter;
    the lesion class lies between the subject's WM and its nominal lesion, at a severity
    drawn from :data:`LESION_SEVERITY`."""
    nominal = dict(tissue_params(field_strength))
    w = min(max((field_strength - 1.5) / 1.5, 0.0), 1.0)
    for name in ("necrosis", "enhancing"):
        a, b = EXTRA_TISSUES[1.5][name], EXTRA_TISSUES[3.0][name]
        nominal[name] = TissueParams(*((1 - w) * x + w * y for x, y in zip(
            (a.t1, a.t2, a.t2s, a.pd), (b.t1, b.t2, b.t2s, b.pd), strict=True)))
    shared = rng.uniform(-jitter[0], jitter[0], 4)
    out = {}
    for name in SIM_TISSUES:
        f = 1.0 + shared + rng.uniform(-jitter[1], jitter[1], 4)
        out[name] = nominal[name].scaled(*(float(v) for v in f))
    s_t1, s_t2 = (float(rng.uniform(*LESION_SEVERITY[k])) for k in ("t1", "t2"))
    out["lesion"] = lesion_at_severity(out["WM"], out["lesion"], s_t1, s_t2)
    return out


def lesion_at_severity(wm: TissueParams, lesion: TissueParams, s_t1: float,
                       s_t2: float) -> TissueParams:
    """A lesion between white matter (severity 0) and ``lesion`` (1): T1 at ``s_t1``, T2, T2*
    and PD at ``s_t2``; relaxation times interpolated geometrically, PD linearly."""
    for name, s in (("s_t1", s_t1), ("s_t2", s_t2)):
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"lesion severity {name} = {s} is outside [0, 1]")
    return TissueParams(t1=wm.t1 * (lesion.t1 / wm.t1) ** s_t1,
                        t2=wm.t2 * (lesion.t2 / wm.t2) ** s_t2,
                        t2s=wm.t2s * (lesion.t2s / wm.t2s) ** s_t2,
                        pd=wm.pd + s_t2 * (lesion.pd - wm.pd))


def draw_session(rng: np.random.Generator, contrasts: Sequence[str] = SIM_CONTRASTS) -> Session:
    """Field, vendor, intensity scale, bias, noise and one protocol per contrast."""
    fields, probs = zip(*FIELDS, strict=True)
    field = float(fields[int(rng.choice(len(fields), p=np.array(probs) / sum(probs)))])
    vendor, model = VENDORS[int(rng.integers(len(VENDORS)))]
    protocols = {c: sample_protocol(c, rng, field) for c in contrasts}
    if "T1Gd" in protocols and "T1w" in protocols and rng.random() < 0.7:
        # post-contrast usually repeats the pre-contrast sequence
        protocols["T1Gd"] = Protocol("T1Gd", **{
            k: v for k, v in protocols["T1w"].__dict__.items() if k != "contrast"})
    return Session(field, vendor, model, scale=float(np.exp(rng.uniform(np.log(0.3),
                                                                        np.log(3.0)))),
                   bias=float(rng.uniform(0.03, 0.2)), noise=float(rng.uniform(0.01, 0.045)),
                   protocols=protocols)


def simulate_session(anat: Anatomy, session: Session, tissues: dict[str, TissueParams],
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Images of every protocol of ``session`` on the anatomy's grid (0 outside the mask)."""
    from rtfsyn.phantom.cohort import _bias_coefficients

    shape = anat.mask.shape
    shared = rng.standard_normal((4, 4, 4))
    images = {}
    for contrast, protocol in session.protocols.items():
        params = dict(tissues)
        if contrast == "T1Gd":
            e = tissues["enhancing"]
            params["enhancing"] = TissueParams(1.0 / (1.0 / e.t1 + GD_R1), e.t2, e.t2s, e.pd)
        signals = {t: protocol.signal(params[t]) for t in SIM_TISSUES}
        ref = max(signals[t] for t in ("CSF", "GM", "WM"))
        gain = 1000.0 * session.scale / max(ref, 1e-9) * float(rng.uniform(0.95, 1.05))
        image = np.zeros(shape, np.float32)
        for t in SIM_TISSUES:
            if signals[t] and anat.fractions[t].any():
                image += anat.fractions[t] * np.float32(signals[t] * gain)
        coeffs = _bias_coefficients(rng, shared, session.bias * float(rng.uniform(0.8, 1.2)))
        image *= bias_field(shape, coeffs)
        sigma = session.noise * 1000.0 * session.scale
        factor = protocol.slice_thickness / anat.spacing[protocol.slice_axis]
        image = thick_slice_acquisition(image, factor, axis=protocol.slice_axis,
                                        offset=float(rng.uniform()), noise=(sigma, rng))
        image[~anat.mask] = 0.0
        images[contrast] = image
    return images


# --------------------------------------------------------------------------- dataset
def _load_anatomies(sources: Sequence[Path], phantom: int, seed: int,
                    spacing: float | None, say: Callable[[str], None]) -> list[Anatomy]:
    from rtfsyn.data.cases import load_cases

    anatomies: list[Anatomy] = []
    for src in sources:
        for case in load_cases(src):
            anat = real_anatomy(case, spacing)
            if anat is None:
                say(f"skipped {case.subject}: no T1w, or contrasts not on one grid "
                    "(register them first)")
                continue
            anatomies.append(anat)
            say(f"anatomy {case.subject}: " + ", ".join(
                f"{t} {anat.fractions[t][anat.mask].mean():.2f}" for t in SIM_TISSUES))
    for i in range(phantom):
        anatomies.append(phantom_anatomy(i, seed, spacing or 1.0))
    if not anatomies:
        raise RtfsynError("no anatomy to simulate from: give --from DIR with co-registered "
                          "cases (with a T1w) or --phantom N")
    return anatomies


def simulate_dataset(out_dir: str | Path, sources: Sequence[str | Path] = (),
                     n_subjects: int = 8, seed: int = 0, phantom: int = 0,
                     spacing: float | None = None, force: bool = False,
                     say: Callable[[str], None] = lambda s: None) -> list[Path]:
    """Simulate ``n_subjects`` subjects (anatomies used round-robin) as a BIDS dataset.

    Each subject ``sub-NNNN`` has T1w, T2w, FLAIR, PDw (and ``ce-gd`` T1w where the anatomy
    has enhancing tissue) with exact JSON sidecars, a brain mask and a ``dseg`` of
    :data:`SIM_TISSUES`. Subject ``i`` draws everything from ``default_rng([seed, i])``.
    """
    from rtfsyn.io import save_nifti
    from rtfsyn.phantom.cohort import _write_json, _write_text, sidecar

    out = Path(out_dir)
    if n_subjects < 1:
        raise RtfsynError(f"--subjects {n_subjects} is invalid: give at least 1")
    if out.exists() and not out.is_dir():
        raise RtfsynError(f"output {out} exists and is not a folder: choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        what = "holds an earlier simulation" if _is_simulated(out) else "is not empty"
        raise RtfsynError(f"output folder {out} {what}: choose a new folder or pass --force")
    t0 = time.time()
    anatomies = _load_anatomies([Path(s) for s in sources], phantom, seed, spacing, say)
    out.mkdir(parents=True, exist_ok=True)
    args = {"sources": [str(s) for s in sources], "n_subjects": n_subjects, "seed": seed,
            "phantom": phantom, "spacing": spacing}
    _write_json(out / "dataset_description.json", {
        "Name": "rtfsyn real-anatomy simulation (simulated MRI, not patient data)",
        "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": _GENERATOR, "Parameters": args}],
    })
    width = max(4, len(str(n_subjects)))
    rows = ["participant_id\tanatomy\tfield\tmanufacturer"]
    paths = []
    for i in range(n_subjects):
        anat = anatomies[i % len(anatomies)]
        rng = np.random.default_rng([int(seed), i])
        has_enh = bool(anat.fractions["enhancing"].any())
        contrasts = [c for c in SIM_CONTRASTS if c != "T1Gd" or has_enh]
        session = draw_session(rng, contrasts)
        tissues = subject_tissues(session.field_strength, rng)
        images = simulate_session(anat, session, tissues, rng)
        sub = f"sub-{i + 1:0{width}d}"
        folder = out / sub / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        affine = np.diag([*anat.spacing, 1.0])
        site = session.site()
        for contrast, image in images.items():
            stem = f"{sub}_ce-gd_T1w" if contrast == "T1Gd" else f"{sub}_{contrast}"
            save_nifti(image, folder / f"{stem}.nii.gz", affine=affine)
            car = sidecar(site, session.protocols[contrast], max(anat.spacing))
            car["SimulatedFrom"] = anat.name
            _write_json(folder / f"{stem}.json", car)
        save_nifti(anat.mask.astype(np.uint8), folder / f"{sub}_desc-brain_mask.nii.gz",
                   affine=affine)
        save_nifti(anat.labels, folder / f"{sub}_dseg.nii.gz", affine=affine)
        rows.append(f"{sub}\t{anat.name}\t{session.field_strength:g}\t{session.manufacturer}")
        paths.append(out / sub)
        say(f"{sub} from {anat.name}: {session.field_strength:g} T {session.manufacturer}, "
            + "; ".join(f"{c} {p.family} TR {p.tr * 1e3:.0f} TE {p.te * 1e3:.0f}"
                        + (f" TI {p.ti * 1e3:.0f}" if p.ti else "")
                        for c, p in session.protocols.items()))
    _write_text(out / "participants.tsv", "\n".join(rows) + "\n")
    _write_text(out / "dseg.tsv", "index\tname\n0\tbackground\n" + "".join(
        f"{k + 1}\t{t}\n" for k, t in enumerate(SIM_TISSUES)))
    _write_text(out / "README", "rtfsyn real-anatomy simulation: SIMULATED data, not patient "
                f"data.\nParameters: {json.dumps(args)}\n")
    say(f"simulated {n_subjects} subjects from {len(anatomies)} anatomies in "
        f"{time.time() - t0:.0f} s")
    return paths


def _is_simulated(out: Path) -> bool:
    try:
        desc = json.loads((out / "dataset_description.json").read_text())
        return any(g.get("Name") == _GENERATOR for g in desc.get("GeneratedBy", []))
    except (OSError, ValueError, AttributeError, TypeError):
        return False
