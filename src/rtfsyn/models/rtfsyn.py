"""The RTFSyn network: encode → refine → fuse (packed attention + dynamic conv) → decode.

``RTFSyn.forward(image, source_meta, target_meta, out_shape)`` is the single code path for
training and inference. The input is padded (replicate) to a multiple of the encoder's
down-sampling factor; the decoder is queried on the voxel centres of an ``out_shape`` grid
over the *original* field of view (coordinates are mapped into the padded latent frame), so
``out_shape`` may be finer or coarser than the input along any axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from rtfsyn.models._common import (
    ModelError,
    ResBlock3d,
    check_choice,
    check_int,
    pad_to_multiple,
)
from rtfsyn.models.axis_refinement import AxisAwareRefinement
from rtfsyn.models.conv_head import ConvHead
from rtfsyn.models.fusion import CrossModalAdaptiveFusion
from rtfsyn.models.implicit_decoder import ImplicitDecoder, make_coord_grid
from rtfsyn.models.metadata_encoder import MetadataConditioner, MetadataEncoding, MetaInput
from rtfsyn.models.visual_encoder import VisualEncoder

__all__ = ["LatentState", "LatentSynthesizer", "RTFSyn"]


class LatentState(NamedTuple):
    """What :meth:`LatentSynthesizer.encode` returns (everything the decoder needs).

    Attributes:
        latent: ``(B, C, d, h, w)`` fused latent features (of the padded input).
        skip: ``(B, S, D', H', W')`` full-resolution features of the padded input, or None.
        pooled: ``(B, d_model)`` pooled metadata vector.
        in_shape: spatial shape of the input before padding.
        padded_shape: spatial shape after padding.
    """

    latent: torch.Tensor
    skip: torch.Tensor | None
    pooled: torch.Tensor
    in_shape: tuple[int, int, int]
    padded_shape: tuple[int, int, int]


class LatentSynthesizer(nn.Module):
    """Shared skeleton of :class:`RTFSyn` and the ``crossattn`` baseline.

    Subclasses build ``conditioner``, ``encoder``, ``decoder`` (an :class:`ImplicitDecoder`
    or a :class:`ConvHead`) and implement :meth:`fuse`.
    """

    conditioner: MetadataConditioner
    encoder: VisualEncoder
    decoder: nn.Module
    use_skip: bool

    def fuse(self, latent: torch.Tensor, cond: MetadataEncoding) -> torch.Tensor:
        raise NotImplementedError

    def encode(
        self, image: torch.Tensor, source_meta: MetaInput, target_meta: MetaInput
    ) -> LatentState:
        """Image ``(B, 1, D, H, W)`` + metadata → :class:`LatentState`."""
        if image.ndim != 5:
            raise ModelError(f"image must be (B, C, D, H, W): got shape {tuple(image.shape)}")
        b = image.shape[0]
        cond = self.conditioner(source_meta, target_meta, batch_size=b)
        if cond.tokens.shape[0] != b:
            raise ModelError(f"metadata batch {cond.tokens.shape[0]} != image batch {b}")
        x, in_shape = pad_to_multiple(image, self.encoder.downsample)
        feats = self.encoder(x)
        latent = self.fuse(feats.latent, cond)
        return LatentState(latent, feats.skip if self.use_skip else None, cond.pooled,
                           in_shape, tuple(int(s) for s in x.shape[2:]))  # type: ignore[arg-type]

    @staticmethod
    def _scale(state: LatentState, device: torch.device) -> torch.Tensor:
        """Per-axis ``in / padded`` size: maps input-frame coordinates into the padded frame."""
        return torch.tensor([i / p for i, p in zip(state.in_shape, state.padded_shape,
                                                   strict=True)], device=device)

    def _to_padded(self, state: LatentState, coords: torch.Tensor) -> torch.Tensor:
        return (coords + 1.0) * self._scale(state, coords.device) - 1.0

    def query(
        self,
        state: LatentState,
        coords: torch.Tensor,
        cell: torch.Tensor,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Intensities ``(B, Q, 1)`` at ``coords (B, Q, 3)`` with voxel size ``cell``.

        ``coords``/``cell`` are normalised over the *input's* field of view (see
        :mod:`rtfsyn.models.implicit_decoder`); only with the implicit decoder.
        """
        if not isinstance(self.decoder, ImplicitDecoder):
            raise ModelError("query() needs the implicit decoder (this model has a conv head)")
        return self.decoder(state.latent, self._to_padded(state, coords.float()),
                            cell.float() * self._scale(state, coords.device), state.pooled,
                            state.skip,
                            chunk_size=chunk_size)

    def forward(
        self,
        image: torch.Tensor,
        source_meta: MetaInput,
        target_meta: MetaInput,
        out_shape: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """``image (B, 1, D, H, W)`` → synthesized ``(B, 1, *out_shape)`` (default: D, H, W).

        ``source_meta``/``target_meta``: a list of B :class:`~rtfsyn.metadata.Metadata`,
        one record (broadcast), or the tensors of
        :func:`~rtfsyn.models.metadata_encoder.encode_fields` (structured encoder).
        """
        state = self.encode(image, source_meta, target_meta)
        shape = tuple(int(s) for s in (out_shape or state.in_shape))
        if len(shape) != 3 or min(shape) < 1:
            raise ModelError(f"out_shape={out_shape!r} must be 3 positive sizes")
        b = image.shape[0]
        if isinstance(self.decoder, ConvHead):
            grid = make_coord_grid(shape, device=image.device, flatten=False)
            grid = self._to_padded(state, grid).expand(b, *shape, 3)
            return self.decoder(state.latent, grid, state.pooled, state.skip)
        return self.decode_grid(state, shape)

    def decode_grid(self, state: LatentState, shape: Sequence[int]) -> torch.Tensor:
        """Intensities ``(B, 1, *shape)`` on the voxel centres of a regular ``shape`` grid over
        the input's field of view (the implicit decoder's grid fast path; equal to
        :meth:`query` on ``make_coord_grid(shape)`` to float32 rounding)."""
        if not isinstance(self.decoder, ImplicitDecoder):
            raise ModelError("decode_grid() needs the implicit decoder (this model has a "
                             "conv head)")
        return self.decoder.forward_grid(state.latent, shape, state.pooled, state.skip,
                                         scale=self._scale(state, state.latent.device))


class RTFSyn(LatentSynthesizer):
    """Metadata-guided 3D synthesis network (refine-then-fusion).

    ``VisualEncoder → AxisAwareRefinement (optional) → fusion_blocks ×
    CrossModalAdaptiveFusion → post_blocks × ResBlock3d → ImplicitDecoder | ConvHead``,
    conditioned by a :class:`MetadataConditioner` on source and target metadata.

    Args:
        in_channels: image channels (1).
        encoder_channels, encoder_blocks, downsample: see :class:`VisualEncoder`.
        d_model: metadata token width.
        metadata_encoder: registered encoder name (``structured``, ``text``).
        metadata_encoder_kwargs: extra encoder arguments.
        metadata_layers: self-attention layers over the metadata tokens.
        heads, attn_dim: cross-attention heads and width.
        pack_factor: pixel-packing factor ``r``.
        fusion_blocks: number of fusion modules.
        post_blocks: residual conv blocks after the fusion.
        dynconv_basis, dynconv_kernel: dynamic-conv basis size and kernel size.
        refinement_kernel: directional kernel length; tie_axis_weights: share it over axes.
        use_refinement, use_packing, use_dynamic_conv: ablation flags (False removes the
            component; ``use_packing=False`` means r = 1).
        decoder: ``implicit`` or ``conv``.
        decoder_hidden, decoder_layers: implicit MLP width / hidden layers (conv head width).
        decoder_skip: feed full-resolution encoder features to the decoder.
        chunk_size: decoder queries per sample per chunk.
        field_dropout: metadata field dropout (training).
        dropout: channel dropout in residual blocks and attention-weight dropout.

    ``forward(image (B, 1, D, H, W), source_meta, target_meta, out_shape=None)``
    → ``(B, 1, *out_shape)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        encoder_channels: Sequence[int] = (16, 48),
        encoder_blocks: Sequence[int] = (1, 2),
        downsample: int = 2,
        d_model: int = 64,
        metadata_encoder: str = "structured",
        metadata_encoder_kwargs: Mapping[str, Any] | None = None,
        metadata_layers: int = 1,
        heads: int = 4,
        attn_dim: int = 64,
        pack_factor: int = 2,
        fusion_blocks: int = 1,
        post_blocks: int = 1,
        dynconv_basis: int = 4,
        dynconv_kernel: int = 3,
        refinement_kernel: int = 7,
        tie_axis_weights: bool = False,
        use_refinement: bool = True,
        use_packing: bool = True,
        use_dynamic_conv: bool = True,
        decoder: str = "implicit",
        decoder_hidden: int = 64,
        decoder_layers: int = 3,
        decoder_skip: bool = True,
        chunk_size: int = 4096,
        field_dropout: float = 0.1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_choice("decoder", decoder, ("implicit", "conv"))
        check_int("fusion_blocks", fusion_blocks)
        check_int("post_blocks", post_blocks, minimum=0)
        self.conditioner = MetadataConditioner(
            metadata_encoder, d_model=d_model, heads=heads, layers=metadata_layers,
            field_dropout=field_dropout, encoder_kwargs=metadata_encoder_kwargs,
        )
        self.encoder = VisualEncoder(in_channels, encoder_channels, encoder_blocks, downsample,
                                     dropout=dropout)
        c = self.encoder.out_channels
        self.refinement = (
            AxisAwareRefinement(c, refinement_kernel, tie_weights=tie_axis_weights)
            if use_refinement else None
        )
        self.fusions = nn.ModuleList(
            CrossModalAdaptiveFusion(
                c, d_model, attn_dim=attn_dim, heads=heads, pack_factor=pack_factor,
                use_packing=use_packing, use_dynamic_conv=use_dynamic_conv,
                basis_size=dynconv_basis, kernel_size=dynconv_kernel, dropout=dropout,
            )
            for _ in range(fusion_blocks)
        )
        self.post = nn.Sequential(*(ResBlock3d(c, dropout=dropout) for _ in range(post_blocks)))
        self.use_skip = bool(decoder_skip)
        skip = self.encoder.skip_channels if decoder_skip else 0
        if decoder == "implicit":
            self.decoder = ImplicitDecoder(c, embed_dim=d_model, hidden=decoder_hidden,
                                           layers=decoder_layers, skip_channels=skip,
                                           chunk_size=chunk_size)
        else:
            self.decoder = ConvHead(c, skip_channels=skip, embed_dim=d_model,
                                    hidden=decoder_hidden)

    def fuse(self, latent: torch.Tensor, cond: MetadataEncoding) -> torch.Tensor:
        """Refine then fuse: ``(B, C, d, h, w) -> (B, C, d, h, w)``."""
        if self.refinement is not None:
            latent = self.refinement(latent)
        for fusion in self.fusions:
            latent = fusion(latent, cond.tokens, cond.mask, cond.pooled)
        return self.post(latent)
