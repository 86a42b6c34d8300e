"""The training loop: many-to-many patches, L1 + SSIM, AdamW + cosine, EMA, DDP, resume.

Run folder layout (``--out runs/NAME``)::

    config.yaml                 the resolved training config
    checkpoints/last.safetensors + last.state.pt    (resume point)
    checkpoints/best.safetensors                    (best validation PSNR)
    checkpoints/final.safetensors                   (weights at the end, EMA if enabled;
                                                     also when --max-minutes ends the run)
    tensorboard/                scalars and image panels
    metrics.jsonl               validation results, one JSON line per evaluation

Structure: :func:`train` = ``_init_process_group`` → ``_setup`` (data cached in memory,
model, optimiser) → ``_resume`` (weights, optimiser, schedule, EMA, CPU and CUDA RNG states) →
``_loop`` (a ``DataLoader`` with a ``DistributedSampler`` feeds ``_train_step``;
``_validate`` is sharded over ranks; ``_save``) → ``_finish``; the process group it created
is destroyed at the end, also after an error.

Determinism: sample ``i`` of epoch ``e`` depends only on ``(seed, e, i)``; the down-scaling
and output grid of step ``s`` only on ``(seed, s, rank)``; items are pure functions of these
keys, so the batches do not depend on the number of ``DataLoader`` workers. The torch (and
CUDA) RNG states are saved with each checkpoint. A run stopped at a checkpoint and resumed
therefore reaches the same weights as an uninterrupted run (bit-exact on CPU).

Output grids (``out_grids``, on in ``train-cpu`` / ``train-gpu``): each step's target is on
the source's own grid, on the training grid, or on a ``k``-times finer grid of a source at
the training spacing (block-averaged, as inference does for an input at ``spacing / k``).
The range of source / target voxel sizes and output-grid factors seen is stored in the
checkpoint info (``conditioning_range``) and checked at inference
(:func:`rtfsyn.inference.conditioning_outside`).

A NaN/inf loss on any rank stops every rank before ``optimizer.step()`` with one
:class:`NonFiniteLossError` line.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from rtfsyn import __version__
from rtfsyn.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from rtfsyn.data.cases import Case, load_cases
from rtfsyn.data.splits import exclusion_key, split_participants
from rtfsyn.device import available_cpus
from rtfsyn.errors import RtfsynError
from rtfsyn.training.config import TrainConfig, case_sampling_weights
from rtfsyn.training.dataset import (
    GridSpec,
    PatchDataset,
    StepBatchSampler,
    Subject,
    collate,
    load_subject_pyramid,
    load_subjects,
    sample_grid,
)
from rtfsyn.training.losses import synthesis_loss

__all__ = ["ConditioningRange", "NonFiniteLossError", "TrainResult", "make_loader", "train"]


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    out_dir: Path
    step: int
    last_checkpoint: Path
    final_checkpoint: Path | None
    best_checkpoint: Path | None
    val_metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    seconds: float = 0.0


def model_config_dict(spec: str | dict[str, Any]) -> dict[str, Any]:
    """Resolve the ``model`` entry of a training config to a plain dict of ModelConfig fields."""
    from rtfsyn.models import ModelConfig, load_config

    cfg = ModelConfig(**spec) if isinstance(spec, dict) else load_config(spec)
    if hasattr(cfg, "model_dump"):
        return cfg.model_dump(mode="json")
    from dataclasses import asdict

    return asdict(cfg)


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def lr_lambda(cfg: TrainConfig):
    """Linear warm-up then cosine decay to ``min_lr_ratio``; a function of the step."""

    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        t = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def downscale_batch(
    source: torch.Tensor, cfg: TrainConfig, step: int, rank: int
) -> tuple[torch.Tensor, tuple[float, float, float]]:
    """Randomly down-scale the source patch (isotropic or one thick-slice axis).

    Returns the (possibly smaller) source and the per-axis factor applied.
    """
    rng = np.random.default_rng([cfg.seed, 7919, step, rank])
    if cfg.downscale_prob <= 0 or rng.random() >= cfg.downscale_prob:
        return source, (1.0, 1.0, 1.0)
    factor = float(rng.uniform(1.25, cfg.max_downscale))
    if rng.random() < 0.5:
        factors = [factor] * 3
    else:
        factors = [1.0, 1.0, 1.0]
        factors[int(rng.integers(3))] = factor
    size = [max(4, round(s / f)) for s, f in zip(source.shape[2:], factors, strict=True)]
    real = tuple(s / n for s, n in zip(source.shape[2:], size, strict=True))
    return F.interpolate(source, size=size, mode="area"), real


class EMA:
    """Exponential moving average of the parameters (and buffers copied)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)


