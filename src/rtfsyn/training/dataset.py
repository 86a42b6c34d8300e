"""Training data: subjects loaded into memory and a deterministic many-to-many patch dataset.

Every sample is a pure function of ``(seed, epoch, index)``: :meth:`PatchDataset.sample_spec`
draws a :class:`PatchSpec` (subject, source/target contrasts, patch corner) from a generator
seeded with those numbers, and :meth:`PatchDataset.extract` cuts the patches. So a
``DistributedSampler`` can split indices across ranks, and a resumed run sees exactly the
samples an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch.utils.data import Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from rtfsyn import io
from rtfsyn.data.cases import Case
from rtfsyn.data.splits import split_cases  # re-exported: it lived here before
from rtfsyn.errors import DatasetError
from rtfsyn.metadata import Metadata
from rtfsyn.preprocess import bounding_box, brain_mask, robust_normalize
from rtfsyn.training.augment import (
    IntensityAugment,
    apply_intensity_augment,
    sample_intensity_augment,
)

__all__ = [
    "GridSpec",
    "PatchDataset",
    "PatchSpec",
    "StepBatchSampler",
    "Subject",
    "load_subject",
    "load_subject_levels",
    "load_subject_pyramid",
    "load_subjects",
    "sample_grid",
    "split_cases",
]


@dataclass
class Subject:
    """One case in memory: normalised canonical volumes cropped to the brain, at one spacing."""

    case: Case
    volumes: dict[str, np.ndarray]  # contrast → (D, H, W) float32 in [0, 1]
    mask: np.ndarray  # (D, H, W) bool
    spacing: tuple[float, float, float]
    labels: np.ndarray | None = None
    native_spacing: float | None = None  # coarsest native voxel size (mm)

    @property
    def contrasts(self) -> list[str]:
        return [c for c in self.case.contrasts if c in self.volumes]

    def metadata(self, contrast: str) -> Metadata:
        """The contrast's metadata with the voxel size of the in-memory volume."""
        return self.case.metadata[contrast].with_updates(voxel_size=self.spacing)


def _load_images(case: Case) -> dict[str, nib.Nifti1Image]:
    """Every contrast of a case, canonical RAS, read from disk once."""
    return {c: io.to_canonical(io.load_nifti(case.images[c])) for c in case.contrasts}


def _make_subject(case: Case, canon: dict[str, nib.Nifti1Image], spacing: float | None,
                  margin: int = 4) -> Subject:
    """Resample / mask / normalise / crop already-loaded canonical images (no file I/O
    besides the case's mask and label files)."""
    images = {}
    ref = None
    for contrast, img in canon.items():
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
    native = max(io.spacing_of(next(iter(canon.values()))))
    return Subject(case=case, volumes=volumes, mask=mask[box],
                   spacing=io.canonical_voxel_size(ref),
                   labels=None if labels is None else labels[box],
                   native_spacing=round(native, 4))


def load_subject(case: Case, spacing: float | None = None, margin: int = 4) -> Subject:
    """Load all contrasts of a case: canonical RAS, resampled, masked, normalised, cropped.

    The brain mask is the case's mask file if there is one, else the intersection of the
    non-zero regions of all contrasts (so every contrast has signal where the loss is taken).
    """
    return _make_subject(case, _load_images(case), spacing, margin)


def load_subject_levels(
    case: Case, spacing: float, factors: Sequence[int] = (1,), margin: int = 4
) -> dict[int, Subject | None]:
    """The case at ``spacing / k`` mm for each ``k`` in ``factors`` (files read once).

    Level ``k > 1`` is ``None`` when the case's native voxels are coarser than
    ``spacing / k`` (a finer grid would only be an interpolation, not a real target).
    """
    canon = _load_images(case)
    native = max(io.spacing_of(next(iter(canon.values())))) if canon else 0.0
    out: dict[int, Subject | None] = {}
    for k in factors:
        fine = spacing / k
        if k > 1 and native > fine * 1.05:
            out[k] = None
            continue
        out[k] = _make_subject(case, canon, fine, margin)
    return out


def load_subjects(
    cases: Sequence[Case], spacing: float | None = None, progress: bool = True
) -> list[Subject]:
    """Load several cases (with a progress bar); cases with < 2 contrasts are skipped."""
    return [lv[1] for lv in load_subject_pyramid(cases, spacing, (1,), progress)]  # type: ignore[misc]


