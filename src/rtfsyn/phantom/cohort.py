"""Phantom cohort: sample subjects, simulate their images, write them as a BIDS dataset.

Every random quantity of a subject is drawn once, in a fixed order, from
``np.random.default_rng([seed, subject_index])`` into a :class:`SubjectParams`; the image
formation (:func:`simulate_subject`) is a deterministic function of those parameters and the
grid spacing. A subject is therefore reproducible on its own (the same seed gives identical
arrays), and switching lesions on or off changes nothing else about a subject.

Image formation per contrast::

    fractions (CSF, GM, WM, lesion)  ← template anatomy warped by the subject's deformation
    S(x) = gain · Σ_k fraction_k(x) · signal_k(protocol, jittered tissue k)   (partial volume)
    S(x) ← S(x) · bias(x)                        smooth multiplicative field (site amplitude)
    thick slices (box slice profile, sampled every slice thickness)           (if thicker)
    Rician noise on the acquired samples, σ = site noise × brightest tissue
    back to the common grid (linear along the slice axis); 0 outside the brain mask

The brightest nominal tissue of each protocol is scaled to about ``1000 × site.scale``.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtfsyn.errors import RtfsynError
from rtfsyn.io import atomic_write
from rtfsyn.phantom.anatomy import (
    Deformation,
    Lesion,
    base_anatomy,
    sample_deformation,
    sample_lesions,
    subject_anatomy,
)
from rtfsyn.phantom.physics import TISSUES, TissueParams
from rtfsyn.phantom.scanner import (
    CONTRAST_ORDER,
    Protocol,
    Site,
    bias_field,
    get_sites,
    thick_slice_acquisition,
)

__all__ = [
    "LABELS",
    "SimulatedSubject",
    "SubjectParams",
    "make_cohort",
    "sample_subject",
    "simulate_noise_free",
    "simulate_subject",
    "subject_id",
]

#: Label values of ``*_dseg.nii.gz``.
LABELS: dict[int, str] = {0: "background", 1: "CSF", 2: "GM", 3: "WM", 4: "lesion"}
#: Accepted grid spacings (mm).
SPACING_RANGE = (0.5, 8.0)
#: Relative subject jitter of T1, T2, T2* and PD (uniform ±): (shared by all tissues,
#: independent per tissue).
TISSUE_JITTER = (0.06, 0.03)
#: Polynomial degree of the log bias field.
BIAS_DEGREE = 3

_GENERATOR = "rtfsyn phantom"


@dataclass(frozen=True)
class SubjectParams:
    """All random parameters of one phantom subject (drawn by :func:`sample_subject`).

    Attributes:
        index: 0-based subject index (``sub-01`` has index 0).
        subject: BIDS subject id, e.g. ``sub-01``.
        site: the scanner the subject was imaged on.
        tissue_factors: per tissue, factors on (T1, T2, T2*, PD).
        bias_coefficients: per contrast, Legendre coefficients of the log bias field.
        gains: per contrast, a receiver-gain factor around 1.
        slice_offsets: per contrast, the position of the first slice as a fraction of one.
        noise_seed: seed of the per-contrast noise generators.
    """

    index: int
    subject: str
    site: Site
    age: int
    sex: str
    deformation: Deformation
    lesions: tuple[Lesion, ...]
    tissue_factors: dict[str, tuple[float, float, float, float]]
    bias_coefficients: dict[str, np.ndarray] = field(repr=False)
    gains: dict[str, float]
    slice_offsets: dict[str, float]
    noise_seed: int

    def tissues(self) -> dict[str, TissueParams]:
        """This subject's tissue parameters at its site's field strength."""
        nominal = self.site.nominal_tissues()
        return {name: nominal[name].scaled(*self.tissue_factors[name]) for name in TISSUES}


@dataclass(frozen=True)
class SimulatedSubject:
    """Simulated images of one subject on the common grid (float32, uint8 mask / labels)."""

    params: SubjectParams
    affine: np.ndarray
    images: dict[str, np.ndarray]
    mask: np.ndarray
    labels: np.ndarray


def subject_id(index: int, n_subjects: int = 12) -> str:
    """BIDS id of the 0-based subject ``index``: ``sub-01`` … (at least two digits)."""
    width = max(2, len(str(n_subjects)))
    return f"sub-{index + 1:0{width}d}"


def _legendre_weights(degree: int) -> np.ndarray:
    """Mean square over [−1, 1]³ of each product P_i P_j P_k (1 / Π(2n + 1))."""
    w = 1.0 / (2.0 * np.arange(degree + 1) + 1.0)
    return np.einsum("i,j,k->ijk", w, w, w)


def _bias_coefficients(rng: np.random.Generator, shared: np.ndarray, rms: float) -> np.ndarray:
    """Shared (coil) part plus a smaller per-contrast part, scaled to ``rms`` log-field RMS."""
    d = BIAS_DEGREE
    idx = np.indices((d + 1,) * 3).sum(axis=0)
    own = rng.standard_normal((d + 1,) * 3)
    c = shared + 0.4 * own
    c[idx > d] = 0.0
    c[0, 0, 0] = 0.0
    norm = float(np.sqrt((c ** 2 * _legendre_weights(d)).sum()))
    c *= rms / max(norm, 1e-12)
    c.setflags(write=False)
    return c


def sample_subject(seed: int, index: int, site: Site, *, lesions: bool = False,
                   n_subjects: int = 12, protocol_jitter: float = 0.0) -> SubjectParams:
    """Draw all random parameters of subject ``index`` from ``default_rng([seed, index])``.

    The draws happen in a fixed order and the lesions are always drawn (kept only with
    ``lesions=True``), so a subject's anatomy, tissue values and noise do not depend on the
    ``lesions`` flag, on the number of subjects or on the grid spacing.

    ``protocol_jitter`` > 0 gives the subject its own protocol around the site's nominal one
    (TR, TE, TI, FA each × a factor in [1 − j, 1 + j], :func:`rtfsyn.phantom.ranges.
    jitter_protocol`), drawn from a separate stream ``default_rng([seed, index, 1])`` so that
    everything else about the subject is unchanged; the sidecars carry the drawn values, so
    TR/TE are no longer a site code. 0 (default) keeps the nominal protocol.
    """
    if protocol_jitter > 0:
        import dataclasses

        from rtfsyn.phantom.ranges import jitter_protocol

        prng = np.random.default_rng([int(seed), int(index), 1])
        site = dataclasses.replace(site, protocols={
            c: jitter_protocol(p, prng, float(protocol_jitter))
            for c, p in site.protocols.items()})
    rng = np.random.default_rng([int(seed), int(index)])
    age = int(rng.integers(20, 81))
    sex = "F" if rng.random() < 0.5 else "M"
    deformation = sample_deformation(rng)
    lesion_list = sample_lesions(rng)
    # a subject-wide factor per parameter plus a smaller independent one per tissue, so
    # that relaxation times vary by up to ±9 % while the tissue ordering stays plausible
    shared_factor = rng.uniform(-TISSUE_JITTER[0], TISSUE_JITTER[0], (1, 4))
    factors = 1.0 + shared_factor + rng.uniform(-TISSUE_JITTER[1], TISSUE_JITTER[1],
                                                (len(TISSUES), 4))
    shared = rng.standard_normal((BIAS_DEGREE + 1,) * 3)
    bias_rms = site.bias * rng.uniform(0.8, 1.2)
    coeffs = {c: _bias_coefficients(rng, shared, bias_rms) for c in CONTRAST_ORDER}
    gains = {c: float(g) for c, g in zip(CONTRAST_ORDER, rng.uniform(0.95, 1.05, 4),
                                         strict=True)}
    offsets = {c: float(o) for c, o in zip(CONTRAST_ORDER, rng.uniform(0.0, 1.0, 4),
                                           strict=True)}
    noise_seed = int(rng.integers(0, 2 ** 63 - 1))
    return SubjectParams(
        index=int(index), subject=subject_id(index, n_subjects), site=site, age=age, sex=sex,
        deformation=deformation, lesions=lesion_list if lesions else (),
        tissue_factors={name: tuple(float(x) for x in factors[i])
                        for i, name in enumerate(TISSUES)},
        bias_coefficients=coeffs, gains=gains, slice_offsets=offsets, noise_seed=noise_seed,
    )


def protocol_gain(site: Site, protocol: Protocol) -> float:
    """Scale putting the brightest nominal tissue (CSF, GM, WM) at ``1000 × site.scale``."""
    nominal = site.nominal_tissues()
    ref = max(protocol.signal(nominal[t]) for t in ("CSF", "GM", "WM"))
    return 1000.0 * site.scale / ref


def simulate_subject(params: SubjectParams, spacing: float = 1.0) -> SimulatedSubject:
    """Simulate all contrasts of one subject on the ICBM grid at ``spacing`` mm."""
    base = base_anatomy(float(spacing))
    anat = subject_anatomy(base, params.deformation, params.lesions)
    site = params.site
    tissues = params.tissues()
    outside = ~anat.mask
    images: dict[str, np.ndarray] = {}
    for ci, contrast in enumerate(CONTRAST_ORDER):
        protocol = site.protocols[contrast]
        gain = protocol_gain(site, protocol) * params.gains[contrast]
        image = np.zeros(base.shape, dtype=np.float32)
        for name in TISSUES:
            fraction = anat.fractions[name]
            if name == "lesion" and not params.lesions:
                continue
            value = np.float32(protocol.signal(tissues[name]) * gain)
            image += fraction * value
        image *= bias_field(base.shape, params.bias_coefficients[contrast])
        sigma = site.noise * 1000.0 * site.scale
        rng = np.random.default_rng([params.noise_seed, ci])
        image = thick_slice_acquisition(
            image, protocol.slice_thickness / base.spacing, axis=protocol.slice_axis,
            offset=params.slice_offsets[contrast], noise=(sigma, rng),
        )
        image[outside] = 0.0
        images[contrast] = image
    return SimulatedSubject(params, np.array(base.affine), images,
                            anat.mask.astype(np.uint8), anat.labels)


def simulate_noise_free(params: SubjectParams, spacing: float = 1.0) -> SimulatedSubject:
    """The same subject without its Rician noise (everything else identical).

    The noise is independent of everything a synthesis model sees, so comparing a simulated
    target with its noise-free version gives the best PSNR / SSIM any model could reach on
    that image (an upper bound used by ``rtfsyn demo`` to put its numbers in context).
    """
    import dataclasses

    quiet = dataclasses.replace(params.site, noise=0.0)
    return simulate_subject(dataclasses.replace(params, site=quiet), spacing)


# --------------------------------------------------------------------------- BIDS writing
def sidecar(site: Site, protocol: Protocol, spacing: float) -> dict[str, Any]:
    """BIDS JSON sidecar of one simulated image (times in s, angles in deg, sizes in mm).

    ``SliceThickness`` is the effective thickness of the stored image: the protocol's slice
    thickness, or the grid spacing where that is coarser.
    """
    out: dict[str, Any] = {
        "Modality": "MR",
        "MagneticFieldStrength": site.field_strength,
        "Manufacturer": site.manufacturer,
        "ManufacturersModelName": site.model,
        "InstitutionName": site.name,
        "SeriesDescription": protocol.series_description,
        "SequenceFamily": protocol.family,
        "MRAcquisitionType": protocol.acquisition_type,
        "RepetitionTime": protocol.tr,
        "EchoTime": protocol.te,
    }
    if protocol.ti is not None:
        out["InversionTime"] = protocol.ti
    out["FlipAngle"] = protocol.flip_angle
    if protocol.family == "MPRAGE":
        out["RepetitionTimePreparation"] = protocol.tr
        out["RepetitionTimeExcitation"] = protocol.echo_spacing
    out["SliceThickness"] = round(max(protocol.slice_thickness, float(spacing)), 4)
    out["Simulated"] = True
    return out


def _write_text(path: Path, text: str) -> None:
    """Write a small text file atomically (temporary file + rename; mode from the umask)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_text(path, json.dumps(data, indent=2) + "\n")