def _warn_implausible(cases: Sequence[Case], say: Callable[..., Any]) -> int:
    """Warn (never refuse) about sidecar values implausible for their contrast; their number."""
    from rtfsyn.protocols import plausibility_problems

    odd = [(c.subject, k, p) for c in cases for k, m in c.metadata.items()
           for p in plausibility_problems(m)]
    for subject, contrast, problem in odd[:5]:
        say(f"[yellow]warning:[/] {subject} {contrast}: {problem} (used as given)",
            highlight=False)
    if len(odd) > 5:
        say(f"[yellow]warning:[/] {len(odd) - 5} more implausible sidecar values "
            "(`rtfsyn inspect` lists them)", highlight=False)
    return len(odd)


def _load_all_cases(data: Sequence[str | Path]) -> tuple[list[Case], dict[str, str]]:
    """Cases of all folders (ids and participants made unique) and each id's exclusion key
    (participant + content fingerprint, :func:`rtfsyn.data.splits.exclusion_key`)."""
    cases: list[Case] = []
    keys: dict[str, str] = {}
    for folder in data:
        for case in load_cases(folder):
            prefix = "" if len(data) == 1 else f"{Path(folder).name}/"
            sid = prefix + case.subject
            keys[sid] = exclusion_key(case)
            cases.append(Case(sid, case.images, case.metadata, case.site, case.layout,
                              case.mask, case.labels, case.info,
                              participant=prefix + case.participant_id))
    return cases, keys


class NonFiniteLossError(RtfsynError):
    """The loss (or the gradient norm) became NaN / inf; every rank stops with this error."""


