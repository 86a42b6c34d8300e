"""``rtfsyn evaluate``: whole-volume synthesis of every case × task × model, with metrics.

For each case and task (source → target) and each model the source is synthesized into the
target with the real pipeline (:func:`rtfsyn.inference.synthesize_image`, on the source grid,
brain mask given), both volumes are normalised the same way
(:func:`rtfsyn.preprocess.robust_normalize`) and PSNR / SSIM / MAE / NMSE are taken in the
mask. Only test cases are scored by default: cases any compared model trained or validated
on (listed in its checkpoint, matched by participant and content fingerprint) are excluded for
every model; validation cases can be included explicitly and are then labelled. Optional: the
source corrupted by artifacts at three severities (seeded by the case key), and 3-class tissue
volumes of synthesized vs real target.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from rtfsyn import io
from rtfsyn.data.cases import Case, load_cases
from rtfsyn.data.splits import SplitIndex, legacy_case_key
from rtfsyn.errors import RtfsynError
from rtfsyn.evaluation.artifacts import ARTIFACTS, SEVERITIES, apply_artifact, sample_artifact
from rtfsyn.evaluation.tissue import (
    relative_volume_errors,
    three_class_segmentation,
    tissue_volumes,
)
from rtfsyn.metadata import normalize_contrast
from rtfsyn.metrics import all_metrics
from rtfsyn.preprocess import brain_mask, robust_normalize

__all__ = ["EvalResult", "artifact_seed", "case_key", "check_site_unseen", "evaluate",
           "parse_tasks"]


def parse_tasks(text: str | Sequence[str]) -> list[tuple[str, str]]:
    """``"T1w:T2w,T1w:FLAIR"`` → ``[("T1w", "T2w"), ("T1w", "FLAIR")]`` (aliases accepted)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    tasks = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        if ":" not in item:
            raise RtfsynError(f"task {item!r} must look like SOURCE:TARGET, e.g. T1w:T2w")
        a, b = item.split(":", 1)
        tasks.append((normalize_contrast(a), normalize_contrast(b)))
    if not tasks:
        raise RtfsynError("no task given: use e.g. --tasks T1w:T2w,T1w:FLAIR")
    return tasks


def case_key(folder: str | Path, subject: str) -> str:
    """Display name of a case in reports: dataset folder name + subject id.

    Exclusion does not rely on it (a renamed folder changes it): checkpoints list their
    cases by participant and content fingerprint (:mod:`rtfsyn.data.splits`).
    """
    return legacy_case_key(folder, subject)


