"""Shared helpers of the model tests: a tiny config and a few metadata records."""

from __future__ import annotations

from typing import Any

import torch

from rtfsyn.metadata import Metadata
from rtfsyn.models import ModelConfig, build_model

TINY: dict[str, Any] = dict(
    encoder_channels=[8, 16], encoder_blocks=[1, 1], downsample=2, d_model=16, heads=2,
    attn_dim=16, pack_factor=2, fusion_blocks=1, post_blocks=1, dynconv_basis=3,
    dynconv_kernel=3, refinement_kernel=5, metadata_layers=1, decoder_hidden=16,
    decoder_layers=2, chunk_size=512, unet_channels=[8, 16], field_dropout=0.0,
)


def tiny_config(**changes: Any) -> ModelConfig:
    return ModelConfig(**{**TINY, **changes})


def tiny_model(seed: int = 0, **changes: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(tiny_config(**changes))


def metas() -> list[Metadata]:
    """Three different records; together every field is present in one and missing in another."""
    return [
        Metadata.from_string("contrast=T1w,sequence=MPRAGE,TR=2300,TE=3,TI=900,FA=9,field=3,"
                             "vendor=Siemens,voxel_size=1x1x1.2,slice_thickness=1.2,age=45,sex=F"),
        Metadata.from_string("contrast=T2w,TR=3200,TE=90,field=1.5,vendor=GE"),
        Metadata.from_string("contrast=FLAIR,sequence=IR,TI=2500,FA=150,vendor=Acme,sex=M"),
    ]


def targets() -> list[Metadata]:
    return [
        Metadata.from_string("contrast=T2w,sequence=TSE,TR=3000,TE=100,field=3"),
        Metadata.from_string("contrast=FLAIR,TR=9000,TE=120,TI=2500,age=70"),
        Metadata.from_string("contrast=T1w,vendor=Philips,voxel_size=2,sex=F"),
    ]