def write_subject(out_dir: Path, sim: SimulatedSubject, spacing: float) -> Path:
    """Write one simulated subject as ``sub-XX/anat/…`` (images, sidecars, mask, dseg)."""
    from rtfsyn.io import save_nifti

    sub = sim.params.subject
    anat = Path(out_dir) / sub / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    for contrast, image in sim.images.items():
        protocol = sim.params.site.protocols[contrast]
        save_nifti(image, anat / f"{sub}_{contrast}.nii.gz", affine=sim.affine)
        _write_json(anat / f"{sub}_{contrast}.json",
                    sidecar(sim.params.site, protocol, spacing))
    save_nifti(sim.mask, anat / f"{sub}_desc-brain_mask.nii.gz", affine=sim.affine)
    save_nifti(sim.labels, anat / f"{sub}_dseg.nii.gz", affine=sim.affine)
    return anat.parent


def _write_description(out_dir: Path, args: dict[str, Any]) -> None:
    from rtfsyn import __version__

    _write_json(out_dir / "dataset_description.json", {
        "Name": "rtfsyn phantom cohort (simulated MRI, not patient data)",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "License": "Simulated from the ICBM 2009a templates (see ReferencesAndLinks)",
        "GeneratedBy": [{
            "Name": _GENERATOR,
            "Version": __version__,
            "Description": (
                "Physics-based simulation (spin echo, inversion recovery, spoiled GRE, "
                "MPRAGE signal equations) on ICBM 2009a tissue maps with per-subject "
                "deformation and tissue jitter and per-site protocol, bias field, Rician "
                "noise and slice thickness"
            ),
            "Parameters": args,
        }],
        "ReferencesAndLinks": [
            "Fonov et al., NeuroImage 54:313 (2011): ICBM 2009a nonlinear asymmetric template",
            "Kwan et al., IEEE TMI 18:1085 (1999): BrainWeb MRI simulator",
        ],
    })


