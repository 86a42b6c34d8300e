"""Training data: subjects loaded into memory and a deterministic many-to-many patch dataset.

Every sample is a pure function of ``(seed, epoch, index)``: :meth:`PatchDataset.sample_spec`
draws a :class:`PatchSpec` (subject, source/target contrasts, patch corner) from a generator
seeded with those numbers, and :meth:`PatchDataset.extract` cuts the patches. So a
``DistributedSampler`` can split indices across ranks, and a resumed run sees exactly the
samples an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from torch.utils.data import Dataset

from rtfsyn import io
from rtfsyn.data.cases import Case
from rtfsyn.data.splits import split_cases  # re-exported: it lived here before
from rtfsyn.errors import DatasetError
from rtfsyn.metadata import Metadata
from rtfsyn.preprocess import bounding_box, brain_mask, robust_normalize

__all__ = ["PatchDataset", "PatchSpec", "Subject", "load_subject", "load_subjects",
           "split_cases"]


@dataclass
class Subject:
    """One case in memory: normalised canonical volumes cropped to the brain, at one spacing."""

    case: Case
    volumes: dict[str, np.ndarray]  # contrast → (D, H, W) float32 in [0, 1]
    mask: np.ndarray  # (D, H, W) bool
    spacing: tuple[float, float, float]
    labels: np.ndarray | None = None

    @property
    def contrasts(self) -> list[str]:
        return [c for c in self.case.contrasts if c in self.volumes]

    def metadata(self, contrast: str) -> Metadata:
        """The contrast's metadata with the voxel size of the in-memory volume."""
        return self.case.metadata[contrast].with_updates(voxel_size=self.spacing)


def load_subject(case: Case, spacing: float | None = None, margin: int = 4) -> Subject:
    """Load all contrasts of a case: canonical RAS, resampled, masked, normalised, cropped.

    The brain mask is the case's mask file if there is one, else the intersection of the
    non-zero regions of all contrasts (so every contrast has signal where the loss is taken).
    """
    images = {}
    ref = None
    for contrast in case.contrasts:
        img = io.to_canonical(io.load_nifti(case.images[contrast]))
        if spacing is not None:
            img = io.resample_to_spacing(img, spacing)
        if ref is None:
            ref = img
        elif not io.same_grid(img, ref, atol=1e-2):
            img = io.resample_to_reference(img, ref)
        images[contrast] = np.asarray(img.dataobj, dtype=np.float32)
    if ref is None:
        raise DatasetError(f"case {case.subject} has no contrast images")
    if case.mask is not None:
        mimg = io.to_canonical(io.load_nifti(case.mask))
        mask = io.resample_to_reference(mimg, ref, order=0).get_fdata() > 0.5
    else:
        mask = np.logical_and.reduce([brain_mask(v) for v in images.values()])
    if mask.sum() < 27:
        raise DatasetError(f"case {case.subject}: brain mask is (nearly) empty")
    labels = None
    if case.labels is not None:
        limg = io.to_canonical(io.load_nifti(case.labels))
        labels = io.resample_to_reference(limg, ref, order=0).get_fdata().astype(np.uint8)
    box = bounding_box(mask, margin=margin)
    volumes = {c: robust_normalize(v, mask)[0][box] for c, v in images.items()}
    return Subject(case=case, volumes=volumes, mask=mask[box],
                   spacing=io.canonical_voxel_size(ref),
                   labels=None if labels is None else labels[box])


def load_subjects(
    cases: Sequence[Case], spacing: float | None = None, progress: bool = True
) -> list[Subject]:
    """Load several cases (with a progress bar); cases with < 2 contrasts are skipped."""
    usable = [c for c in cases if len(c.contrasts) >= 2]
    out = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("loading subjects", total=len(usable))
        for case in usable:
            out.append(load_subject(case, spacing))
            bar.advance(task)
    return out