def load_subject_pyramid(
    cases: Sequence[Case], spacing: float | None, factors: Sequence[int] = (1,),
    progress: bool = True,
) -> list[dict[int, Subject | None]]:
    """:func:`load_subject_levels` for several cases (cases with < 2 contrasts skipped).

    Everything a training step needs is then in memory: a step does no file I/O.
    """
    usable = [c for c in cases if len(c.contrasts) >= 2]
    out = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("loading subjects", total=len(usable))
        for case in usable:
            if spacing is None or tuple(factors) == (1,):
                out.append({1: load_subject(case, spacing)})
            else:
                out.append(load_subject_levels(case, spacing, factors))
            bar.advance(task)
    return out


def fill_target(target: Metadata, source: Metadata) -> Metadata:
    """``target`` with its missing protocol fields filled as synthesis fills a request
    (:func:`rtfsyn.protocols.fill_missing`, field strength from the source when unknown)."""
    from rtfsyn.protocols import fill_missing

    return fill_missing(target, None, fallback_field=source.field_strength).metadata


def bare_metadata(meta: Metadata) -> Metadata:
    """``meta`` cut to its contrast and voxel size: what a scan without a sidecar carries."""
    return Metadata(contrast=meta.contrast, voxel_size=meta.voxel_size)


def _source_meta(meta: Metadata, bare: bool) -> Metadata:
    return bare_metadata(meta) if bare else meta


@dataclass(frozen=True)
class PatchSpec:
    """Everything random about one training sample."""

    subject: int
    source: str
    target: str
    corner: tuple[int, int, int]
    augment: IntensityAugment | None = None  # source intensity augmentation, if drawn
    bare_source: bool = False  # source metadata cut to contrast + voxel size


@dataclass(frozen=True)
class GridSpec:
    """The source and output grids of one training step (shared by the whole batch).

    A region of ``region`` voxels is cut from the subjects at ``spacing / level`` mm; the
    source is that region area-averaged to ``source_shape`` voxels, the target (and mask)
    area-averaged to ``out_shape`` voxels. Voxel sizes follow: ``region × level spacing /
    shape``. With ``level = k`` and ``region = k × source_shape = out_shape`` this is exactly
    what inference does for an input at ``spacing / k`` mm (block average by ``k``, the decoder
    queried on the ``k``-times finer grid).
    """

    level: int
    region: tuple[int, int, int]
    source_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    mode: str = "own"


