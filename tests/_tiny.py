"""Constants shared by tests in several folders (imported as ``from _tiny import ...``)."""

from __future__ import annotations

#: a very small rtfsyn model config used by training / inference tests (fast on CPU)
TINY_MODEL: dict = dict(
    encoder_channels=[8, 16], encoder_blocks=[1, 1], downsample=2, d_model=16, heads=2,
    attn_dim=16, pack_factor=2, fusion_blocks=1, post_blocks=1, dynconv_basis=3,
    dynconv_kernel=3, refinement_kernel=5, metadata_layers=1, decoder_hidden=16,
    decoder_layers=2, chunk_size=512, unet_channels=[8, 16], field_dropout=0.0,
)