@dataclass(frozen=True)
class PatchSpec:
    """Everything random about one training sample."""

    subject: int
    source: str
    target: str
    corner: tuple[int, int, int]


class PatchDataset(Dataset):
    """Many-to-many (source, target) patches inside the brain.

    Args:
        subjects: loaded subjects (each with ≥ 2 contrasts).
        patch_size: cubic patch edge in voxels.
        samples_per_epoch: virtual epoch length.
        seed: base seed; sample ``i`` of epoch ``e`` is drawn from ``default_rng([seed, e, i])``.
        pairs: optional allowed (source, target) pairs; default every ordered pair present.
    """

    def __init__(
        self,
        subjects: Sequence[Subject],
        patch_size: int = 32,
        samples_per_epoch: int = 1024,
        seed: int = 0,
        pairs: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        if not subjects:
            raise DatasetError("no training subjects with at least two contrasts")
        if patch_size < 8:
            raise ValueError(f"patch_size must be >= 8, got {patch_size}")
        self.subjects = list(subjects)
        self.patch_size = int(patch_size)
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)
        self.epoch = 0
        allowed = None if pairs is None else {tuple(p) for p in pairs}
        self._pairs = []
        for s in self.subjects:
            ps = [(a, b) for a in s.contrasts for b in s.contrasts if a != b]
            if allowed is not None:
                ps = [p for p in ps if p in allowed]
            self._pairs.append(ps)
        self._usable = [i for i, ps in enumerate(self._pairs) if ps]
        if not self._usable:
            raise DatasetError(f"no subject has any of the requested pairs {sorted(allowed or [])}")
        self._mask_idx = [np.argwhere(s.mask) for s in self.subjects]

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def sample_spec(self, index: int, epoch: int | None = None) -> PatchSpec:
        """Draw the random choices of sample ``index`` (deterministic)."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, index])
        si = self._usable[int(rng.integers(len(self._usable)))]
        source, target = self._pairs[si][int(rng.integers(len(self._pairs[si])))]
        centre = self._mask_idx[si][int(rng.integers(len(self._mask_idx[si])))]
        corner = tuple(int(c) - self.patch_size // 2 for c in centre)
        return PatchSpec(si, source, target, corner)  # type: ignore[arg-type]

    def extract(self, spec: PatchSpec) -> dict[str, object]:
        """Cut the patches described by ``spec`` (zero-padded at the volume border)."""
        s = self.subjects[spec.subject]
        p = self.patch_size
        src = _crop(s.volumes[spec.source], spec.corner, p)
        tgt = _crop(s.volumes[spec.target], spec.corner, p)
        mask = _crop(s.mask.astype(np.float32), spec.corner, p)
        return {
            "source": torch.from_numpy(src)[None],
            "target": torch.from_numpy(tgt)[None],
            "mask": torch.from_numpy(mask)[None],
            "source_meta": s.metadata(spec.source),
            "target_meta": s.metadata(spec.target),
        }

    def __getitem__(self, index: int) -> dict[str, object]:
        return self.extract(self.sample_spec(index))


def collate(items: list[dict[str, object]]) -> dict[str, object]:
    """Stack tensors; keep metadata as lists."""
    out: dict[str, object] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def _crop(vol: np.ndarray, corner: Sequence[int], size: int) -> np.ndarray:
    out = np.zeros((size, size, size), dtype=np.float32)
    src_sl, dst_sl = [], []
    for c, n in zip(corner, vol.shape, strict=True):
        a, b = max(c, 0), min(c + size, n)
        if b <= a:
            return out
        src_sl.append(slice(a, b))
        dst_sl.append(slice(a - c, b - c))
    out[tuple(dst_sl)] = vol[tuple(src_sl)]
    return out


def case_paths(case: Case) -> list[Path]:
    """Every file of a case (inputs to protect from overwriting)."""
    return [*case.images.values(), *(p for p in (case.mask, case.labels) if p is not None)]
