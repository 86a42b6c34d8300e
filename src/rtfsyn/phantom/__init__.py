"""Physics-based multi-site MRI phantom cohort (the embedded default dataset).

In the spirit of BrainWeb: ICBM 2009a tissue maps (bundled with nilearn, no download), a
random smooth deformation and tissue-parameter jitter per subject, optional white-matter
lesions, MR signal equations per contrast (:mod:`rtfsyn.phantom.physics`) and per-site
scanner effects — field strength, vendor, protocol, bias field, Rician noise, slice thickness
and intensity scale (:mod:`rtfsyn.phantom.scanner`). The cohort is written as a BIDS dataset
(``sub-XX/anat/sub-XX_{T1w,T2w,FLAIR,PDw}.nii.gz`` + JSON sidecars, brain mask, tissue
labels), so it goes through exactly the code path that real data takes.

>>> from rtfsyn.phantom import make_cohort
>>> make_cohort("data/phantom", n_subjects=12, n_sites=4, spacing=2.0, seed=0)  # doctest: +SKIP

It is a simulator: results obtained on it are labelled as such.
"""

from __future__ import annotations

from rtfsyn.phantom.cohort import (
    LABELS,
    SimulatedSubject,
    SubjectParams,
    make_cohort,
    sample_subject,
    simulate_noise_free,
    simulate_subject,
    subject_id,
)
from rtfsyn.phantom.scanner import CONTRAST_ORDER, DEFAULT_SITES, Protocol, Site, get_sites

__all__ = [
    "CONTRAST_ORDER",
    "DEFAULT_SITES",
    "LABELS",
    "Protocol",
    "SimulatedSubject",
    "Site",
    "SubjectParams",
    "get_sites",
    "make_cohort",
    "sample_subject",
    "simulate_noise_free",
    "simulate_subject",
    "subject_id",
    "write_preview",
]


def __getattr__(name: str):
    if name == "write_preview":  # matplotlib is imported only when a preview is wanted
        from rtfsyn.phantom.preview import write_preview

        return write_preview
    raise AttributeError(f"module 'rtfsyn.phantom' has no attribute {name!r}")
