"""MR signal equations and tissue relaxation parameters (pure numpy).

All functions broadcast over numpy arrays (or take scalars); times are in **seconds**, flip
angles in **degrees**, proton density ``pd`` is relative (CSF = 1). Signals are magnitudes in
units of the fully relaxed magnetisation of pure water, so they lie in [0, 1].

Equations (ideal spoiling, ideal refocusing, instantaneous pulses):

* spin echo / turbo spin echo (:func:`spin_echo`)::

      S = PD · (1 − exp(−TR/T1)) · exp(−TE/T2)

* inversion recovery / FLAIR (:func:`inversion_recovery`)::

      S = PD · |1 − 2·exp(−TI/T1) + exp(−TR/T1)| · exp(−TE/T2)

  CSF is nulled at ``TI = T1 · ln(2 / (1 + exp(−TR/T1)))`` (:func:`null_inversion_time`),
  which tends to ``T1 · ln 2`` at long TR.
* spoiled gradient echo / FLASH / SPGR / T1-FFE (:func:`spoiled_gre`, Ernst equation)::

      S = PD · sin α · (1 − E1) / (1 − cos α · E1) · exp(−TE/T2*),   E1 = exp(−TR/T1)

* MPRAGE (:func:`mprage`): one inversion per cycle of length ``TR``, a train of ``n`` small
  flip-angle (α) spoiled-GRE readouts ``τ`` apart centred on ``TI`` (the centre of k-space),
  free recovery for the rest of the cycle. The longitudinal magnetisation is followed
  piece-wise (free recovery, then the readout train relaxing towards its own steady state
  ``M* = (1 − Eτ)/(1 − cos α·Eτ)`` at rate ``cos α·Eτ`` per pulse — the "effective flip"
  saturation — then free recovery) and the cycle is solved for its steady state in closed
  form. The signal is ``PD · sin α · |Mz(centre)| · exp(−TE/T2*)``.

Voxel signal with partial volume is the sum over tissue classes of
``probability × class signal`` (done in :mod:`rtfsyn.phantom.cohort`).

Tissue parameters (:data:`TISSUE_PARAMS`) are rounded values chosen inside the ranges
reported for adult brain in vivo:

* GM / WM T1 and T2: Wansapura et al., JMRI 9:531 (1999) (3 T: T1 1331 / 832 ms, T2
  110 / 80 ms); Stanisz et al., MRM 54:507 (2005) (T2 at 1.5 T: 95 / 72 ms; their T1 are
  longer); the review of Bojorquez et al., MRI 35:69 (2017). Used here: 1.5 T T1
  1100 / 700 ms, T2 95 / 72 ms; 3 T T1 1350 / 850 ms, T2 100 / 75 ms.
* GM / WM T2*: about 66 / 53 ms at 3 T (Wansapura 1999) and longer at 1.5 T.
* CSF: T1 ≈ 4.0–4.3 s, T2 ≈ 1.5–2 s (Lu et al., JMRI 2005, routine brain sequences at
  3 T; Bojorquez 2017). The BrainWeb CSF T2 (329 ms) is partial-volume limited.
* Proton density relative to CSF: GM 0.82, WM 0.71 (BrainWeb, Kwan et al., IEEE TMI
  18:1085 (1999): 0.86 / 0.77; Tofts, "Quantitative MRI of the brain" (2003): ≈ 0.8 / 0.7).
* Lesion (vasogenic oedema / non-enhancing tumour): long T1 and T2 and high water content,
  T1 ≈ 2× WM, T2 ≈ 2.3–2.5× WM, PD 0.9 — a generic pathological value, not one study's.

These are a simulator's nominal values, not a quantitative reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FAMILIES",
    "TISSUES",
    "TISSUE_PARAMS",
    "TissueParams",
    "inversion_recovery",
    "mprage",
    "null_inversion_time",
    "sequence_signal",
    "spin_echo",
    "spoiled_gre",
    "tissue_params",
]

#: Tissue classes in label order (label = index + 1; 0 is background).
TISSUES: tuple[str, ...] = ("CSF", "GM", "WM", "lesion")
#: Sequence families simulated (names as in :class:`rtfsyn.metadata.Sequence`).
FAMILIES: tuple[str, ...] = ("SE", "TSE", "IR", "GRE", "MPRAGE")

ArrayLike = float | np.ndarray


@dataclass(frozen=True)
class TissueParams:
    """Relaxation times (s) and relative proton density of one tissue class."""

    t1: float
    t2: float
    t2s: float
    pd: float

    def scaled(self, t1: float = 1.0, t2: float = 1.0, t2s: float = 1.0,
               pd: float = 1.0) -> TissueParams:
        """A copy with each parameter multiplied by a factor (subject jitter)."""
        t2_new = self.t2 * t2
        # T2* can never exceed T2
        return TissueParams(self.t1 * t1, t2_new, min(self.t2s * t2s, t2_new), self.pd * pd)


# Nominal values per field strength (T); see the module docstring for the sources.
TISSUE_PARAMS: dict[float, dict[str, TissueParams]] = {
    1.5: {
        "CSF": TissueParams(t1=4.000, t2=1.800, t2s=0.400, pd=1.00),
        "GM": TissueParams(t1=1.100, t2=0.095, t2s=0.084, pd=0.82),
        "WM": TissueParams(t1=0.700, t2=0.072, t2s=0.066, pd=0.71),
        "lesion": TissueParams(t1=1.400, t2=0.180, t2s=0.120, pd=0.90),
    },
    3.0: {
        "CSF": TissueParams(t1=4.300, t2=1.500, t2s=0.250, pd=1.00),
        "GM": TissueParams(t1=1.350, t2=0.100, t2s=0.066, pd=0.82),
        "WM": TissueParams(t1=0.850, t2=0.075, t2s=0.053, pd=0.71),
        "lesion": TissueParams(t1=1.700, t2=0.170, t2s=0.100, pd=0.90),
    },
}


def tissue_params(field_strength: float) -> dict[str, TissueParams]:
    """Nominal tissue parameters at a field strength (linear in B0 between 1.5 and 3 T,
    the nearest table outside)."""
    lo, hi = TISSUE_PARAMS[1.5], TISSUE_PARAMS[3.0]
    w = min(max((float(field_strength) - 1.5) / 1.5, 0.0), 1.0)
    out = {}
    for name in TISSUES:
        a, b = lo[name], hi[name]
        out[name] = TissueParams(*((1 - w) * x + w * y for x, y in
                                   zip((a.t1, a.t2, a.t2s, a.pd), (b.t1, b.t2, b.t2s, b.pd),
                                       strict=True)))
    return out


# --------------------------------------------------------------------------- equations
def spin_echo(pd: ArrayLike, t1: ArrayLike, t2: ArrayLike, tr: float, te: float) -> np.ndarray:
    """Spin echo / TSE: ``PD · (1 − exp(−TR/T1)) · exp(−TE/T2)``."""
    pd, t1, t2 = (np.asarray(x, dtype=np.float64) for x in (pd, t1, t2))
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def inversion_recovery(pd: ArrayLike, t1: ArrayLike, t2: ArrayLike, tr: float, te: float,
                       ti: float) -> np.ndarray:
    """Inversion recovery (FLAIR, magnitude): ``PD·|1 − 2e^(−TI/T1) + e^(−TR/T1)|·e^(−TE/T2)``."""
    pd, t1, t2 = (np.asarray(x, dtype=np.float64) for x in (pd, t1, t2))
    mz = 1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)
    return pd * np.abs(mz) * np.exp(-te / t2)


def null_inversion_time(t1: float, tr: float | None = None) -> float:
    """Inversion time that nulls a tissue of longitudinal relaxation ``t1`` (s).

    ``T1 · ln(2 / (1 + exp(−TR/T1)))``; ``T1 · ln 2`` when ``tr`` is None (infinite TR).
    """
    recovery = 0.0 if tr is None else math.exp(-tr / t1)
    return t1 * math.log(2.0 / (1.0 + recovery))


def spoiled_gre(pd: ArrayLike, t1: ArrayLike, t2s: ArrayLike, tr: float, te: float,
                flip_angle: float) -> np.ndarray:
    """Spoiled gradient echo (Ernst): ``PD·sinα·(1−E1)/(1−cosα·E1)·e^(−TE/T2*)``."""
    pd, t1, t2s = (np.asarray(x, dtype=np.float64) for x in (pd, t1, t2s))
    a = math.radians(flip_angle)
    e1 = np.exp(-tr / t1)
    return pd * math.sin(a) * (1.0 - e1) / (1.0 - math.cos(a) * e1) * np.exp(-te / t2s)


def mprage(pd: ArrayLike, t1: ArrayLike, t2s: ArrayLike, tr: float, te: float, ti: float,
           flip_angle: float, echo_spacing: float = 0.007, n_readout: int = 160,
           inversion_efficiency: float = 0.96) -> np.ndarray:
    """MPRAGE steady-state signal at the centre of k-space (see the module docstring).

    Args:
        tr: inversion-to-inversion cycle time (s) (BIDS ``RepetitionTimePreparation``).
        ti: inversion to the centre of the readout train (s).
        flip_angle: readout flip angle α (deg).
        echo_spacing: readout pulse spacing τ (s) (BIDS ``RepetitionTimeExcitation``).
        n_readout: readout pulses per inversion.
        inversion_efficiency: fraction of Mz inverted (1 = ideal).
    """
    pd, t1, t2s = (np.asarray(x, dtype=np.float64) for x in (pd, t1, t2s))
    half = 0.5 * n_readout * echo_spacing
    td1 = ti - half
    td2 = tr - ti - half
    if td1 < 0 or td2 < 0:
        raise ValueError(
            f"MPRAGE timing impossible: TI={ti} s and TR={tr} s leave no room for "
            f"{n_readout} readouts {echo_spacing} s apart"
        )
    a = math.radians(flip_angle)
    e_tau = np.exp(-echo_spacing / t1)
    c = math.cos(a) * e_tau  # decay factor per readout pulse ("effective flip")
    m_star = (1.0 - e_tau) / (1.0 - math.cos(a) * e_tau)  # steady state of the train
    e1 = np.exp(-td1 / t1)
    e2 = np.exp(-td2 / t1)
    cn = c ** n_readout
    eta = inversion_efficiency
    # Mz just before the inversion, solved for the cycle's steady state (M0 = 1)
    m_a = ((1.0 - e2) + e2 * (m_star * (1.0 - cn) + (1.0 - e1) * cn)) / (1.0 + eta * e1 * e2 * cn)
    m_b = 1.0 - (1.0 + eta * m_a) * e1  # start of the readout train
    m_centre = m_star + (m_b - m_star) * c ** (n_readout // 2)
    return pd * math.sin(a) * np.abs(m_centre) * np.exp(-te / t2s)


def sequence_signal(family: str, tissue: TissueParams, *, tr: float, te: float,
                    ti: float | None = None, flip_angle: float = 90.0,
                    echo_spacing: float | None = None, n_readout: int | None = None) -> float:
    """Signal of one tissue for a sequence family (``SE``, ``TSE``, ``IR``, ``GRE``, ``MPRAGE``)."""
    if family in ("SE", "TSE"):
        value = spin_echo(tissue.pd, tissue.t1, tissue.t2, tr, te)
    elif family == "IR":
        if ti is None:
            raise ValueError("an IR sequence needs an inversion time")
        value = inversion_recovery(tissue.pd, tissue.t1, tissue.t2, tr, te, ti)
    elif family == "GRE":
        value = spoiled_gre(tissue.pd, tissue.t1, tissue.t2s, tr, te, flip_angle)
    elif family == "MPRAGE":
        if ti is None:
            raise ValueError("an MPRAGE sequence needs an inversion time")
        value = mprage(tissue.pd, tissue.t1, tissue.t2s, tr, te, ti, flip_angle,
                       echo_spacing=echo_spacing or 0.007, n_readout=n_readout or 160)
    else:
        raise ValueError(f"unknown sequence family {family!r}: use one of {', '.join(FAMILIES)}")
    return float(value)