@dataclass
class ConditioningRange:
    """Min / max of the geometry conditioning the model saw in training (over all axes).

    ``source_voxel_mm`` / ``target_voxel_mm``: the voxel sizes in the source / target
    metadata; ``out_factor``: output-grid voxels per input voxel (``out_shape / in_shape``).
    Stored in the checkpoint info as ``conditioning_range``; see
    :func:`rtfsyn.inference.conditioning_outside`.
    """

    lo: list[float] = field(default_factory=lambda: [math.inf] * 3)
    hi: list[float] = field(default_factory=lambda: [-math.inf] * 3)
    KEYS = ("source_voxel_mm", "target_voxel_mm", "out_factor")

    def update(self, source_meta: Sequence[Any], target_meta: Sequence[Any],
               in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        """Add one batch (metadata lists and the spatial shapes of source and output)."""
        values = [
            [v for m in source_meta for v in (m.voxel_size or ())],
            [v for m in target_meta for v in (m.voxel_size or ())],
            [o / i for i, o in zip(in_shape, out_shape, strict=True)],
        ]
        for j, vs in enumerate(values):
            if vs:
                self.lo[j] = min(self.lo[j], float(min(vs)))
                self.hi[j] = max(self.hi[j], float(max(vs)))

    def all_reduce(self, dev: torch.device) -> None:
        """Merge the ranges of all ranks (a collective: every rank must call it)."""
        lo = torch.tensor(self.lo, dtype=torch.float64, device=dev)
        hi = torch.tensor(self.hi, dtype=torch.float64, device=dev)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        self.lo, self.hi = lo.tolist(), hi.tolist()

    def to_dict(self) -> dict[str, list[float]]:
        return {k: [round(lo, 4), round(hi, 4)] for k, lo, hi in
                zip(self.KEYS, self.lo, self.hi, strict=True) if math.isfinite(lo)}

    @classmethod
    def from_dict(cls, d: dict[str, Sequence[float]] | None) -> ConditioningRange:
        out = cls()
        for j, k in enumerate(cls.KEYS):
            if d and k in d:
                out.lo[j], out.hi[j] = float(d[k][0]), float(d[k][1])
        return out


@dataclass
class _Run:
    """Everything a training run holds between steps (built by :func:`_setup`)."""

    config: TrainConfig
    dev: torch.device
    world: int
    rank: int
    out: Path
    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: EMA | None
    dataset: PatchDataset
    val_subjects: list[Subject]
    run_config: dict[str, Any]
    split_info: dict[str, Any]
    say: Callable[..., None]
    writer: Any = None
    step: int = 0
    best_psnr: float = -math.inf
    timed_out: bool = False
    seen: ConditioningRange = field(default_factory=ConditioningRange)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    @property
    def last_ckpt(self) -> Path:
        return self.ckpt_dir / "last.safetensors"

    @property
    def last_state(self) -> Path:
        return self.ckpt_dir / "last.state.pt"

    def info(self, **extra: Any) -> dict[str, Any]:
        """Checkpoint info: split, data, conditioning range seen in training, extras."""
        return {**extra, "data": self.run_config["data"], **self.split_info,
                "conditioning_range": self.seen.to_dict(), "sequence_conditioning": True}


def train(
    data: Sequence[str | Path],
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    holdout_site: str | None = None,
    device: str = "auto",
    progress: bool = True,
    stop_after_steps: int | None = None,
    init_from: str | Path | None = None,
    console: Console | None = None,
) -> TrainResult:
    """Train a model; see the module docstring for the run folder.

    Args:
        data: dataset folders (BIDS, BraTS, IXI, phantom; mixed folders allowed).
        config: training configuration.
        out_dir: run folder; must not already hold a run unless ``resume``.
        resume: continue from ``checkpoints/last.*``.
        holdout_site: exclude this site from training and validation (zero-shot test set).
        device: ``auto``, ``cpu``, ``cuda`` …; under ``torchrun`` each rank uses its GPU.
        stop_after_steps: stop (with a checkpoint) after this many steps of *this* call,
            without changing the schedule; used to emulate an interrupted run.
        init_from: start from this checkpoint's weights (fine-tuning; same model config),
            with a fresh optimiser and schedule. Its training cases are added to this run's
            ``train_cases`` so that evaluation never scores a case either run has seen.

    Raises:
        NonFiniteLossError: the loss became NaN/inf on any rank (all ranks stop).
    """
    t_start = time.time()
    console = console or Console(stderr=True)
    own_pg = _init_process_group(device)
    run = None
    try:
        run = _setup(data, config, out_dir, resume=resume, holdout_site=holdout_site,
                     device=device, progress=progress, init_from=init_from, console=console)
        if resume:
            _resume(run)
        step, stop_early, val_metrics = _loop(run, progress, stop_after_steps, console)
        final = _finish(run, val_metrics, stop_early)
    finally:
        if run is not None and run.writer is not None:
            run.writer.close()
        if own_pg and dist.is_initialized():
            dist.destroy_process_group()
    assert run is not None
    best = run.ckpt_dir / "best.safetensors"
    return TrainResult(run.out, step, run.last_ckpt, final, best if best.exists() else None,
                       val_metrics, stop_early, time.time() - t_start)


def _init_process_group(device: str) -> bool:
    """Join the ``torchrun`` process group (NCCL on GPUs, else gloo); True if created here."""
    world, _, _ = _dist_info()
    if world <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def _setup(
    data: Sequence[str | Path], config: TrainConfig, out_dir: str | Path, *, resume: bool,
    holdout_site: str | None, device: str, progress: bool, init_from: str | Path | None,
    console: Console,
) -> _Run:
    """Device, run-folder checks, data (cached in memory), model, optimiser."""
    from rtfsyn.device import resolve_device
    from rtfsyn.models import ModelConfig, build_model

    world, rank, local_rank = _dist_info()
    distributed = world > 1
    if distributed and torch.cuda.is_available() and device != "cpu":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = resolve_device(device)
    is_main = rank == 0
    say = console.print if is_main else (lambda *a, **k: None)

    out = Path(out_dir)
    last_ckpt = out / "checkpoints" / "last.safetensors"
    if last_ckpt.exists() and not resume:
        raise RtfsynError(
            f"{out} already holds a run (checkpoints/last.safetensors): pass --resume to "
            "continue it or choose another --out"
        )
    if resume and not last_ckpt.exists():
        raise RtfsynError(f"--resume given but {last_ckpt} does not exist")

    # ---------------------------------------------------------------- data
    cases, keys = _load_all_cases(data)
    split = split_participants(cases, config.val_fraction, config.test_fraction,
                               holdout_site=holdout_site, seed=config.seed)
    train_cases, val_cases, site_cases = split.train, split.val, split.holdout
    split_info = {  # test cases: stored, never loaded here (no early stopping, no choice)
        "split_version": 2,
        **{entry: [keys[c.subject] for c in getattr(split, part)] for part, entry in
           (("train", "train_cases"), ("val", "val_cases"), ("test", "test_cases"),
            ("holdout", "holdout_cases"))},
        **{f"{part}_participants": split.participants(part) for part in ("train", "val",
                                                                          "test")},
        "train_sites": sorted({c.site for c in train_cases if c.site}),
    }
    _warn_implausible(cases, say)
    say(f"[bold]rtfsyn train[/] {len(train_cases)} training, {len(val_cases)} validation, "
        f"{len(split.test)} test"
        + (f", {len(site_cases)} held-out-site ({holdout_site})" if holdout_site else "")
        + f" cases (split by participant); device {dev}; world size {world}")
    # every volume is read, resampled and normalised once here: a step does no file I/O
    factors = (tuple(range(1, config.max_out_factor + 1))
               if config.out_grids and config.spacing is not None else (1,))
    pyramid = load_subject_pyramid(train_cases, config.spacing, factors,
                                   progress=progress and is_main)
    subjects = [lv[1] for lv in pyramid]
    levels = {k: [lv.get(k) for lv in pyramid] for k in factors if k > 1}
    # validation is sharded over the ranks (each rank synthesizes its own subjects)
    val_subjects = load_subjects(val_cases[: config.val_cases][rank::world], config.spacing,
                                 progress=progress and is_main)
    dataset = PatchDataset(subjects, config.patch_size, config.samples_per_epoch, config.seed,
                           pairs=config.pairs, levels=levels,
                           source_augment=config.source_augment,
                           source_meta_drop=config.source_meta_drop,
                           fill_targets=config.fill_target_metadata,
                           weights=case_sampling_weights(
                               [s.case.participant_id for s in subjects], config.case_weights))
    if config.out_grids and max(dataset.grid_levels) < config.max_out_factor:
        say(f"out_grids: no training case has voxels fine enough for {config.spacing}/"
            f"{config.max_out_factor} mm targets; finest output grid "
            f"{config.spacing}/{max(dataset.grid_levels)} mm")

    # ---------------------------------------------------------------- model
    model_cfg = model_config_dict(config.model)
    dataset.physics_prior = bool(model_cfg.get("physics_prior", False))  # rtfsyn.prior channel
    torch.manual_seed(config.seed)
    model = build_model(ModelConfig(**model_cfg)).to(dev)
    run_config = {
        "model": model_cfg,
        "train": config.model_dump(mode="json"),
        "data": [str(d) for d in data],
        "holdout_site": holdout_site,
    }
    if init_from is not None and not resume:
        weights, init_info = load_checkpoint(init_from)
        if init_info.config.get("model") != model_cfg:
            raise CheckpointError(
                f"{init_info.path}: its model config differs from this run's ("
                f"{init_info.config.get('model', {}).get('arch')} vs {model_cfg.get('arch')}): "
                "fine-tune with the checkpoint's own model config"
            )
        model.load_state_dict(weights)
        seen = set((init_info.info or {}).get("train_cases", []))
        split_info["train_cases"] = sorted(set(split_info["train_cases"]) | seen)
        split_info["train_sites"] = sorted(set(split_info["train_sites"])
                                           | set((init_info.info or {}).get("train_sites", [])))
        run_config["init_from"] = {"path": str(init_info.path), "step": init_info.step}
        say(f"initialised from {init_info.path} (step {init_info.step})")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    ema = EMA(model, config.ema_decay) if config.ema_decay else None
    return _Run(config=config, dev=dev, world=world, rank=rank, out=out, model=model, net=model,
                optimizer=optimizer, scheduler=scheduler, ema=ema, dataset=dataset,
                val_subjects=val_subjects, run_config=run_config, split_info=split_info,
                say=say)


def _resume(run: _Run) -> None:
    """Restore weights, optimiser, schedule, EMA, RNG states and step from ``last.*``."""
    weights, info = load_checkpoint(run.last_ckpt)
    if info.config.get("model") != run.run_config["model"]:
        raise CheckpointError(
            f"{run.last_ckpt}: the run's model config differs from the one given; resume "
            "with the same --config"
        )
    run.model.load_state_dict(weights)
    state = load_training_state(run.last_state)
    if int(state["step"]) != info.step:
        raise CheckpointError(
            f"{run.last_state} (step {state['step']}) does not match {run.last_ckpt} "
            f"(step {info.step}): the run folder is inconsistent"
        )
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    cuda_rng = state.get("cuda_rng")
    if cuda_rng is not None and torch.cuda.is_available():
        if len(cuda_rng) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_rng)
        else:  # a different GPU count: seed this process's device from the saved first state
            torch.cuda.set_rng_state(cuda_rng[0])
    if run.ema is not None and "ema" in state:
        run.ema.shadow = {k: v.to(run.dev) for k, v in state["ema"].items()}
    run.step = info.step
    run.best_psnr = float(state.get("best_psnr", -math.inf))
    run.seen = ConditioningRange.from_dict((info.info or {}).get("conditioning_range"))
    run.say(f"resumed from step {run.step}")


