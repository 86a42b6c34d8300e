"""Whole-volume synthesis: model loading, sliding-window prediction and the Python API.

Pipeline for one image (:func:`synthesize`):

1. load and validate, reorient to RAS canonical;
2. output grid ``G`` = the input grid, or the input resampled to ``spacing``;
3. brain mask (non-zero region of the input, or ``mask``) and robust [0, 1] normalisation;
4. crop to the brain bounding box; choose an integer factor ``k`` per axis so that the work
   grid (``G`` block-averaged by ``k``) is close to the spacing the model was trained at;
5. MONAI sliding-window inference with Gaussian blending over the work grid; the model's
   implicit decoder is queried on the ``k``-times finer grid ``G`` (block-aligned, so voxel
   ``i`` of the output is exactly voxel ``i`` of ``G``);
6. paste back, zero outside the mask, undo the reorientation; the result has the input's
   affine and header (with ``spacing``: the input's orientation and field of view, resampled
   to ``spacing`` mm; the axis order and directions stay those of the input).

Output intensities are in the normalised [0, 1] range of the training data (also written in
the NIfTI ``descrip``); ``rtfsyn synthesize --intensity-like REF`` rescales them.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from rtfsyn import __version__, io
from rtfsyn.checkpoint import CheckpointError, CheckpointInfo, load_checkpoint
from rtfsyn.errors import MetadataError, RtfsynError
from rtfsyn.metadata import Metadata
from rtfsyn.preprocess import (
    bounding_box,
    brain_mask,
    robust_normalize,
    skull_strip_warning,
)

__all__ = [
    "LoadedModel",
    "block_factors",
    "default_model_path",
    "load_model",
    "predict_volume",
    "synthesize",
]

BUNDLED_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL_NAME = "rtfsyn-default"


@dataclass
class LoadedModel:
    """A model ready for inference plus what its checkpoint says about itself."""

    model: torch.nn.Module
    info: CheckpointInfo
    device: torch.device
    name: str = ""
    spacing: float | None = None  # training voxel spacing (mm)
    window: int = 32
    extra: dict[str, Any] = field(default_factory=dict)


def rtfsyn_home() -> Path:
    """``$RTFSYN_HOME`` (default ``~/.rtfsyn``): where imported models live."""
    return Path(os.environ.get("RTFSYN_HOME", Path.home() / ".rtfsyn")).expanduser()


def default_model_path() -> Path:
    """The bundled default checkpoint (shipped as package data)."""
    return BUNDLED_DIR / f"{DEFAULT_MODEL_NAME}.safetensors"


def resolve_model_path(model: str | Path | None) -> Path:
    """A checkpoint path from ``None`` (bundled default), a model name or a file path."""
    if model is None:
        path = default_model_path()
        if not path.exists():
            raise CheckpointError(
                "no bundled model in this installation: pass --model CKPT (train one with "
                "`rtfsyn train`)"
            )
        return path
    path = Path(model).expanduser()
    if path.exists():
        return path
    for folder in (BUNDLED_DIR, rtfsyn_home() / "models"):
        cand = folder / f"{model}.safetensors"
        if cand.exists():
            return cand
    raise CheckpointError(
        f"model {model!r} is neither a file nor a known model name: see `rtfsyn models`"
    )


def load_model(
    model: str | Path | None = None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Build a model from a self-describing checkpoint and load its weights (eval mode)."""
    from rtfsyn.models import ModelConfig, build_model

    path = resolve_model_path(model)
    weights, info = load_checkpoint(path)
    cfg = info.config.get("model")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: checkpoint config has no model section")
    try:
        net = build_model(ModelConfig(**cfg))
    except Exception as exc:
        raise CheckpointError(
            f"{path}: model config cannot be built by rtfsyn {__version__} "
            f"(checkpoint from {info.version}): {str(exc).splitlines()[0]}"
        ) from None
    missing, unexpected = net.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the config ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors, e.g. {(missing or unexpected)[0]})"
        )
    dev = torch.device(device)
    net.to(dev).eval()
    train = info.config.get("train", {})
    return LoadedModel(
        model=net, info=info, device=dev, name=path.stem,
        spacing=train.get("spacing"), window=int(train.get("patch_size", 32)),
    )


# --------------------------------------------------------------------------- core prediction
def block_factors(grid_spacing: Sequence[float], model_spacing: float | None) -> tuple[int, ...]:
    """Integer factor per axis so that ``grid_spacing × k`` is close to the training spacing."""
    if model_spacing is None:
        return (1, 1, 1)
    return tuple(max(1, round(model_spacing / s)) for s in grid_spacing)