def _write_dataset_files(out_dir: Path, params: list[SubjectParams], args: dict[str, Any],
                         sites: tuple[Site, ...]) -> None:
    lines = ["participant_id\tage\tsex\tsite"]
    lines += [f"{p.subject}\t{p.age}\t{p.sex}\t{p.site.name}" for p in params]
    _write_text(out_dir / "participants.tsv", "\n".join(lines) + "\n")
    _write_json(out_dir / "participants.json", {
        "participant_id": {"Description": "Simulated subject id"},
        "age": {"Description": "Simulated age (does not affect the images)", "Units": "year"},
        "sex": {"Description": "Simulated sex (does not affect the images)",
                "Levels": {"F": "female", "M": "male"}},
        "site": {"Description": "Simulated scanner site (InstitutionName in the sidecars)",
                 "Levels": {s.name: f"{s.field_strength:g} T {s.manufacturer} {s.model}"
                            for s in sites}},
    })
    _write_text(out_dir / "dseg.tsv",
                "index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in LABELS.items()))
    site_lines = "\n".join(
        f"- {s.name}: {s.field_strength:g} T {s.manufacturer} {s.model}; "
        + "; ".join(f"{c} {p.family} TR {p.tr * 1000:g} ms TE {p.te * 1000:g} ms"
                    + (f" TI {p.ti * 1000:g} ms" if p.ti else "")
                    + (f" FA {p.flip_angle:g}°" if p.family in ("GRE", "MPRAGE") else "")
                    + f" {p.slice_thickness:g} mm"
                    for c, p in s.protocols.items())
        for s in sites
    )
    _write_text(out_dir / "README", (
        "rtfsyn phantom cohort\n=====================\n\n"
        "SIMULATED data made by `rtfsyn phantom` (not patient data). Results obtained on it\n"
        "are results on a simulator and must be labelled as such.\n\n"
        f"Parameters: {json.dumps(args)}\n\nSites:\n{site_lines}\n\n"
        "Each subject: T1w, T2w, FLAIR and PDw on the ICBM 2009a grid, a brain mask\n"
        "(*_desc-brain_mask) and tissue labels (*_dseg, see dseg.tsv).\n"
    ))


def _is_phantom(out_dir: Path) -> bool:
    try:
        desc = json.loads((out_dir / "dataset_description.json").read_text())
        return any(g.get("Name") == _GENERATOR for g in desc.get("GeneratedBy", []))
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def _check_args(n_subjects: Any, spacing: Any, seed: Any) -> None:
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)) or \
            n_subjects < 1:
        raise RtfsynError(f"subjects={n_subjects!r} is invalid: give at least 1 subject")
    try:
        sp = float(spacing)
    except (TypeError, ValueError):
        raise RtfsynError(f"spacing={spacing!r} is not a number (mm)") from None
    lo, hi = SPACING_RANGE
    if not (lo <= sp <= hi):
        raise RtfsynError(f"spacing={sp:g} mm is out of range: use a value in [{lo:g}, {hi:g}]")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise RtfsynError(f"seed={seed!r} is invalid: give a non-negative integer")


