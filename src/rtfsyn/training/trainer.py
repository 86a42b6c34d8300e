"""The training loop: many-to-many patches, L1 + SSIM, AdamW + cosine, EMA, DDP, resume.

Run folder layout (``--out runs/NAME``)::

    config.yaml                 the resolved training config
    checkpoints/last.safetensors + last.state.pt    (resume point)
    checkpoints/best.safetensors                    (best validation PSNR)
    checkpoints/final.safetensors                   (weights at the end, EMA if enabled)
    tensorboard/                scalars and image panels
    metrics.jsonl               validation results, one JSON line per evaluation

Determinism: sample ``i`` of epoch ``e`` depends only on ``(seed, e, i)``; the down-scaling of
step ``s`` only on ``(seed, s)``; the torch RNG state is saved with each checkpoint. A run
stopped at a checkpoint and resumed therefore reaches the same weights as an uninterrupted
run (bit-exact on CPU).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
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
from rtfsyn.errors import RtfsynError
from rtfsyn.training.config import TrainConfig
from rtfsyn.training.dataset import PatchDataset, Subject, collate, load_subjects
from rtfsyn.training.losses import synthesis_loss

__all__ = ["TrainResult", "train"]


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
    """
    from rtfsyn.device import resolve_device
    from rtfsyn.models import ModelConfig, build_model

    t_start = time.time()
    console = console or Console(stderr=True)
    world, rank, local_rank = _dist_info()
    distributed = world > 1
    if distributed and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
        dist.init_process_group(backend=backend)
    if distributed and torch.cuda.is_available() and device != "cpu":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = resolve_device(device)
    is_main = rank == 0
    say = console.print if is_main else (lambda *a, **k: None)

    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    last_ckpt = ckpt_dir / "last.safetensors"
    last_state = ckpt_dir / "last.state.pt"
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
    say(f"[bold]rtfsyn train[/] {len(train_cases)} training, {len(val_cases)} validation, "
        f"{len(split.test)} test"
        + (f", {len(site_cases)} held-out-site ({holdout_site})" if holdout_site else "")
        + f" cases (split by participant); device {dev}; world size {world}")
    subjects = load_subjects(train_cases, config.spacing, progress=progress and is_main)
    val_subjects = load_subjects(val_cases[: config.val_cases], config.spacing,
                                 progress=progress and is_main)
    dataset = PatchDataset(subjects, config.patch_size, config.samples_per_epoch, config.seed,
                           pairs=config.pairs)

    # ---------------------------------------------------------------- model
    model_cfg = model_config_dict(config.model)
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
    step = 0
    best_psnr = -math.inf
    if resume:
        weights, info = load_checkpoint(last_ckpt)
        if info.config.get("model") != model_cfg:
            raise CheckpointError(
                f"{last_ckpt}: the run's model config differs from the one given; resume "
                "with the same --config"
            )
        model.load_state_dict(weights)
        state = load_training_state(last_state)
        if int(state["step"]) != info.step:
            raise CheckpointError(
                f"{last_state} (step {state['step']}) does not match {last_ckpt} "
                f"(step {info.step}): the run folder is inconsistent"
            )
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if ema is not None and "ema" in state:
            ema.shadow = {k: v.to(dev) for k, v in state["ema"].items()}
        step = info.step
        best_psnr = float(state.get("best_psnr", -math.inf))
        say(f"resumed from step {step}")
    net: torch.nn.Module = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )

    writer = None
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(run_config, sort_keys=False))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))

    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    steps_per_epoch = max(1, len(sampler) // config.batch_size)
    use_amp = config.amp and dev.type == "cuda"

    def save(tag_step: int) -> None:
        if not is_main:
            return
        info = {"best_psnr": best_psnr, "data": run_config["data"], **split_info}
        save_checkpoint(last_ckpt, model, run_config, step=tag_step, info=info)
        state = {
            "step": tag_step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "best_psnr": best_psnr,
        }
        if ema is not None:
            state["ema"] = {k: v.cpu() for k, v in ema.shadow.items()}
        save_training_state(last_state, state)

    # ---------------------------------------------------------------- loop
    stop_early = False
    t_loop = time.time()
    start_step = step
    columns = [TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    val_metrics: dict[str, float] = {}
    with Progress(*columns, console=console, disable=not (progress and is_main)) as bar:
        task = bar.add_task("train", total=config.max_steps, completed=step, info="")
        while step < config.max_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            indices = list(sampler)
            b = offset * config.batch_size
            batch = collate([dataset[i] for i in indices[b : b + config.batch_size]])
            src = batch["source"].to(dev)
            tgt = batch["target"].to(dev)
            msk = batch["mask"].to(dev)
            src, factors = downscale_batch(src, config, step, rank)
            src_meta = batch["source_meta"]
            if factors != (1.0, 1.0, 1.0):
                src_meta = [
                    m.with_updates(voxel_size=tuple(
                        round(v * f, 4) for v, f in zip(m.voxel_size, factors, strict=True)))
                    for m in src_meta
                ]
            net.train()
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                pred = net(src, src_meta, batch["target_meta"], out_shape=tuple(tgt.shape[2:]))
            loss, parts = synthesis_loss(pred.float(), tgt, msk, config.ssim_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            step += 1
            if not math.isfinite(parts["loss"]):
                raise RtfsynError(
                    f"loss became {parts['loss']} at step {step}: lower --lr or check the data"
                )
            bar.update(task, completed=step, info=f"loss {parts['loss']:.4f}")
            if writer is not None and (step % config.log_every == 0 or step == 1):
                for k, v in parts.items():
                    writer.add_scalar(f"train/{k}", v, step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            if step % config.val_every == 0 or step == config.max_steps:
                val_metrics = _validate(model, ema, val_subjects, config, dev, writer, step,
                                        is_main)
                if is_main and val_metrics:
                    with open(out / "metrics.jsonl", "a") as fh:
                        fh.write(json.dumps({"step": step, **val_metrics}) + "\n")
                    if val_metrics.get("psnr", -math.inf) > best_psnr:
                        best_psnr = val_metrics["psnr"]
                        save_checkpoint(ckpt_dir / "best.safetensors",
                                        ema.shadow if ema else model, run_config, step=step,
                                        info={"val": val_metrics, **split_info})
                    say(f"step {step}: val PSNR {val_metrics.get('psnr', float('nan')):.2f} dB, "
                        f"SSIM {val_metrics.get('ssim', float('nan')):.4f}")
            # stop conditions (agreed across ranks)
            stop = 0
            if config.max_minutes is not None and (time.time() - t_loop) / 60 > config.max_minutes:
                stop = 1
            if stop_after_steps is not None and step - start_step >= stop_after_steps:
                stop = 1
            if distributed:
                flag = torch.tensor([stop], device=dev)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = int(flag.item())
            if step % config.ckpt_every == 0 or stop or step == config.max_steps:
                save(step)
            if stop:
                stop_early = step < config.max_steps
                break

    final = None
    if is_main:
        if step >= config.max_steps:
            final = save_checkpoint(ckpt_dir / "final.safetensors", ema.shadow if ema else model,
                                    run_config, step=step,
                                    info={"val": val_metrics, "data": run_config["data"],
                                          **split_info})
        if writer is not None:
            writer.close()
        say(f"{'stopped' if stop_early else 'finished'} at step {step}; checkpoints in {ckpt_dir}")
    if distributed:
        # DDP keeps replicas identical; record each rank's weight digest so it can be checked
        digests: list[str | None] = [None] * world
        dist.all_gather_object(digests, weights_digest(model))
        if is_main:
            (out / "ddp_ranks.json").write_text(json.dumps({"digests": digests}, indent=1))
            if len(set(digests)) != 1:
                say("[bold red]warning:[/] DDP replicas ended with different weights")
        dist.barrier()
    best = ckpt_dir / "best.safetensors"
    return TrainResult(out, step, last_ckpt, final, best if best.exists() else None,
                       val_metrics, stop_early, time.time() - t_start)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of all parameters and buffers (CPU bytes, state-dict order)."""
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def _validate(
    model: torch.nn.Module,
    ema: EMA | None,
    subjects: list[Subject],
    cfg: TrainConfig,
    dev: torch.device,
    writer: Any,
    step: int,
    is_main: bool,
) -> dict[str, float]:
    """Whole-volume synthesis on validation subjects; mean PSNR / SSIM over pairs."""
    if not subjects or not is_main:
        return {}
    from rtfsyn.checkpoint import CheckpointInfo
    from rtfsyn.inference import LoadedModel, predict_volume
    from rtfsyn.metrics import psnr, ssim3d

    if ema is not None:
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(ema.shadow)
    model.eval()
    lm = LoadedModel(model, CheckpointInfo(Path("<training>"), {}, step, __version__), dev,
                     window=cfg.patch_size)
    scores: dict[str, list[float]] = {"psnr": [], "ssim": []}
    try:
        for si, subj in enumerate(subjects):
            pairs = cfg.val_pairs or [(a, b) for a in subj.contrasts[:1] for b in subj.contrasts
                                      if a != b]
            for source, target in pairs:
                if source not in subj.volumes or target not in subj.volumes:
                    continue
                pred = predict_volume(lm, subj.volumes[source], subj.metadata(source),
                                      subj.metadata(target))
                pred = pred * subj.mask
                real = subj.volumes[target]
                scores["psnr"].append(psnr(pred, real, subj.mask))
                scores["ssim"].append(ssim3d(pred, real, subj.mask))
                if writer is not None and si == 0:
                    writer.add_image(f"val/{source}->{target}",
                                     _panel(subj.volumes[source], pred, real), step,
                                     dataformats="HW")
    finally:
        if ema is not None:
            model.load_state_dict(backup)
    result = {k: float(np.mean(v)) for k, v in scores.items() if v}
    if writer is not None:
        for k, v in result.items():
            writer.add_scalar(f"val/{k}", v, step)
    return result


def _panel(src: np.ndarray, pred: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Mid-axial slices source | synthesized | real | |error| side by side (H, 4W)."""
    z = src.shape[2] // 2
    tiles = [src[:, :, z], pred[:, :, z], real[:, :, z], np.abs(pred - real)[:, :, z]]
    return np.clip(np.concatenate([np.rot90(t) for t in tiles], axis=1), 0, 1)