def predict_volume(
    lm: LoadedModel,
    source: np.ndarray,
    source_meta: Metadata,
    target_meta: Metadata,
    *,
    factors: Sequence[int] = (1, 1, 1),
    window: int | None = None,
    overlap: float = 0.25,
    sw_batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Synthesize a normalised volume on the grid of ``source`` (shape ``(D, H, W)``).

    ``source`` is block-averaged by ``factors`` to the work grid; the model outputs the
    ``factors``-times finer grid, cropped back to ``source.shape``.
    """
    from monai.inferers import sliding_window_inference

    k = tuple(int(f) for f in factors)
    window = int(window or lm.window)
    shape = np.array(source.shape)
    padded = (np.ceil(shape / k) * k).astype(int)
    vol = np.zeros(tuple(padded), np.float32)
    vol[: shape[0], : shape[1], : shape[2]] = source
    x = torch.from_numpy(vol)[None, None]
    if any(f > 1 for f in k):
        x = F.avg_pool3d(x, kernel_size=k, stride=k)
    work_vox = tuple(float(v) * f for v, f in zip(source_meta.voxel_size or (1.0,) * 3, k,
                                                    strict=True))
    src_meta = source_meta.with_updates(voxel_size=work_vox)
    roi = tuple(min(window, s) if s < window else window for s in x.shape[2:])
    n_windows = _count_windows(x.shape[2:], roi, overlap)
    done = [0]

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        out_shape = tuple(int(s * f) for s, f in zip(batch.shape[2:], k, strict=True))
        n = batch.shape[0]
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16,
                            enabled=lm.device.type == "cuda"):
            y = lm.model(batch, [src_meta] * n, [target_meta] * n, out_shape=out_shape)
        done[0] += n
        if progress is not None:
            progress(done[0], n_windows)
        return y.float()

    with torch.inference_mode():
        y = sliding_window_inference(
            x.to(lm.device), roi_size=roi, sw_batch_size=sw_batch_size, predictor=predictor,
            overlap=overlap, mode="gaussian", sw_device=lm.device, device=torch.device("cpu"),
        )
    out = y[0, 0].numpy()
    out = out[: shape[0], : shape[1], : shape[2]]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _count_windows(size: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    n = 1
    for s, r in zip(size, roi, strict=True):
        step = max(1, int(r * (1 - overlap)))
        n *= 1 if s <= r else math.ceil((s - r) / step) + 1
    return n


# --------------------------------------------------------------------------- public API
def as_metadata(value: Metadata | str | dict | Path | None, default_contrast: str | None,
                 what: str) -> Metadata | None:
    if value is None:
        return None if default_contrast is None else Metadata.from_dict(
            {"contrast": default_contrast})
    if isinstance(value, Metadata):
        meta = value
    elif isinstance(value, dict):
        meta = Metadata.from_dict(
            {"contrast": default_contrast, **value} if default_contrast and "contrast" not in
            value else value)
    elif isinstance(value, Path) or (isinstance(value, str) and value.endswith(".json")):
        meta = Metadata.from_sidecar(value, contrast=default_contrast)
    else:
        text = str(value)
        parts = [p for p in re.split(r"[,;]", text) if p.strip()]
        bare = any("=" not in p for p in parts)  # "T2w" or "T2w,TE=90": names the contrast
        if default_contrast and "contrast" not in text.lower() and not bare:
            text = f"contrast={default_contrast},{text}"
        meta = Metadata.from_string(text)
    wanted = (None if default_contrast is None
              else Metadata.from_dict({"contrast": default_contrast}).contrast)
    if wanted is not None and meta.contrast != wanted:
        raise MetadataError(
            f"{what} metadata says contrast {meta.contrast.value} but {default_contrast} was "
            "requested: make them agree"
        )
    return meta


def find_sidecar(path: str | Path) -> Path | None:
    """The JSON sidecar beside a NIfTI file (same stem), if any."""
    p = Path(path)
    for suffix in (".nii.gz", ".nii"):
        if p.name.lower().endswith(suffix):
            cand = p.with_name(p.name[: -len(suffix)] + ".json")
            return cand if cand.exists() else None
    return None


@dataclass
class SynthesisResult:
    """The synthesized image plus provenance."""

    image: nib.Nifti1Image
    provenance: dict[str, Any]


def synthesize_image(
    image: nib.Nifti1Image | str | Path,
    target: str | None = None,
    metadata: Metadata | str | dict | Path | None = None,
    *,
    source_metadata: Metadata | str | dict | Path | None = None,
    source_contrast: str | None = None,
    model: LoadedModel | str | Path | None = None,
    mask: nib.Nifti1Image | str | Path | None = None,
    spacing: float | Sequence[float] | None = None,
    device: str = "auto",
    overlap: float = 0.25,
    progress: Callable[[int, int], None] | None = None,
) -> SynthesisResult:
    """Synthesize one target-contrast volume; see :func:`synthesize` (returns provenance too)."""
    from rtfsyn.device import resolve_device

    t0 = time.perf_counter()
    warnings_: list[str] = []
    src_path: Path | None = None
    if isinstance(image, (str, Path)):
        src_path = Path(image)
        img = io.load_nifti(src_path)
    elif isinstance(image, nib.Nifti1Image):
        img = image
        io.validate_image(img)
    else:
        raise RtfsynError(f"image must be a NIfTI path or nibabel image, got {type(image)!r}")
    if target is None and metadata is None:
        raise MetadataError("say what to synthesize: give a target contrast (e.g. T2w)")
    tgt_meta = as_metadata(metadata, target, "target")
    assert tgt_meta is not None
    if source_metadata is None and src_path is not None:
        source_metadata = find_sidecar(src_path)
    src_meta, contrast_from = resolve_source_metadata(source_metadata, source_contrast, src_path)

    if isinstance(model, LoadedModel):
        lm = model
    else:
        lm = load_model(model, resolve_device(device))

    # resample in the input's own orientation, so the output keeps its axis order/direction
    base = img if spacing is None else io.resample_to_spacing(img, spacing)
    grid = io.to_canonical(base)
    # the model sees the RAS grid: both voxel sizes are that grid's, in RAS order, whatever
    # the input's axis order or a voxel size given with the metadata
    vox = io.canonical_voxel_size(grid)
    src_meta = src_meta.with_updates(voxel_size=vox)
    tgt_meta = tgt_meta.with_updates(voxel_size=vox)
    data = np.asarray(grid.dataobj, dtype=np.float32)
    if mask is not None:
        mimg = io.load_nifti(mask) if not isinstance(mask, nib.Nifti1Image) else mask
        mgrid = io.resample_to_reference(io.to_canonical(mimg), grid, order=0)
        bmask = np.asarray(mgrid.dataobj) > 0.5
        if not bmask.any():
            raise RtfsynError("the given mask is empty on the input grid: check that it matches")
    else:
        bmask = brain_mask(data)
        skull = skull_strip_warning(data, bmask)
        if skull:
            warnings_.append(skull)
    norm, (lo, hi) = robust_normalize(data, bmask)
    k = block_factors(io.spacing_of(grid), lm.spacing)
    box = bounding_box(bmask, margin=4)
    # align the crop start to the block factors so output voxels stay on the grid
    box = tuple(slice(s.start - s.start % f, s.stop) for s, f in zip(box, k, strict=True))
    pred = predict_volume(lm, norm[box], src_meta, tgt_meta, factors=k, overlap=overlap,
                          progress=progress)
    out = np.zeros(data.shape, np.float32)
    out[box] = pred
    out[~bmask] = 0.0
    result = io.from_canonical(out, base)
    result.header["descrip"] = describe_output(tgt_meta.contrast.value)
    seconds = time.perf_counter() - t0
    prov = {
        "rtfsyn_version": __version__,
        "input": str(src_path) if src_path else None,
        "source_metadata": src_meta.model_dump(mode="json", exclude_none=True),
        "target_metadata": tgt_meta.model_dump(mode="json", exclude_none=True),
        "source_prompt": src_meta.prompt(),
        "prompt": tgt_meta.prompt(),
        "model": {"name": lm.name, "path": str(lm.info.path), "step": lm.info.step,
                  "arch": lm.info.config.get("model", {}).get("arch"),
                  "trained_with": lm.info.version},
        "device": str(lm.device),
        "spacing": None if spacing is None else list(io.spacing_of(grid)),
        "work_factors": list(k),
        "source_intensity_range": [lo, hi],
        "output_units": OUTPUT_UNITS,
        "source_contrast_from": contrast_from,
        "warnings": warnings_,
        "seconds": round(seconds, 3),
    }
    return SynthesisResult(result, prov)


def synthesize(
    image: nib.Nifti1Image | str | Path,
    target: str | None = None,
    metadata: Metadata | str | dict | Path | None = None,
    model: LoadedModel | str | Path | None = None,
    **kwargs: Any,
) -> nib.Nifti1Image:
    """Synthesize a target-contrast volume from a source image.

    Args:
        image: source NIfTI path or nibabel image.
        target: target contrast (``T2w``, ``FLAIR``, ``PDw``, ``T1Gd``, ``T1w`` or an alias).
        metadata: target acquisition metadata: :class:`Metadata`, a dict, a
            ``"TR=3000,TE=90"`` string or a JSON sidecar path.
        model: checkpoint path, model name, a :func:`load_model` result, or None for the
            bundled default.
            A bare contrast (``"T2w"``) is accepted. Voxel sizes are always those of the
            grid the model sees, in RAS order (:func:`rtfsyn.io.canonical_voxel_size`),
            whatever the input's axis order or a voxel size given here.
        **kwargs: ``source_metadata``, ``source_contrast``, ``mask``, ``spacing``,
            ``device``, ``overlap`` (see :func:`synthesize_image`).

    Returns:
        The synthesized image on the input grid with the input's affine (or on a grid of
        ``spacing`` mm), intensities normalised to [0, 1] inside the brain.
    """
    return synthesize_image(image, target, metadata, model=model, **kwargs).image


OUTPUT_UNITS = "normalised [0, 1] (0.5-99.5 percentile of the source in the brain)"


def describe_output(contrast: str, scale: str = "intensity 0-1 (normalised)") -> str:
    """The NIfTI ``descrip`` of a synthesized image (at most 79 characters)."""
    return f"rtfsyn {__version__} synthetic {contrast}, {scale}"[:79]


def resolve_source_metadata(
    value: Metadata | str | dict | Path | None,
    source_contrast: str | None,
    src_path: Path | None,
) -> tuple[Metadata, str]:
    """Source metadata and where its contrast came from (``-s``, sidecar, string, file name).

    The contrast is taken, in this order, from ``source_contrast`` (``-s``), the metadata
    (a sidecar's name / ``BidsGuess`` / series description, or ``contrast=`` in a string),
    then the input's file name. If nothing says it, a :class:`MetadataError` asks for ``-s``.
    """
    name = src_path.name if src_path is not None else "the input image"
    if source_contrast is not None:
        meta = as_metadata(value, source_contrast, "source")
        assert meta is not None
        return meta, "-s/--source-contrast"
    from_name = _contrast_from_name(src_path)
    if isinstance(value, Metadata):
        return value, "the given source metadata"
    if isinstance(value, dict) and value.get("contrast"):
        return Metadata.from_dict(value), "the given source metadata"
    if isinstance(value, Path) or (isinstance(value, str) and value.endswith(".json")):
        try:
            return Metadata.from_sidecar(value), f"sidecar {Path(value).name}"
        except MetadataError as exc:
            if from_name is None or "cannot tell the contrast" not in str(exc):
                raise
        meta = Metadata.from_sidecar(value, contrast=from_name)
        return meta, f"file name {name}"
    if isinstance(value, str) and "contrast" in value.lower():
        return Metadata.from_string(value), "--source-meta"
    if from_name is None:
        raise MetadataError(
            f"cannot tell the source contrast of {name}: neither its name nor a sidecar says "
            "it; pass -s/--source-contrast (T1w, T1Gd, T2w, FLAIR or PDw)"
        )
    meta = as_metadata(value, from_name, "source")
    assert meta is not None
    return meta, f"file name {name}"


def _contrast_from_name(path: Path | None) -> str | None:
    if path is None:
        return None
    from rtfsyn.data.folder import classify_file

    kind = classify_file(path.name)
    return kind if kind not in (None, "mask", "labels") else None


def provenance_path(out: str | Path) -> Path:
    """``OUT.rtfsyn.json`` beside ``OUT.nii.gz``: never the BIDS sidecar name ``OUT.json``."""
    from rtfsyn.data.cases import strip_nii

    out = Path(out)
    return out.with_name(strip_nii(out.name) + ".rtfsyn.json")


def write_provenance(path: Path, provenance: dict[str, Any]) -> Path:
    """Write the provenance JSON (``OUT.rtfsyn.json``, see :func:`provenance_path`) atomically."""
    from rtfsyn.checkpoint import atomic_write

    def _write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(provenance, indent=2, default=str) + "\n")

    return atomic_write(path, _write)