def make_cohort(
    out_dir: str | Path,
    n_subjects: int = 12,
    n_sites: int = 4,
    spacing: float = 1.0,
    seed: int = 0,
    lesions: bool = False,
    progress: bool | Callable[[int, int], None] = True,
    *,
    force: bool = False,
    preview: bool = False,
    protocol_jitter: float = 0.0,
) -> list[Path]:
    """Simulate a multi-site phantom cohort and write it as a BIDS dataset.

    Args:
        out_dir: dataset folder; created if needed. It must be empty unless ``force``.
        n_subjects: number of subjects (≥ 1), assigned to the sites round-robin.
        n_sites: number of sites, the first ``n_sites`` of
            :data:`rtfsyn.phantom.scanner.DEFAULT_SITES` (1–4).
        spacing: isotropic grid spacing in mm, in [0.5, 8] (the ICBM grid resampled).
        seed: non-negative integer; subject ``i`` uses ``default_rng([seed, i])``.
        lesions: add 1–3 white-matter lesions (label 4) with long T1 and T2 to every subject.
        progress: ``True`` for a rich progress bar on stderr, ``False`` for none, or a
            callable ``(done, total)`` called after each subject.
        force: write into a non-empty folder. If it holds an earlier phantom cohort, its
            ``sub-*`` folders that the new cohort does not overwrite are removed.
        preview: also write ``preview.png`` (:func:`rtfsyn.phantom.preview.write_preview`).
        protocol_jitter: relative range of each subject's protocol around its site's
            (see :func:`sample_subject`; 0 = every subject of a site has the same protocol).

    Returns:
        The subject folders (``out_dir/sub-01`` …) in order.

    Raises:
        RtfsynError: invalid arguments, or a non-empty ``out_dir`` without ``force``.
    """
    _check_args(n_subjects, spacing, seed)
    sites = get_sites(n_sites)
    spacing = float(spacing)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RtfsynError(f"output {out} exists and is not a folder: choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RtfsynError(
            f"output folder {out} is not empty: choose a new folder or pass --force to write "
            "into it"
        )
    previous_phantom = out.is_dir() and _is_phantom(out)
    out.mkdir(parents=True, exist_ok=True)
    args = {"n_subjects": int(n_subjects), "n_sites": int(n_sites), "spacing": spacing,
            "seed": int(seed), "lesions": bool(lesions)}
    if not 0.0 <= float(protocol_jitter) < 0.5:
        raise RtfsynError(f"protocol_jitter={protocol_jitter!r} is out of range: use [0, 0.5)")
    if protocol_jitter:
        args["protocol_jitter"] = float(protocol_jitter)
    params = [sample_subject(seed, i, sites[i % len(sites)], lesions=lesions,
                             n_subjects=n_subjects, protocol_jitter=protocol_jitter)
              for i in range(n_subjects)]

    bar = _Progress(progress, n_subjects)
    paths: list[Path] = []
    with bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="phantom-write") as pool:
        # the description first, so that an interrupted run is recognised by --force
        _write_description(out, args)
        bar.describe("loading ICBM 2009a templates")
        base_anatomy(spacing)
        pending: list[Future[Path]] = []
        for p in params:
            bar.describe(f"{p.subject} ({p.site.name})")
            sim = simulate_subject(p, spacing)
            # overlap writing (gzip) of this subject with simulating the next one
            while len(pending) >= 1:
                paths.append(pending.pop(0).result())
                bar.advance()
            pending.append(pool.submit(write_subject, out, sim, spacing))
            del sim
        for fut in pending:
            paths.append(fut.result())
            bar.advance()
        _write_dataset_files(out, params, args, sites)
        if previous_phantom:
            keep = {p.subject for p in params}
            for stale in out.glob("sub-*"):
                if stale.is_dir() and re.fullmatch(r"sub-\d+", stale.name) and \
                        stale.name not in keep:
                    shutil.rmtree(stale)
        if preview:
            from rtfsyn.phantom.preview import write_preview

            bar.describe("preview")
            write_preview(out)
    return paths


class _Progress:
    """A rich progress bar, a callback, or nothing."""

    def __init__(self, progress: bool | Callable[[int, int], None], total: int) -> None:
        self.total = total
        self.done = 0
        self.callback = progress if callable(progress) else None
        self.bar = None
        self.task = None
        self.t0 = time.perf_counter()
        if progress is True:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(TextColumn("phantom"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("{task.description}"),
                                console=Console(stderr=True))
            self.task = self.bar.add_task("", total=total)

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=text)

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1)
        if self.callback is not None:
            self.callback(self.done, self.total)
