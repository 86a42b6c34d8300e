"""Parameter, FLOP and attention-map accounting shared by ``rtfsyn model-info`` and
``benchmarks/model_efficiency.py``.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` (one multiply-add
= 2 FLOPs; convolutions, matmuls and linear layers — gathers, ``grid_sample``, norms and
activations are not counted). Attention is computed explicitly in rtfsyn, so its matmuls
are included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rtfsyn.metadata import Metadata

__all__ = [
    "attention_map_elements",
    "count_flops",
    "count_parameters",
    "example_metadata",
    "metadata_tokens",
    "profile_model",
]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (of the module tree; a frozen text model is not part of it)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def example_metadata(batch_size: int = 1) -> tuple[list[Metadata], list[Metadata]]:
    """A typical (source, target) metadata pair, T1w → T2w, repeated ``batch_size`` times."""
    src = Metadata.from_string(
        "contrast=T1w,sequence=MPRAGE,TR=2300,TE=2.98,TI=900,FA=9,field=3,vendor=Siemens,"
        "voxel_size=1x1x1,slice_thickness=1,age=45,sex=F"
    )
    tgt = Metadata.from_string(
        "contrast=T2w,sequence=TSE,TR=3200,TE=90,FA=120,field=3,vendor=Siemens,"
        "voxel_size=1x1x1,slice_thickness=1,age=45,sex=F"
    )
    return [src] * batch_size, [tgt] * batch_size


def count_flops(model: nn.Module, window: int | Sequence[int], batch_size: int = 1,
                out_shape: Sequence[int] | None = None) -> int:
    """FLOPs of one forward pass on a ``window³`` (or ``(D, H, W)``) input (no_grad, eval)."""
    shape = (window,) * 3 if isinstance(window, int) else tuple(window)
    src, tgt = example_metadata(batch_size)
    x = torch.zeros(batch_size, 1, *shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x, src, tgt, out_shape=out_shape)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def metadata_tokens(model: nn.Module) -> int:
    """Metadata tokens ``L`` seen by the attention of ``model`` for :func:`example_metadata`."""
    cond = getattr(model, "conditioner", None)
    if cond is None:
        return 0
    src, tgt = example_metadata(1)
    with torch.no_grad():
        was = cond.training
        cond.eval()
        enc = cond(src, tgt, batch_size=1)
        cond.train(was)
    return int(enc.tokens.shape[1])


def attention_map_elements(model: nn.Module, window: int | Sequence[int],
                           batch_size: int = 1) -> int:
    """Elements of all cross-attention maps of one forward pass, computed analytically.

    0 for models without cross-attention (unet3d).
    """
    shape = (window,) * 3 if isinstance(window, int) else tuple(window)
    enc = getattr(model, "encoder", None)
    if enc is None or not hasattr(enc, "downsample"):
        return 0
    s = enc.downsample
    latent = tuple(math.ceil(n / s) for n in shape)
    n_tok = metadata_tokens(model)
    total = 0
    for m in model.modules():
        if hasattr(m, "attention_map_elements") and m is not model:
            total += m.attention_map_elements(latent, n_tok, batch_size)
    return total


def profile_model(model: nn.Module, window: int, batch_size: int = 1) -> dict[str, Any]:
    """Params, FLOPs, FLOPs per output voxel and attention-map size for a ``window³`` input."""
    flops = count_flops(model, window, batch_size)
    voxels = batch_size * window**3
    att = attention_map_elements(model, window, batch_size)
    return {
        "params": count_parameters(model),
        "flops": flops,
        "flops_per_voxel": flops / voxels,
        "attention_elements": att,
        "attention_bytes": 4 * att,
    }
