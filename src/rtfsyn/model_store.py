"""Available models: the bundled default and checkpoints imported into ``$RTFSYN_HOME``."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from rtfsyn.checkpoint import CheckpointError, read_checkpoint_info
from rtfsyn.errors import RtfsynError
from rtfsyn.inference import BUNDLED_DIR, rtfsyn_home

__all__ = ["ModelEntry", "import_weights", "list_models"]


@dataclass
class ModelEntry:
    """One model the user can pass to ``--model`` by name."""

    name: str
    path: Path
    source: str  # "bundled" or "home"
    arch: str
    step: int
    version: str
    summary: str
    params: int | None = None


def _entry(path: Path, source: str) -> ModelEntry | None:
    try:
        info = read_checkpoint_info(path)
    except CheckpointError:
        return None
    card = info.info.get("card", {}) if isinstance(info.info, dict) else {}
    summary = card.get("summary") if isinstance(card, dict) else None
    if not summary:
        val = info.info.get("val") or {}
        summary = (f"val PSNR {val['psnr']:.2f} dB, SSIM {val['ssim']:.3f}"
                   if "psnr" in val and "ssim" in val else "no card")
    return ModelEntry(path.stem, path, source, str(info.config.get("model", {}).get("arch")),
                      info.step, info.version, summary)


def list_models() -> list[ModelEntry]:
    """Bundled models first, then ``$RTFSYN_HOME/models/*.safetensors``."""
    out = []
    for folder, source in ((BUNDLED_DIR, "bundled"), (rtfsyn_home() / "models", "home")):
        for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            entry = _entry(path, source)
            if entry is not None:
                if source == "home" and any(e.name == entry.name for e in out):
                    entry.source = "home (unused: a bundled model has this name)"
                out.append(entry)
    return out


def import_weights(path: str | Path, name: str | None = None, overwrite: bool = False) -> Path:
    """Validate a checkpoint (it must build and load) and copy it into ``$RTFSYN_HOME/models``."""
    from rtfsyn.checkpoint import atomic_write
    from rtfsyn.inference import load_model

    src = Path(path)
    name = name or src.stem
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise RtfsynError(f"model name {name!r} may hold only letters, digits, '-', '_', '.'")
    if (BUNDLED_DIR / f"{name}.safetensors").exists():
        raise RtfsynError(
            f"{name!r} is the name of a bundled model: choose another name with --name"
        )
    # raises a one-line CheckpointError if anything is wrong (digest, finite weights, config)
    load_model(src, "cpu")
    dest = rtfsyn_home() / "models" / f"{name}.safetensors"
    if dest.exists() and not overwrite:
        raise RtfsynError(f"a model named {name!r} already exists ({dest}): pass --overwrite "
                          "or --name")
    atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))
    return dest
