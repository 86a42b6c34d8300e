"""Participant-level train / validation / test splits and the keys that identify a case.

* **Participants, not cases, are split**: every session, time point or study of one person
  (:attr:`rtfsyn.data.cases.Case.participant_id`) falls on the same side.
* Three splits: **train** (weights), **validation** (early stopping, best checkpoint, recipe
  choice) and **test** (touched by nothing but the final evaluation), plus the cases of a
  held-out site. All are stored in the checkpoint (``train_cases``, ``val_cases``,
  ``test_cases``, ``holdout_cases``).
* A case's **exclusion key** is ``<participant>@<fingerprint>``: the participant id and a
  hash of the voxel data of its first contrast (:func:`case_fingerprint`). It survives a copy
  or rename of the dataset folder (the bytes do not change) and does not collide across
  datasets (different images give different hashes). Checkpoints written before this
  module stored ``<folder name>/<subject>`` (:func:`legacy_case_key`); those keys are still
  recognised.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rtfsyn.data.cases import Case
from rtfsyn.errors import DatasetError

__all__ = [
    "SPLIT_KEYS",
    "Split",
    "SplitIndex",
    "case_fingerprint",
    "exclusion_key",
    "legacy_case_key",
    "split_cases",
    "split_participants",
]

#: checkpoint ``info`` entries listing the cases of each split
SPLIT_KEYS = {"train": "train_cases", "validation": "val_cases", "test": "test_cases",
              "holdout": "holdout_cases"}


# --------------------------------------------------------------------------- identity
@lru_cache(maxsize=4096)
def _file_fingerprint(path: str, mtime_ns: int, size: int) -> str:
    import nibabel as nib

    img = nib.load(path)
    data = np.ascontiguousarray(np.asanyarray(img.dataobj))
    h = hashlib.sha256()
    h.update(f"{data.dtype.str}{data.shape}".encode())
    h.update(data.tobytes())
    return h.hexdigest()[:20]


def case_fingerprint(case: Case) -> str:
    """SHA-256 (20 hex digits) of the voxel data of the case's first contrast.

    Content only: the same image under another file or folder name has the same fingerprint.
    """
    if not case.contrasts:
        raise DatasetError(f"case {case.subject} has no contrast image to fingerprint")
    path = Path(case.images[case.contrasts[0]]).resolve()
    st = path.stat()
    return _file_fingerprint(str(path), st.st_mtime_ns, st.st_size)


def exclusion_key(case: Case, participant: str | None = None) -> str:
    """``<participant>@<fingerprint>``: identifies a case across copies and renames."""
    return f"{participant or case.participant_id}@{case_fingerprint(case)}"


def legacy_case_key(folder: str | Path, subject: str) -> str:
    """The key of checkpoints before participant splits: dataset folder name + subject id."""
    return f"{Path(folder).resolve().name}/{subject}"


# --------------------------------------------------------------------------- splitting
@dataclass
class Split:
    """Cases of each split (participant-disjoint)."""

    train: list[Case]
    val: list[Case]
    test: list[Case]
    holdout: list[Case] = field(default_factory=list)

    def participants(self, part: str) -> list[str]:
        """Sorted participant ids of ``train``, ``val``, ``test`` or ``holdout``."""
        return sorted({c.participant_id for c in getattr(self, part)})


def split_participants(
    cases: Sequence[Case],
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    holdout_site: str | None = None,
    seed: int = 0,
) -> Split:
    """Split cases by participant into train / validation / test (+ held-out site).

    Cases of ``holdout_site`` go to ``holdout`` only. The other participants are split per
    site (stratified): ``val_fraction`` of each site's participants to validation (at least
    one when the site has ≥ 3 and the fraction is > 0), then ``test_fraction`` to test (at
    least one when the site has ≥ 4), the rest to training; a participant's site is that of
    its first case. Deterministic for a seed; validation is drawn exactly as the two-way split
    of earlier versions drew it.
    """
    holdout = [c for c in cases if holdout_site is not None and c.site == holdout_site]
    if holdout_site is not None and not holdout:
        sites = sorted({c.site for c in cases if c.site})
        raise DatasetError(
            f"--holdout-site {holdout_site!r} matches no case; sites are: "
            f"{', '.join(sites) or 'none'}"
        )
    held = {id(c) for c in holdout}
    rest = [c for c in cases if id(c) not in held]
    members: dict[str, list[Case]] = {}
    for c in rest:
        members.setdefault(c.participant_id, []).append(c)
    straddle = {c.participant_id for c in holdout} & set(members)
    if straddle:
        raise DatasetError(
            f"participant {sorted(straddle)[0]!r} has cases at the held-out site and at "
            "another site: fix the site column so that one person has one site"
        )
    by_site: dict[str, list[str]] = {}
    for pid in members:  # first-seen order, as the cases were given
        by_site.setdefault(members[pid][0].site or "", []).append(pid)
    rng = np.random.default_rng(seed)
    role: dict[str, str] = {}
    for site in sorted(by_site):
        pids = by_site[site]
        n = len(pids)
        n_val = round(val_fraction * n)
        if val_fraction > 0 and n_val == 0 and n >= 3:
            n_val = 1
        n_test = round(test_fraction * n)
        if test_fraction > 0 and n_test == 0 and n >= 4:
            n_test = 1
        n_test = max(0, min(n_test, n - n_val - 1))
        order = rng.permutation(n)
        for j, k in enumerate(order):
            role[pids[k]] = "val" if j < n_val else "test" if j < n_val + n_test else "train"
    split = Split([], [], [], holdout)
    for c in rest:
        getattr(split, role[c.participant_id]).append(c)
    if not split.train:
        raise DatasetError(
            "no training cases left after the validation / test / held-out split: add data "
            "or lower val_fraction / test_fraction"
        )
    return split


def split_cases(
    cases: Sequence[Case], val_fraction: float = 0.2, holdout_site: str | None = None,
    seed: int = 0, test_fraction: float = 0.0,
) -> tuple[list[Case], list[Case], list[Case]]:
    """``(train, validation, held-out-site)`` by participant; see :func:`split_participants`.

    The two-way form of earlier versions (``test_fraction`` 0 by default); test cases, if
    asked for, are in neither list.
    """
    s = split_participants(cases, val_fraction, test_fraction, holdout_site, seed)
    return s.train, s.val, s.holdout


# --------------------------------------------------------------------------- checkpoints
@dataclass
class SplitIndex:
    """The split entries of one or more checkpoints, to tell each case's role.

    Built with :meth:`from_infos` from checkpoint ``info`` dicts. New-style keys
    (``participant@fingerprint``) match by fingerprint; legacy keys
    (``folder/subject``) by :func:`legacy_case_key`.
    """

    fingerprints: dict[str, str] = field(default_factory=dict)  # fingerprint → role
    legacy: dict[str, str] = field(default_factory=dict)  # legacy key → role

    _RANK: ClassVar[dict[str, int]] = {"training": 3, "validation": 2, "test": 1, "holdout": 1}

    @classmethod
    def from_infos(cls, infos: Iterable[dict[str, Any] | None]) -> SplitIndex:
        index = cls()
        for info in infos:
            for split, entry in SPLIT_KEYS.items():
                role = "training" if split == "train" else split
                for key in (info or {}).get(entry, []) or []:
                    key = str(key)
                    if "@" in key:
                        index._add(index.fingerprints, key.rsplit("@", 1)[1], role)
                    else:
                        index._add(index.legacy, key, role)
        return index

    def _add(self, table: dict[str, str], key: str, role: str) -> None:
        if self._RANK[role] > self._RANK.get(table.get(key, ""), 0):
            table[key] = role

    @property
    def empty(self) -> bool:
        return not self.fingerprints and not self.legacy

    def role(self, case: Case, folder: str | Path) -> str | None:
        """``training``, ``validation``, ``test``, ``holdout`` or None (in no checkpoint)."""
        roles = []
        legacy = self.legacy.get(legacy_case_key(folder, case.subject))
        if legacy:
            roles.append(legacy)
        if self.fingerprints and case.contrasts:
            fp = self.fingerprints.get(case_fingerprint(case))
            if fp:
                roles.append(fp)
        return max(roles, key=lambda r: self._RANK[r]) if roles else None

    def roles(self, cases: Sequence[Case], folder: str | Path) -> dict[str, str | None]:
        """Role of every case of one dataset folder, spread over participants: a case whose
        participant has a training (validation) case is itself a training (validation)
        case, even if its own session was never in a checkpoint."""
        own = {c.subject: self.role(c, folder) for c in cases}
        best: dict[str, str | None] = {}
        for c in cases:
            r = own[c.subject]
            cur = best.get(c.participant_id)
            if r is not None and (cur is None or self._RANK[r] > self._RANK[cur]):
                best[c.participant_id] = r
        out: dict[str, str | None] = {}
        for c in cases:
            b = best.get(c.participant_id)
            out[c.subject] = b if b in ("training", "validation") else own[c.subject]
        return out