def sample_grid(
    seed: int, step: int, rank: int, patch_size: int, downscale_prob: float,
    max_downscale: float, levels: Sequence[int] = (1,),
) -> GridSpec:
    """Draw the grids of step ``step`` on ``rank`` (deterministic; see :class:`GridSpec`).

    The source is coarsened with probability ``downscale_prob`` (isotropic, or one thick-slice
    axis, by ``U(1.25, max_downscale)``), then one output grid is chosen with equal chance:

    * ``own``: the source's own grid (what inference does for inputs at or above the
      training spacing);
    * ``train``: the training grid (``patch_size`` voxels at the training spacing);
    * ``fine`` (when ``levels`` has ``k > 1``): the ``k``-times finer grid of a source at the
      training spacing, thick axes kept on their own grid (inference for finer inputs).
    """
    rng = np.random.default_rng([seed, 7919, step, rank])
    p = int(patch_size)
    f = [1.0, 1.0, 1.0]
    iso = False
    if downscale_prob > 0 and rng.random() < downscale_prob:
        factor = float(rng.uniform(1.25, max_downscale))
        if rng.random() < 0.5:
            f, iso = [factor] * 3, True
        else:
            f[int(rng.integers(3))] = factor
    fine = [k for k in levels if k > 1]
    modes = ["own", "train", "fine"] if fine else ["own", "train"]
    mode = modes[int(rng.integers(len(modes)))]
    if mode == "fine":
        k = int(fine[int(rng.integers(len(fine)))])
        if iso:
            f = [1.0, 1.0, 1.0]
        r = (p // k) * k
        src = tuple(r // k if fa == 1.0 else max(4, round(r / (k * fa))) for fa in f)
        out = tuple(r if fa == 1.0 else n for fa, n in zip(f, src, strict=True))
        return GridSpec(k, (r, r, r), src, out, mode)  # type: ignore[arg-type]
    src = tuple(max(4, round(p / fa)) for fa in f)
    out = src if mode == "own" else (p, p, p)
    return GridSpec(1, (p, p, p), src, out, mode)  # type: ignore[arg-type]


class PatchDataset(Dataset):
    """Many-to-many (source, target) patches inside the brain.

    An item is addressed by a plain index (epoch from :meth:`set_epoch`, a ``patch_size``
    cube at the loaded spacing) or by a key ``(epoch, index, grid)`` with a
    :class:`GridSpec` or ``None``; either way it is a pure function of the seed and the key,
    so any number of ``DataLoader`` workers yields the same items in the same order.

    Args:
        subjects: loaded subjects (each with ≥ 2 contrasts).
        patch_size: cubic patch edge in voxels.
        samples_per_epoch: virtual epoch length.
        seed: base seed; sample ``i`` of epoch ``e`` is drawn from ``default_rng([seed, e, i])``.
        pairs: optional allowed (source, target) pairs; default every ordered pair present.
        physics_prior: add the physics prior of the target (:mod:`rtfsyn.prior`) as a second
            source channel (models with ``physics_prior: true``); computed once per
            (subject, source, target) on the whole subject volume and cached.
        source_augment: probability that a sample's source patch gets a random intensity
            augmentation (:mod:`rtfsyn.training.augment`; target and prior channel untouched).
        fill_targets: give the target metadata the protocol fields it lacks from the typical
            protocol (:func:`rtfsyn.protocols.fill_missing`), as synthesis does for a user's
            request, so that a real case without sidecars trains the same conditioning that
            inference will use (its prior is computed with the filled protocol too).
        levels: optional finer copies ``{k: [subject at spacing / k or None, ...]}`` (same
            order as ``subjects``) for :class:`GridSpec` levels ``k > 1``.
        weights: optional relative sampling weight of each subject (same order as
            ``subjects``, each > 0); default: every usable subject equally often.
        source_meta_drop: probability that a sample's source metadata is cut to its
            contrast and voxel size (:func:`bare_metadata`), as a real scan without a sidecar
            gives it; the target metadata (and a physics prior channel, computed once per
            subject) keep the full metadata.
    """

    def __init__(
        self,
        subjects: Sequence[Subject],
        patch_size: int = 32,
        samples_per_epoch: int = 1024,
        seed: int = 0,
        pairs: Sequence[tuple[str, str]] | None = None,
        physics_prior: bool = False,
        levels: dict[int, Sequence[Subject | None]] | None = None,
        source_augment: float = 0.0,
        fill_targets: bool = False,
        weights: Sequence[float] | None = None,
        source_meta_drop: float = 0.0,
    ) -> None:
        if not subjects:
            raise DatasetError("no training subjects with at least two contrasts")
        if weights is not None:
            if len(weights) != len(subjects):
                raise ValueError(f"weights has {len(weights)} entries for {len(subjects)} "
                                 "subjects: give one per subject")
            if not all(np.isfinite(w) and w > 0 for w in weights):
                raise ValueError(f"weights must be finite and > 0, got {list(weights)}")
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
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
        self.levels: dict[int, list[Subject | None]] = {1: list(self.subjects)}
        for k, subs in (levels or {}).items():
            if k > 1 and len(subs) == len(self.subjects):
                self.levels[int(k)] = list(subs)
        self._usable_at = {k: [i for i in self._usable if subs[i] is not None]
                           for k, subs in self.levels.items()}
        self.levels = {k: v for k, v in self.levels.items() if k == 1 or self._usable_at[k]}
        # flat C-order indices of brain voxels (int32: 1/6 of np.argwhere's memory)
        self._mask_idx = {k: [None if s is None else np.flatnonzero(s.mask).astype(np.int32)
                              for s in subs] for k, subs in self.levels.items()}
        self.physics_prior = bool(physics_prior)
        self.source_augment = float(source_augment)
        self.fill_targets = bool(fill_targets)
        if not 0.0 <= source_meta_drop <= 1.0:
            raise ValueError(f"source_meta_drop must be in [0, 1], got {source_meta_drop}")
        self.source_meta_drop = float(source_meta_drop)
        self._priors: dict[tuple[int, int, str, str], np.ndarray] = {}

    @property
    def grid_levels(self) -> list[int]:
        """Levels ``k`` with usable subjects (1 always; ``k > 1`` where data are fine enough)."""
        return sorted(self.levels)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def sample_spec(self, index: int, epoch: int | None = None,
                    grid: GridSpec | None = None) -> PatchSpec:
        """Draw the random choices of sample ``index`` (deterministic)."""
        epoch = self.epoch if epoch is None else epoch
        level = 1 if grid is None else grid.level
        size = (self.patch_size,) * 3 if grid is None else grid.region
        usable = self._usable if level == 1 else self._usable_at[level]
        rng = np.random.default_rng([self.seed, epoch, index])
        if self.weights is None:
            si = usable[int(rng.integers(len(usable)))]
        else:
            w = self.weights[usable]
            si = usable[int(rng.choice(len(usable), p=w / w.sum()))]
        source, target = self._pairs[si][int(rng.integers(len(self._pairs[si])))]
        flat = self._mask_idx[level][si]
        subj = self.levels[level][si]
        assert flat is not None and subj is not None
        centre = np.unravel_index(int(flat[int(rng.integers(len(flat)))]), subj.mask.shape)
        corner = tuple(int(c) - n // 2 for c, n in zip(centre, size, strict=True))
        augment = None
        if self.source_augment > 0 and rng.random() < self.source_augment:
            augment = sample_intensity_augment(rng)
        # drawn last, and only when enabled: earlier recipes keep their exact samples
        bare = bool(self.source_meta_drop > 0 and rng.random() < self.source_meta_drop)
        return PatchSpec(si, source, target, corner, augment, bare)  # type: ignore[arg-type]

    def extract(self, spec: PatchSpec, grid: GridSpec | None = None) -> dict[str, object]:
        """Cut the patches described by ``spec`` (zero-padded at the volume border).

        Without ``grid``: ``patch_size`` cubes, metadata voxel size = the subject's spacing.
        With ``grid``: source ``(C, *grid.source_shape)``, target and mask
        ``(1, *grid.out_shape)``, metadata voxel sizes of those grids. ``C = 2`` with
        ``physics_prior`` (source, physics prior of the target), else 1.
        """
        if grid is None:
            s = self.subjects[spec.subject]
            p = self.patch_size
            src = _crop(s.volumes[spec.source], spec.corner, p)
            if spec.augment is not None:
                src = apply_intensity_augment(torch.from_numpy(src), spec.augment).numpy()
            if self.physics_prior:  # (2, p, p, p): source, physics prior of the target
                src = np.stack([src, _crop(self.prior(spec.subject, spec.source, spec.target),
                                           spec.corner, p)])
            tgt = _crop(s.volumes[spec.target], spec.corner, p)
            mask = _crop(s.mask.astype(np.float32), spec.corner, p)
            return {
                "source": torch.from_numpy(src if src.ndim == 4 else src[None]),
                "target": torch.from_numpy(tgt)[None],
                "mask": torch.from_numpy(mask)[None],
                "source_meta": _source_meta(s.metadata(spec.source), spec.bare_source),
                "target_meta": self.target_meta(s, spec.source, spec.target),
            }
        s = self.levels[grid.level][spec.subject]
        assert s is not None
        region = grid.region
        src = _area(_crop(s.volumes[spec.source], spec.corner, region), grid.source_shape)[None]
        if spec.augment is not None:
            src = apply_intensity_augment(src[0], spec.augment)[None]
        if self.physics_prior:  # the prior on the fine grid, averaged like the source
            pri = self.prior(spec.subject, spec.source, spec.target, level=grid.level)
            src = torch.cat([src, _area(_crop(pri, spec.corner, region), grid.source_shape)[None]])
        tgt = _area(_crop(s.volumes[spec.target], spec.corner, region), grid.out_shape)
        mask = _area(_crop(s.mask, spec.corner, region), grid.out_shape)
        src_vox = tuple(round(sp * r / n, 4) for sp, r, n in
                        zip(s.spacing, region, grid.source_shape, strict=True))
        tgt_vox = tuple(round(sp * r / n, 4) for sp, r, n in
                        zip(s.spacing, region, grid.out_shape, strict=True))
        return {
            "source": src,
            "target": tgt[None],
            "mask": mask[None],
            "source_meta": _source_meta(
                s.case.metadata[spec.source].with_updates(voxel_size=src_vox), spec.bare_source),
            "target_meta": self.target_meta(s, spec.source, spec.target, tgt_vox),
        }

    def target_meta(self, subj: Subject, source: str, target: str,
                    voxel_size: tuple[float, ...] | None = None) -> Metadata:
        """The target's metadata (voxel size ``voxel_size``, default the subject's spacing),
        with missing protocol fields filled when ``fill_targets``."""
        meta = subj.case.metadata[target].with_updates(voxel_size=voxel_size or subj.spacing)
        if self.fill_targets:
            meta = fill_target(meta, subj.case.metadata[source])
        return meta

    def prior(self, subject: int, source: str, target: str, level: int = 1) -> np.ndarray:
        """The cached physics prior of ``target`` from ``source`` for one subject, on the grid
        of level ``level`` (as inference computes it on the input grid, before averaging)."""
        key = (level, subject, source, target)
        if key not in self._priors:
            from rtfsyn.prior import prior_for_volume

            s = self.levels[level][subject]
            assert s is not None
            self._priors[key] = prior_for_volume(s.volumes[source], s.metadata(source),
                                                 self.target_meta(s, source, target),
                                                 mask=s.mask)
        return self._priors[key]

    def __getitem__(self, key: int | tuple[int, int, GridSpec | None]) -> dict[str, object]:
        if isinstance(key, tuple):
            epoch, index, grid = key
            return self.extract(self.sample_spec(index, epoch, grid), grid)
        return self.extract(self.sample_spec(key))


class StepBatchSampler(Sampler[list[tuple[int, int, GridSpec | None]]]):
    """The batches of steps ``start_step … max_steps − 1`` for a ``DataLoader``.

    Step ``s`` is batch ``s mod n`` of epoch ``s // n`` of ``sampler`` (a
    ``DistributedSampler``, so each rank gets its own share), ``n = len(sampler) //
    batch_size``; every key carries its epoch and the step's :class:`GridSpec` from
    ``grid_fn(step)`` (or ``None``). A resumed run therefore continues with exactly the
    batches an uninterrupted run would have had.
    """

    def __init__(self, sampler: DistributedSampler, batch_size: int, start_step: int,
                 max_steps: int, grid_fn: Callable[[int], GridSpec | None] | None = None
                 ) -> None:
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.start_step = int(start_step)
        self.max_steps = int(max_steps)
        self.grid_fn = grid_fn
        self.steps_per_epoch = max(1, len(sampler) // self.batch_size)

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int, GridSpec | None]]]:
        step = self.start_step
        indices: list[int] = []
        current = -1
        while step < self.max_steps:
            epoch, offset = divmod(step, self.steps_per_epoch)
            if epoch != current:
                self.sampler.set_epoch(epoch)
                indices = list(self.sampler)
                current = epoch
            b = offset * self.batch_size
            grid = self.grid_fn(step) if self.grid_fn is not None else None
            yield [(epoch, int(i), grid) for i in indices[b : b + self.batch_size]]
            step += 1


def collate(items: list[dict[str, object]]) -> dict[str, object]:
    """Stack tensors; keep metadata as lists."""
    out: dict[str, object] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def _crop(vol: np.ndarray, corner: Sequence[int], size: int | Sequence[int]) -> np.ndarray:
    sizes = (size,) * 3 if isinstance(size, int) else tuple(size)
    out = np.zeros(sizes, dtype=np.float32)
    src_sl, dst_sl = [], []
    for c, n, m in zip(corner, vol.shape, sizes, strict=True):
        a, b = max(c, 0), min(c + m, n)
        if b <= a:
            return out
        src_sl.append(slice(a, b))
        dst_sl.append(slice(a - c, b - c))
    out[tuple(dst_sl)] = vol[tuple(src_sl)]
    return out


def _area(patch: np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    """Area-average a ``(D, H, W)`` patch to ``shape`` (a block mean for integer ratios)."""
    t = torch.from_numpy(patch)
    if tuple(t.shape) == tuple(shape):
        return t
    return F.interpolate(t[None, None], size=tuple(int(n) for n in shape), mode="area")[0, 0]
def case_paths(case: Case) -> list[Path]:
    """Every file of a case (inputs to protect from overwriting)."""
    return [*case.images.values(), *(p for p in (case.mask, case.labels) if p is not None)]