def _num_workers(run: _Run) -> int:
    """DataLoader workers: the config's, else by the cores this rank can use.

    On CPU the model's own threads need the cores (patch extraction is cheap), so workers
    only when there are cores to spare; on GPU up to 4 per rank.
    """
    if run.config.num_workers is not None:
        return run.config.num_workers
    per_rank = max(1, available_cpus() // run.world)
    if run.dev.type == "cpu":
        return 0 if per_rank <= 4 else min(2, per_rank // 4)
    return min(4, per_rank - 1)


def make_loader(run: _Run) -> DataLoader:
    """A ``DataLoader`` over the batches of steps ``run.step … max_steps − 1`` of this rank.

    A ``DistributedSampler`` splits the indices over ranks and a :class:`StepBatchSampler`
    cuts them into steps; items are pure functions of their keys, so the batches do not
    depend on the number of workers. The loader has its own generator, so creating it
    leaves the global torch RNG (dropout, …) untouched.
    """
    cfg = run.config
    sampler = DistributedSampler(run.dataset, num_replicas=run.world, rank=run.rank,
                                 shuffle=True, seed=cfg.seed, drop_last=True)
    grid_fn = None
    if cfg.out_grids:
        levels = run.dataset.grid_levels
        rank = run.rank

        def grid_fn(step: int) -> GridSpec:
            return sample_grid(cfg.seed, step, rank, cfg.patch_size, cfg.downscale_prob,
                               cfg.max_downscale, levels)

    batches = StepBatchSampler(sampler, cfg.batch_size, run.step, cfg.max_steps, grid_fn)
    workers = _num_workers(run)
    return DataLoader(run.dataset, batch_sampler=batches, num_workers=workers,
                      collate_fn=collate, pin_memory=run.dev.type == "cuda",
                      generator=torch.Generator().manual_seed(cfg.seed),
                      persistent_workers=False, prefetch_factor=2 if workers else None)


def _train_step(run: _Run, batch: dict[str, Any]) -> dict[str, float]:
    """One optimisation step on one batch; ``run.step`` is the step being taken (0-based).

    The loss is checked for NaN/inf *before* the backward pass and ``optimizer.step()``,
    and all ranks agree (an ``all_reduce``), so every rank stops together with a
    :class:`NonFiniteLossError` and no rank is left waiting in a collective.
    """
    cfg, dev = run.config, run.dev
    non_blocking = dev.type == "cuda"
    src = batch["source"].to(dev, non_blocking=non_blocking)
    tgt = batch["target"].to(dev, non_blocking=non_blocking)
    msk = batch["mask"].to(dev, non_blocking=non_blocking)
    src_meta = batch["source_meta"]
    if not cfg.out_grids:  # the original augmentation (out_grids samples it in the dataset)
        src, factors = downscale_batch(src, cfg, run.step, run.rank)
        if factors != (1.0, 1.0, 1.0):
            src_meta = [
                m.with_updates(voxel_size=tuple(
                    round(v * f, 4) for v, f in zip(m.voxel_size, factors, strict=True)))
                for m in src_meta
            ]
    run.seen.update(src_meta, batch["target_meta"], src.shape[2:], tgt.shape[2:])
    run.net.train()
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16,
                        enabled=cfg.amp and dev.type == "cuda"):
        pred = run.net(src, src_meta, batch["target_meta"], out_shape=tuple(tgt.shape[2:]))
    loss, parts = synthesis_loss(pred.float(), tgt, msk, cfg.ssim_weight, cfg.sorted_weight)
    _check_finite(run, parts["loss"], "loss")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
        # gradients are already averaged over ranks, so every rank sees the same norm
        if not math.isfinite(float(norm)):
            raise NonFiniteLossError(
                f"gradient norm became {float(norm)} at step {run.step + 1}: lower --lr or "
                "check the data")
    run.optimizer.step()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.model)
    run.step += 1
    return parts


