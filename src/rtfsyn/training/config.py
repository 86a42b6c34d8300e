"""Training configuration (YAML ↔ pydantic), with bundled presets ``train-cpu`` / ``train-gpu``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rtfsyn.errors import RtfsynError

__all__ = ["TrainConfig", "case_sampling_weights", "load_train_config"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class TrainConfig(BaseModel):
    """Everything a training run needs besides the data folders.

    ``model`` is a bundled model-config name (``cpu-small``, ``gpu-base``), a YAML path, or
    an inline dict of :class:`rtfsyn.models.ModelConfig` fields.
    """

    model_config = ConfigDict(extra="forbid")

    model: str | dict[str, Any] = "cpu-small"
    spacing: float | None = Field(2.0, description="training voxel size in mm (None: native)")
    patch_size: int = Field(32, ge=8, le=256)
    batch_size: int = Field(2, ge=1)
    max_steps: int = Field(2000, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    lr: float = Field(2e-3, gt=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    ssim_weight: float = Field(1.0, ge=0)
    sorted_weight: float = Field(
        0.0, ge=0, description="weight of the sorted-intensity L1 (the patch's intensity "
        "distribution against the target's; rtfsyn.training.losses.masked_sorted_l1)")
    downscale_prob: float = Field(0.3, ge=0, le=1)
    max_downscale: float = Field(2.0, ge=1, le=8)
    fill_target_metadata: bool = Field(
        True, description="fill a target's missing TR/TE/TI/FA/field from the typical "
        "protocol, as synthesis does (real cases without sidecars)")
    source_augment: float = Field(
        0.0, ge=0, le=1, description="probability of a random intensity augmentation (gamma, "
        "bias field, histogram warp) of a sample's source patch (rtfsyn.training.augment)")
    source_meta_drop: float = Field(
        0.0, ge=0, le=1, description="probability that a sample's source metadata is cut to "
        "its contrast and voxel size, as a real scan without a sidecar gives it, so that a "
        "bare source does not mark a sample as one whose target protocol is the typical one")
    out_grids: bool = Field(
        False, description="random output grids (own / training / k-times finer) so that the "
        "target spacing and output-grid factor of inference lie in the training distribution")
    max_out_factor: int = Field(
        2, ge=1, le=4, description="finest output grid: spacing / max_out_factor (out_grids)")
    ema_decay: float | None = Field(None, gt=0, lt=1)
    val_fraction: float = Field(0.2, ge=0, lt=1)
    test_fraction: float = Field(
        0.2, ge=0, lt=1, description="participants per site kept as the test split (stored "
        "in the checkpoint, never used in training, validation or model choice)"
    )
    val_every: int = Field(500, ge=1)
    val_cases: int = Field(2, ge=0)
    val_pairs: list[tuple[str, str]] | None = None
    pairs: list[tuple[str, str]] | None = None
    case_weights: dict[str, float] | None = Field(
        None, description="relative sampling weight of training cases: {glob pattern on the "
        "participant id: weight > 0}; the first matching pattern counts, unmatched cases weigh "
        "1 (e.g. {'*real*': 4} samples the real cases of a mixed folder 4x as often)")
    samples_per_epoch: int = Field(1024, ge=1)
    log_every: int = Field(20, ge=1)
    ckpt_every: int = Field(500, ge=1)
    image_every: int | None = Field(None, ge=1, description="TensorBoard panels (default: val)")
    seed: int = 0
    num_workers: int | None = Field(
        None, ge=0, description="DataLoader workers for patch extraction (None: by CPU count)")
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")

    @field_validator("pairs", "val_pairs", mode="before")
    @classmethod
    def _pairs(cls, v: Any) -> Any:
        from rtfsyn.metadata import normalize_contrast

        if v is None:
            return None
        out = []
        for item in v:
            if isinstance(item, str):
                if ":" not in item:
                    raise ValueError(f"pair {item!r} must look like T1w:T2w")
                item = item.split(":", 1)
            out.append(tuple(normalize_contrast(x) for x in item))
        return out

    @field_validator("case_weights")
    @classmethod
    def _case_weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for pattern, w in (v or {}).items():
            if not (w > 0 and w < float("inf")):
                raise ValueError(f"case_weights[{pattern!r}] = {w}: use a finite weight > 0")
        return v


def case_sampling_weights(participants: list[str], patterns: dict[str, float] | None
                          ) -> list[float] | None:
    """Each participant's weight under ``case_weights`` (first matching glob; else 1).

    Raises :class:`RtfsynError` naming a pattern that matches no training participant, since
    a typo there would silently train the unweighted recipe.
    """
    from fnmatch import fnmatchcase

    if not patterns:
        return None
    unused = [p for p in patterns if not any(fnmatchcase(x, p) for x in participants)]
    if unused:
        raise RtfsynError(f"case_weights pattern(s) {unused} match no training participant "
                          f"(e.g. {participants[:3]}): fix the pattern or remove it")
    return [next((w for p, w in patterns.items() if fnmatchcase(x, p)), 1.0)
            for x in participants]


def load_train_config(source: str | Path | dict[str, Any] | None = None,
                      **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a bundled name, a YAML file or a dict, plus overrides.

    A YAML holding a bare model config (it has an ``arch`` key) is taken as ``model:``.
    """
    data: dict[str, Any]
    if source is None:
        data = {}
    elif isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        if not path.exists():
            bundled = CONFIG_DIR / f"{source}.yaml"
            if not bundled.exists():
                names = sorted(p.stem for p in CONFIG_DIR.glob("train-*.yaml"))
                raise RtfsynError(
                    f"config {source!r} is neither a file nor a bundled config "
                    f"({', '.join(names)})"
                )
            path = bundled
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise RtfsynError(
                f"config {path} is not valid YAML ({str(exc).splitlines()[0]})"
            ) from None
        if not isinstance(data, dict):
            raise RtfsynError(f"config {path} must be a YAML mapping")
        if "arch" in data:
            data = {"model": data}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise RtfsynError(
            f"training config field {loc}={err.get('input')!r} is invalid: {err['msg']}"
        ) from None
