"""Typical protocols and continuous protocol ranges per contrast (for the simulators and the
physics prior).

* :func:`protocol_from_metadata` – a :class:`~rtfsyn.phantom.scanner.Protocol` from a
  :class:`~rtfsyn.metadata.Metadata`, missing fields filled with typical values
  (:data:`TYPICAL`): the sequence family from the contrast and the parameters present
  (a T1w with an inversion time is an MPRAGE, one with TR < 100 ms a spoiled GRE, one with
  TR 0.3–1 s and no flip angle a spin echo), a FLAIR without TI nulls CSF at its TR.
* :func:`sample_protocol` – a protocol drawn from realistic continuous ranges per contrast and
  family (:data:`RANGES`), so that simulated metadata covers a continuum rather than a few
  site codes.
* :func:`jitter_protocol` – a site's nominal protocol with every timing / angle multiplied by
  a factor drawn around 1 (phantom sites).

The ranges are typical clinical and research brain protocols at 1.5 and 3 T (vendor
application guides; e.g. the ADNI MPRAGE TR 2.3 s / TI 0.9 s / FA 9°, clinical T2 TSE TR
3–7 s / TE 80–120 ms, 2-D FLAIR TR 6–11 s with TI at the CSF null point ≈ 2.0–2.8 s). They
are a simulator's sampling ranges, not a standard. T2w TE (60–130 ms) and FLAIR TI
(0.77–1.12 × the CSF null point: 1.6–3.0 s at 3 T, 2.0–2.8 s at TR 10 s) reach a little past
the typical values on purpose: a model learns how TE and TI move CSF only from training pairs
that show it. With the ranges before Nov 2026 (TE 70–125 ms, TI within 8 % of the null point)
the simulated FLAIRs' pure-tissue CSF / WM stayed below 0.47 (median 0.16), and the bundled
model's FLAIR did not respond to a requested TI (the TI sweep of ``benchmarks/real_scans.py``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from rtfsyn.metadata import Metadata
from rtfsyn.phantom.physics import null_inversion_time, tissue_params
from rtfsyn.phantom.scanner import Protocol

__all__ = [
    "DEFAULT_FIELD",
    "FIELDS",
    "RANGES",
    "TYPICAL",
    "VENDORS",
    "jitter_protocol",
    "mprage_fit",
    "protocol_from_metadata",
    "sample_protocol",
]

#: Field strength (T) assumed when the metadata gives none.
DEFAULT_FIELD = 3.0
#: Field strengths drawn by the simulator and their probabilities.
FIELDS: tuple[tuple[float, float], ...] = ((1.5, 0.4), (3.0, 0.6))
#: Vendors drawn by the simulator (name, model).
VENDORS: tuple[tuple[str, str], ...] = (
    ("Siemens", "Prisma"), ("Siemens", "Avanto"), ("GE", "Discovery MR750"),
    ("GE", "Signa HDxt"), ("Philips", "Achieva"), ("Philips", "Ingenia"),
)

#: Typical protocol per contrast (times in s, angles in deg); a FLAIR's TI is set to the
#: CSF null point of the field and TR when not given.
TYPICAL: dict[str, Protocol] = {
    "T1w": Protocol("T1w", "MPRAGE", tr=2.3, te=0.003, ti=0.9, flip_angle=9.0,
                    echo_spacing=0.007, n_readout=160),
    "T1Gd": Protocol("T1Gd", "MPRAGE", tr=2.3, te=0.003, ti=0.9, flip_angle=9.0,
                     echo_spacing=0.007, n_readout=160),
    "T2w": Protocol("T2w", "TSE", tr=5.0, te=0.090),
    "FLAIR": Protocol("FLAIR", "IR", tr=9.0, te=0.090, ti=None),
    "PDw": Protocol("PDw", "TSE", tr=4.0, te=0.015),
}

#: Continuous sampling ranges: contrast → [(family, probability, {parameter: (lo, hi)})].
#: Times in s, angles in deg, thickness in mm. ``ti_factor`` (FLAIR) multiplies the CSF
#: null point at the drawn TR.
RANGES: dict[str, list[tuple[str, float, dict[str, tuple[float, float]]]]] = {
    "T1w": [
        ("MPRAGE", 0.5, {"tr": (1.8, 2.7), "te": (0.0022, 0.0045), "ti": (0.75, 1.15),
                         "flip_angle": (7.0, 12.0), "echo_spacing": (0.006, 0.0085),
                         "slice_thickness": (0.8, 1.3)}),
        ("GRE", 0.3, {"tr": (0.006, 0.030), "te": (0.002, 0.006), "flip_angle": (8.0, 35.0),
                      "slice_thickness": (0.9, 1.5)}),
        ("SE", 0.2, {"tr": (0.40, 0.75), "te": (0.008, 0.020),
                     "slice_thickness": (3.0, 6.0)}),
    ],
    "T2w": [
        ("TSE", 1.0, {"tr": (3.0, 7.0), "te": (0.060, 0.130), "slice_thickness": (1.0, 5.0)}),
    ],
    "FLAIR": [
        ("IR", 1.0, {"tr": (6.0, 11.0), "te": (0.080, 0.140), "ti_factor": (0.77, 1.12),
                     "slice_thickness": (1.0, 5.0)}),
    ],
    "PDw": [
        ("TSE", 1.0, {"tr": (2.5, 6.0), "te": (0.008, 0.030), "slice_thickness": (1.0, 5.0)}),
    ],
}
RANGES["T1Gd"] = RANGES["T1w"]


def _field(meta: Metadata | None) -> float:
    return DEFAULT_FIELD if meta is None or meta.field_strength is None else \
        float(meta.field_strength)


def mprage_fit(tr: float, ti: float, echo_spacing: float = 0.007,
               n_readout: int = 160) -> int:
    """The largest readout count ≤ ``n_readout`` whose train fits around TI inside TR."""
    room = 2.0 * min(ti, tr - ti) / max(echo_spacing, 1e-4)
    return int(max(2, min(n_readout, math.floor(room) - 1)))


def _family_from_metadata(meta: Metadata) -> str:
    contrast = meta.contrast.value
    if meta.sequence is not None:
        fam = meta.sequence.value
        if contrast == "FLAIR" and fam in ("SE", "TSE"):
            return "IR"  # a "TSE" FLAIR sidecar: the inversion is what matters
        return fam
    if contrast in ("T1w", "T1Gd"):
        tr = meta.repetition_time
        if meta.inversion_time is not None:
            return "MPRAGE"
        if tr is not None and tr < 0.1:
            return "GRE"
        if tr is not None and meta.flip_angle is None:
            return "SE"
        if tr is not None and meta.flip_angle is not None and meta.flip_angle < 40:
            return "GRE"
        if tr is not None:
            return "SE"
        return TYPICAL[contrast].family
    return TYPICAL[contrast].family


def protocol_from_metadata(meta: Metadata) -> Protocol:
    """The protocol a metadata record describes, typical values where fields are missing."""
    contrast = meta.contrast.value
    fam = _family_from_metadata(meta)
    base = TYPICAL[contrast]
    if fam != base.family:  # typical values of the family actually used
        base = {
            "MPRAGE": TYPICAL["T1w"],
            "GRE": Protocol(contrast, "GRE", tr=0.020, te=0.004, flip_angle=20.0),
            "SE": Protocol(contrast, "SE", tr=0.55, te=0.012),
            "TSE": TYPICAL["T2w"] if contrast != "PDw" else TYPICAL["PDw"],
            "IR": TYPICAL["FLAIR"],
        }[fam]
    tr = meta.repetition_time if meta.repetition_time is not None else base.tr
    te = meta.echo_time if meta.echo_time is not None else base.te
    ti = meta.inversion_time if meta.inversion_time is not None else base.ti
    fa = meta.flip_angle if meta.flip_angle is not None else base.flip_angle
    if fam in ("SE", "TSE", "IR") and meta.flip_angle is None:
        fa = 90.0
    if fam == "IR" and ti is None:
        ti = null_inversion_time(tissue_params(_field(meta))["CSF"].t1, tr)
    if fam == "MPRAGE":
        if ti is None or ti >= tr:
            ti = min(0.9, 0.45 * tr)
        spacing = base.echo_spacing or 0.007
        return Protocol(contrast, fam, tr=tr, te=te, ti=ti, flip_angle=fa,
                        echo_spacing=spacing,
                        n_readout=mprage_fit(tr, ti, spacing, base.n_readout or 160))
    return Protocol(contrast, fam, tr=tr, te=te, ti=ti if fam == "IR" else None,
                    flip_angle=fa)


def sample_protocol(contrast: str, rng: np.random.Generator, field_strength: float = 3.0,
                    family: str | None = None) -> Protocol:
    """A protocol for ``contrast`` drawn from :data:`RANGES` (family drawn unless given)."""
    options = RANGES[contrast]
    if family is None:
        probs = np.array([p for _, p, _ in options], float)
        fam, _, ranges = options[int(rng.choice(len(options), p=probs / probs.sum()))]
    else:
        matches = [o for o in options if o[0] == family]
        if not matches:
            raise ValueError(f"no range for {contrast} {family}")
        fam, _, ranges = matches[0]

    def draw(name: str) -> float:
        lo, hi = ranges[name]
        return float(rng.uniform(lo, hi))

    tr = draw("tr")
    te = draw("te")
    thick = round(draw("slice_thickness"), 2)
    if fam == "MPRAGE":
        ti = min(draw("ti"), 0.6 * tr)
        spacing = round(draw("echo_spacing"), 5)
        return Protocol(contrast, fam, tr=round(tr, 4), te=round(te, 5), ti=round(ti, 4),
                        flip_angle=round(draw("flip_angle"), 2), slice_thickness=thick,
                        echo_spacing=spacing, n_readout=mprage_fit(tr, ti, spacing, 176))
    if fam == "GRE":
        return Protocol(contrast, fam, tr=round(tr, 5), te=round(te, 5),
                        flip_angle=round(draw("flip_angle"), 2), slice_thickness=thick)
    if fam == "IR":
        t1_csf = tissue_params(field_strength)["CSF"].t1
        ti = null_inversion_time(t1_csf, tr) * draw("ti_factor")
        return Protocol(contrast, fam, tr=round(tr, 3), te=round(te, 4), ti=round(ti, 4),
                        slice_thickness=thick)
    return Protocol(contrast, fam, tr=round(tr, 3), te=round(te, 4), slice_thickness=thick)


def jitter_protocol(protocol: Protocol, rng: np.random.Generator,
                    relative: float = 0.1) -> Protocol:
    """``protocol`` with TR, TE, TI and FA each multiplied by a factor in [1 − r, 1 + r].

    Spin-echo families keep their 90° excitation; an MPRAGE's TI stays below 0.6 TR and its
    readout train is shortened if it no longer fits.
    """
    if relative <= 0:
        return protocol
    f = rng.uniform(1.0 - relative, 1.0 + relative, 4)
    tr = protocol.tr * float(f[0])
    te = protocol.te * float(f[1])
    ti = None if protocol.ti is None else protocol.ti * float(f[2])
    fa = protocol.flip_angle if protocol.family in ("SE", "TSE", "IR") else \
        min(protocol.flip_angle * float(f[3]), 90.0)
    changes: dict[str, object] = {"tr": round(tr, 5), "te": round(te, 5),
                                  "flip_angle": round(fa, 3)}
    if ti is not None:
        if protocol.family == "MPRAGE":
            ti = min(ti, 0.6 * tr)
            changes["n_readout"] = mprage_fit(tr, ti, protocol.echo_spacing or 0.007,
                                              protocol.n_readout or 160)
        changes["ti"] = round(ti, 4)
    return dataclasses.replace(protocol, **changes)