@dataclass
class EvalRow:
    """One synthesized volume's numbers."""

    model: str
    task: str
    case: str
    site: str | None
    condition: str  # "clean" or "<artifact>:<severity>"
    psnr: float
    ssim: float
    mae: float
    nmse: float
    seconds: float
    tissue_error: float | None = None
    split: str = "test"  # "test", or "validation" / "training" when explicitly included

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class EvalResult:
    """Everything ``evaluate`` measured, plus slices for figures."""

    rows: list[EvalRow]
    models: dict[str, dict[str, Any]]
    tasks: list[tuple[str, str]]
    cases: list[str]
    excluded: list[str]
    holdout_site: str | None
    slices: dict[tuple[str, str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    efficiency: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: excluded case → why ("training" / "validation": a compared model's checkpoint lists it)
    exclusions: dict[str, str] = field(default_factory=dict)
    #: evaluated case → split label ("test", "validation", "training")
    splits: dict[str, str] = field(default_factory=dict)


def _load(case: Case, contrast: str) -> nib.Nifti1Image:
    return io.load_nifti(case.images[contrast])


def _mid_slices(vol: np.ndarray) -> np.ndarray:
    return np.rot90(vol[:, :, vol.shape[2] // 2])


def evaluate(
    models: Sequence[str | Path],
    data: Sequence[str | Path],
    tasks: Sequence[tuple[str, str]],
    *,
    artifacts: bool | Sequence[str] = False,
    severities: Sequence[int] = SEVERITIES,
    artifact_cases: int | None = None,
    holdout_site: str | None = None,
    max_cases: int | None = None,
    cases_only: Collection[str] | None = None,
    tissue: bool = True,
    device: str = "auto",
    seed: int = 0,
    include_training_cases: bool = False,
    include_validation_cases: bool = False,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int, str], None] | None = None,
) -> EvalResult:
    """Run the evaluation (see the module docstring); returns rows for reporting.

    By default only **test** cases are scored: cases that no compared model trained or
    validated on (its checkpoint's test split, or data it never listed). Training and
    validation cases of *every* model are excluded, matched by participant and content
    fingerprint (:class:`rtfsyn.data.splits.SplitIndex`; legacy ``folder/subject`` keys
    too); a participant with one excluded session is excluded whole.
    ``include_validation_cases`` / ``include_training_cases`` keep them, labelled in
    :attr:`EvalRow.split`. ``holdout_site``: score only that site, and refuse a model whose
    checkpoint does not show it was trained without the site.
    ``cases_only``: evaluate only these case keys (:func:`case_key`, ``"<folder>/<subject>"``).
    """
    from rtfsyn.device import resolve_device
    from rtfsyn.inference import load_model, synthesize_image

    dev = resolve_device(device)
    loaded = {}
    model_info: dict[str, dict[str, Any]] = {}
    for m in models:
        lm = load_model(m, dev)
        name = _unique_name(lm.name if lm.name not in ("final", "last", "best") else
                            Path(str(lm.info.path)).parents[1].name, loaded)
        loaded[name] = lm
        if holdout_site is not None:
            check_site_unseen(name, lm.info.config, lm.info.info or {}, holdout_site)
        n_params = sum(p.numel() for p in lm.model.parameters())
        model_info[name] = {
            "path": str(lm.info.path), "arch": lm.info.config.get("model", {}).get("arch"),
            "step": lm.info.step, "params": n_params, "spacing": lm.spacing,
            "holdout_site": lm.info.config.get("holdout_site"),
        }
    index = SplitIndex.from_infos(lm.info.info for lm in loaded.values())
    keep = {"training": include_training_cases, "validation": include_validation_cases}
    cases: list[tuple[str, Case]] = []
    excluded: list[str] = []
    exclusions: dict[str, str] = {}
    labels: dict[str, str] = {}
    for folder in data:
        folder_cases = load_cases(folder)
        roles = index.roles(folder_cases, folder) if not index.empty else {}
        for case in folder_cases:
            key = case_key(folder, case.subject)
            if holdout_site is not None and case.site != holdout_site:
                continue
            if cases_only is not None and key not in cases_only:
                continue
            role = roles.get(case.subject)
            if role in keep and not keep[role]:
                excluded.append(key)
                exclusions[key] = role
                continue
            labels[key] = role if role in keep else "test"
            cases.append((key, case))
    if holdout_site is not None and not cases:
        raise RtfsynError(
            f"no evaluation case of site {holdout_site!r} in {', '.join(map(str, data))}"
        )
    if max_cases is not None:
        cases = cases[:max_cases]
    if not cases:
        raise RtfsynError(
            "no case left to evaluate (all were training or validation cases of a model): give "
            "held-out data, or --include-validation-cases to score validation cases (labelled)"
        )
    if excluded:
        n_val = sum(r == "validation" for r in exclusions.values())
        log(f"excluded {len(excluded) - n_val} training and {n_val} validation case(s) of the "
            "compared models (listed in their checkpoints)")
    kinds = list(ARTIFACTS) if artifacts is True else list(artifacts or [])
    for k in kinds:
        if k not in ARTIFACTS:
            raise RtfsynError(f"artifact {k!r} is unknown: use {', '.join(ARTIFACTS)}")

    rows: list[EvalRow] = []
    slices: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
    usable = [(k, c) for k, c in cases if any(s in c.images and t in c.images for s, t in tasks)]
    total = sum(
        len(loaded) * (1 + (len(kinds) * len(severities) if (artifact_cases is None or
                                                              i < artifact_cases) else 0))
        for i, (_, c) in enumerate(usable) for s, t in tasks if s in c.images and t in c.images
    )
    done = 0
    for ci, (key, case) in enumerate(usable):
        for source, target in tasks:
            if source not in case.images or target not in case.images:
                continue
            src_img = _load(case, source)
            tgt_img = _load(case, target)
            if not io.same_grid(src_img, tgt_img, atol=1e-2):
                tgt_img = io.resample_to_reference(tgt_img, src_img)
            src = np.asarray(src_img.dataobj, np.float32)
            real = np.asarray(tgt_img.dataobj, np.float32)
            if case.mask is not None:
                m = io.resample_to_reference(io.load_nifti(case.mask), src_img, order=0)
                mask = np.asarray(m.dataobj) > 0.5
            else:
                mask = brain_mask(src) & brain_mask(real)
            mask_img = io.like(mask.astype(np.uint8), src_img)
            src_norm, _ = robust_normalize(src, mask)
            real_norm, _ = robust_normalize(real, mask)
            voxel_ml = float(np.prod(io.spacing_of(src_img))) / 1000.0
            real_tissue = tissue_volumes(three_class_segmentation(real_norm, mask), target,
                                         voxel_ml) if tissue else None
            conditions: list[tuple[str, np.ndarray]] = [("clean", src_norm)]
            if kinds and (artifact_cases is None or ci < artifact_cases):
                for kind in kinds:
                    for sev in severities:
                        spec = sample_artifact(kind, sev, seed=artifact_seed(seed, key))
                        corrupted = apply_artifact(src_norm, spec, io.spacing_of(src_img))
                        conditions.append((spec.name, corrupted * mask))
            task = f"{source}->{target}"
            for cond, src_vol in conditions:
                for name, lm in loaded.items():
                    t0 = time.perf_counter()
                    res = synthesize_image(
                        io.like(src_vol, src_img), target, case.metadata[target],
                        source_metadata=case.metadata[source], model=lm, mask=mask_img,
                        force_metadata=True,  # dataset sidecars: `rtfsyn inspect` flags odd ones
                    )
                    secs = time.perf_counter() - t0
                    pred = np.asarray(res.image.dataobj, np.float32)
                    pred_norm, _ = robust_normalize(pred, mask)
                    metrics = all_metrics(pred_norm, real_norm, mask)
                    terr = None
                    if tissue and cond == "clean" and real_tissue:
                        pt = tissue_volumes(three_class_segmentation(pred_norm, mask), target,
                                            voxel_ml)
                        errs = [e for e in relative_volume_errors(pt, real_tissue).values()
                                if math.isfinite(e)]
                        terr = float(np.mean(errs)) if errs else None
                    rows.append(EvalRow(name, task, key, case.site, cond, metrics["psnr"],
                                        metrics["ssim"], metrics["mae"], metrics["nmse"], secs,
                                        terr, labels[key]))
                    if cond == "clean":
                        slices[(name, task, key)] = {
                            "source": _mid_slices(src_norm), "pred": _mid_slices(pred_norm),
                            "real": _mid_slices(real_norm),
                        }
                    done += 1
                    if progress is not None:
                        progress(done, total, f"{name} {task} {key} {cond}")
    return EvalResult(rows, model_info, list(tasks), [k for k, _ in usable], excluded,
                      holdout_site, slices, exclusions=exclusions,
                      splits={k: labels[k] for k, _ in usable})


def artifact_seed(seed: int, key: str) -> list[int]:
    """Artifact seed of a case: the run seed and a hash of its key, not its list position,
    so a case gets the same corruption whatever else is evaluated."""
    digest = hashlib.sha256(key.encode()).digest()
    return [int(seed), int.from_bytes(digest[:8], "little")]


def check_site_unseen(name: str, config: dict[str, Any], info: dict[str, Any],
                      site: str) -> None:
    """Refuse a model whose checkpoint does not show it was trained without ``site``."""
    if config.get("holdout_site") == site:
        return
    if "train_sites" in info:
        if site not in info["train_sites"]:
            return
        raise RtfsynError(
            f"model {name} was trained on site {site} (its checkpoint lists it): a zero-shot "
            f"--holdout-site {site} score needs a model trained with --holdout-site {site}"
        )
    raise RtfsynError(
        f"cannot tell whether model {name} saw site {site} in training (its checkpoint has "
        f"no site list): use a model trained with --holdout-site {site}, or drop --holdout-site"
    )


def _unique_name(name: str, taken: dict[str, Any]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}-{i}", i + 1
    return out


def rows_to_json(result: EvalResult) -> str:
    """All rows and model info as JSON."""
    return json.dumps({"models": result.models, "rows": [r.as_dict() for r in result.rows],
                       "efficiency": result.efficiency, "excluded": result.excluded,
                       "exclusions": result.exclusions, "splits": result.splits,
                       "holdout_site": result.holdout_site}, indent=1, default=str)
