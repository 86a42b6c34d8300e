"""Self-describing checkpoints (nanoGPT style) and resumable training state.

A **checkpoint** is one ``.safetensors`` file: the model weights plus string metadata
``format``, ``rtfsyn_version``, ``config`` (the model config as JSON), ``step``, optional
``info`` (JSON: training data, metrics, card summary) and ``weights_sha256`` (a digest of
every tensor's name, dtype, shape and bytes, see :func:`weights_digest`). Loading it never
unpickles anything; it checks the digest (checkpoints written before it existed have none
and still load) and that every weight is finite, and refuses with one line otherwise.

A **training state** (``*.state.pt``, written beside the checkpoint by the trainer) holds the
optimizer, scheduler, EMA and RNG states; it contains only tensors and plain Python values
and is read with ``torch.load(weights_only=True)``.

Both are written atomically (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rtfsyn import __version__
from rtfsyn.errors import RtfsynError
from rtfsyn.io import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointInfo",
    "atomic_write",
    "load_checkpoint",
    "load_training_state",
    "read_checkpoint_info",
    "save_checkpoint",
    "save_training_state",
    "verify_weights",
    "weights_digest",
]

CHECKPOINT_FORMAT = "rtfsyn-checkpoint/1"


class CheckpointError(RtfsynError):
    """A checkpoint file that is missing, corrupt or not an rtfsyn checkpoint."""


@dataclass
class CheckpointInfo:
    """What a checkpoint says about itself."""

    path: Path
    config: dict[str, Any]
    step: int
    version: str
    info: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str | None = None  # None: written before digests existed


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module | dict[str, torch.Tensor],
    config: dict[str, Any],
    step: int = 0,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write weights + config + version + step to one safetensors file, atomically."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    # safetensors refuses shared storage; clone makes every tensor own its memory
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    meta = {
        "format": CHECKPOINT_FORMAT,
        "rtfsyn_version": __version__,
        "config": json.dumps(config, sort_keys=True),
        "step": str(int(step)),
        "info": json.dumps(info or {}, sort_keys=True, default=str),
        "weights_sha256": weights_digest(tensors),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in name order: name, dtype, shape and raw bytes of each."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def verify_weights(path: Path, tensors: dict[str, torch.Tensor], expected: str | None) -> None:
    """Refuse (one line) weights that do not match their digest or are not finite."""
    if expected is not None and weights_digest(tensors) != expected:
        raise CheckpointError(
            f"{path}: the weights do not match the SHA-256 stored in the checkpoint (the file "
            "is corrupted or was altered): copy or download it again"
        )
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"{path}: weight {name} holds NaN or Inf values: the checkpoint is broken "
                "(diverged training or a damaged file)"
            )


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Read only the self-description (no weights) of a checkpoint."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors checkpoint ({str(exc).splitlines()[0]})"
        ) from None
    return _parse_meta(path, meta)


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Weights and self-description of a checkpoint (validated)."""
    info = read_checkpoint_info(path)
    try:
        tensors = load_file(str(info.path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{info.path}: weights cannot be read ({str(exc).splitlines()[0]})"
        ) from None
    verify_weights(info.path, tensors, info.weights_sha256)
    return tensors, info


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write optimizer / scheduler / RNG state (tensors and plain values only), atomically."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a training state with ``weights_only=True`` (no arbitrary unpickling)."""
    path = _existing(path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: training state cannot be read safely ({str(exc).splitlines()[0]})"
        ) from None


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder: give the .safetensors checkpoint file")
    return path


def _parse_meta(path: Path, meta: dict[str, str]) -> CheckpointInfo:
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not an rtfsyn checkpoint (format {meta.get('format')!r}, expected "
            f"{CHECKPOINT_FORMAT!r})"
        )
    try:
        config = json.loads(meta["config"])
        step = int(meta.get("step", "0"))
        info = json.loads(meta.get("info", "{}"))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is damaged ({exc})") from None
    return CheckpointInfo(path=path, config=config, step=step,
                          version=meta.get("rtfsyn_version", "?"), info=info,
                          weights_sha256=meta.get("weights_sha256"))