def _check_finite(run: _Run, value: float, what: str) -> None:
    """Raise :class:`NonFiniteLossError` on every rank if ``value`` is NaN/inf on any rank."""
    bad_rank = 0 if math.isfinite(value) else run.rank + 1
    if run.distributed:
        flag = torch.tensor([bad_rank], device=run.dev)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        bad_rank = int(flag.item())
    if bad_rank:
        where = f" on rank {bad_rank - 1}" if run.distributed else ""
        shown = value if not math.isfinite(value) else "non-finite"
        raise NonFiniteLossError(
            f"{what} became {shown} at step {run.step + 1}{where}: lower --lr or check the data"
        )


def _loop(
    run: _Run, progress: bool, stop_after_steps: int | None, console: Console
) -> tuple[int, bool, dict[str, float]]:
    """Steps until ``max_steps`` or a stop condition; logs, validates and checkpoints."""
    cfg = run.config
    if run.distributed:
        run.net = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.dev.index] if run.dev.type == "cuda" else None
        )
    if run.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / "config.yaml").write_text(yaml.safe_dump(run.run_config, sort_keys=False))
        from torch.utils.tensorboard import SummaryWriter

        run.writer = SummaryWriter(str(run.out / "tensorboard"))
    stop_early = False
    t_loop = time.time()
    start_step = run.step
    columns = [TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    val_metrics: dict[str, float] = {}
    with Progress(*columns, console=console, disable=not (progress and run.is_main)) as bar:
        task = bar.add_task("train", total=cfg.max_steps, completed=run.step, info="")
        for batch in make_loader(run):
            parts = _train_step(run, batch)
            step = run.step
            bar.update(task, completed=step, info=f"loss {parts['loss']:.4f}")
            if run.writer is not None and (step % cfg.log_every == 0 or step == 1):
                for k, v in parts.items():
                    run.writer.add_scalar(f"train/{k}", v, step)
                run.writer.add_scalar("train/lr", run.scheduler.get_last_lr()[0], step)
            if step % cfg.val_every == 0 or step == cfg.max_steps:
                val_metrics = _validate(run)
                _record_validation(run, val_metrics)
            # stop conditions (agreed across ranks)
            # 2 = the time budget is spent (a planned end: final weights are written),
            # 1 = stop_after_steps (an emulated interruption: only the resume point)
            stop = 0
            if stop_after_steps is not None and step - start_step >= stop_after_steps:
                stop = 1
            if cfg.max_minutes is not None and (time.time() - t_loop) / 60 > cfg.max_minutes:
                stop = 2
            if run.distributed:
                flag = torch.tensor([stop], device=run.dev)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = int(flag.item())
            if step % cfg.ckpt_every == 0 or stop or step == cfg.max_steps:
                _save(run)
            if stop:
                stop_early = step < cfg.max_steps
                run.timed_out = stop == 2
                break
    return run.step, stop_early, val_metrics


def _save(run: _Run) -> None:
    """Write ``last.safetensors`` + ``last.state.pt`` (rank 0; all ranks merge the
    conditioning range first, then wait for rank 0 at a barrier)."""
    if run.distributed:
        run.seen.all_reduce(run.dev)
    if run.is_main:
        info = run.info(best_psnr=run.best_psnr)
        save_checkpoint(run.last_ckpt, run.model, run.run_config, step=run.step, info=info)
        state = {
            "step": run.step,
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "best_psnr": run.best_psnr,
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        if run.ema is not None:
            state["ema"] = {k: v.cpu() for k, v in run.ema.shadow.items()}
        save_training_state(run.last_state, state)
    if run.distributed:
        dist.barrier()


def _record_validation(run: _Run, val_metrics: dict[str, float]) -> None:
    """metrics.jsonl, best checkpoint and a console line (rank 0)."""
    if not (run.is_main and val_metrics):
        return
    with open(run.out / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": run.step, **val_metrics}) + "\n")
    if val_metrics.get("psnr", -math.inf) > run.best_psnr:
        run.best_psnr = val_metrics["psnr"]
        save_checkpoint(run.ckpt_dir / "best.safetensors",
                        run.ema.shadow if run.ema else run.model, run.run_config,
                        step=run.step, info=run.info(val=val_metrics))
    run.say(f"step {run.step}: val PSNR {val_metrics.get('psnr', float('nan')):.2f} dB, "
            f"SSIM {val_metrics.get('ssim', float('nan')):.4f}")


def _finish(run: _Run, val_metrics: dict[str, float], stop_early: bool) -> Path | None:
    """Final checkpoint (rank 0) and, under DDP, each rank's weight digest."""
    final = None
    if run.is_main:
        if run.step >= run.config.max_steps or run.timed_out:
            final = save_checkpoint(run.ckpt_dir / "final.safetensors",
                                    run.ema.shadow if run.ema else run.model, run.run_config,
                                    step=run.step, info=run.info(val=val_metrics))
        run.say(f"{'stopped' if stop_early else 'finished'} at step {run.step}; checkpoints in "
                f"{run.ckpt_dir}")
    if run.distributed:
        # DDP keeps replicas identical; record each rank's weight digest so it can be checked
        digests: list[str | None] = [None] * run.world
        dist.all_gather_object(digests, weights_digest(run.model))
        if run.is_main:
            (run.out / "ddp_ranks.json").write_text(json.dumps({"digests": digests}, indent=1))
            if len(set(digests)) != 1:
                run.say("[bold red]warning:[/] DDP replicas ended with different weights")
        dist.barrier()
    return final


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of all parameters and buffers (CPU bytes, state-dict order)."""
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def _validate(run: _Run) -> dict[str, float]:
    """Whole-volume synthesis on this rank's validation subjects; mean PSNR / SSIM over pairs.

    Validation is sharded (each rank holds ``val_cases[rank::world]``) and the sums are
    merged with one ``all_reduce``, so no rank waits long for another in a collective.
    """
    from rtfsyn.checkpoint import CheckpointInfo
    from rtfsyn.inference import LoadedModel, predict_volume
    from rtfsyn.metrics import psnr, ssim3d

    cfg, model, ema = run.config, run.model, run.ema
    sums = [0.0, 0.0, 0.0]  # psnr, ssim, count
    if run.val_subjects:
        if ema is not None:
            backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(ema.shadow)
        model.eval()
        info = CheckpointInfo(Path("<training>"), {}, run.step, __version__,
                              info={"sequence_conditioning": True})
        lm = LoadedModel(model, info,
                         run.dev, window=cfg.patch_size)
        try:
            for si, subj in enumerate(run.val_subjects):
                pairs = cfg.val_pairs or [(a, b) for a in subj.contrasts[:1]
                                          for b in subj.contrasts if a != b]
                for source, target in pairs:
                    if source not in subj.volumes or target not in subj.volumes:
                        continue
                    pred = predict_volume(lm, subj.volumes[source], subj.metadata(source),
                                          run.dataset.target_meta(subj, source, target))
                    pred = pred * subj.mask
                    real = subj.volumes[target]
                    sums[0] += psnr(pred, real, subj.mask)
                    sums[1] += ssim3d(pred, real, subj.mask)
                    sums[2] += 1
                    if run.writer is not None and si == 0:
                        run.writer.add_image(f"val/{source}->{target}",
                                             _panel(subj.volumes[source], pred, real), run.step,
                                             dataformats="HW")
        finally:
            if ema is not None:
                model.load_state_dict(backup)
    if run.distributed:
        t = torch.tensor(sums, dtype=torch.float64, device=run.dev)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        sums = t.tolist()
    if not sums[2]:
        return {}
    result = {"psnr": sums[0] / sums[2], "ssim": sums[1] / sums[2]}
    if run.writer is not None:
        for k, v in result.items():
            run.writer.add_scalar(f"val/{k}", v, run.step)
    return result


def _panel(src: np.ndarray, pred: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Mid-axial slices source | synthesized | real | |error| side by side (H, 4W)."""
    z = src.shape[2] // 2
    tiles = [src[:, :, z], pred[:, :, z], real[:, :, z], np.abs(pred - real)[:, :, z]]
    return np.clip(np.concatenate([np.rot90(t) for t in tiles], axis=1), 0, 1)
