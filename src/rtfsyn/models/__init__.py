"""The RTFSyn network, its building blocks, the baselines and the model configuration.

>>> from rtfsyn.models import build_model, load_config
>>> net = build_model(load_config("cpu-small"))   # doctest: +SKIP
>>> y = net(image, source_meta, target_meta, out_shape=(64, 64, 128))  # doctest: +SKIP
"""

from __future__ import annotations

from rtfsyn.models._common import ModelError, ResBlock3d
from rtfsyn.models.axis_refinement import AxisAwareRefinement
from rtfsyn.models.baselines import CrossAttnSynth, UNet3D, VoxelCrossAttention
from rtfsyn.models.config import (
    ARCHS,
    ModelConfig,
    available_configs,
    build_model,
    load_config,
)
from rtfsyn.models.conv_head import ConvHead
from rtfsyn.models.fusion import (
    CrossModalAdaptiveFusion,
    DynamicDepthwiseConv3d,
    cross_attention,
    dynamic_depthwise_conv3d,
    pixel_shuffle_3d,
    pixel_unshuffle_3d,
)
from rtfsyn.models.implicit_decoder import (
    ImplicitDecoder,
    cell_size,
    make_coord_grid,
    sample_features,
)
from rtfsyn.models.metadata_encoder import (
    MetadataConditioner,
    MetadataEncoding,
    StructuredMetadataEncoder,
    TextMetadataEncoder,
    available_metadata_encoders,
    build_metadata_encoder,
    encode_fields,
    register_metadata_encoder,
)
from rtfsyn.models.profiling import (
    attention_map_elements,
    count_flops,
    count_parameters,
    profile_model,
)
from rtfsyn.models.rtfsyn import LatentState, RTFSyn
from rtfsyn.models.visual_encoder import EncoderFeatures, VisualEncoder

__all__ = [
    "ARCHS",
    "AxisAwareRefinement",
    "ConvHead",
    "CrossAttnSynth",
    "CrossModalAdaptiveFusion",
    "DynamicDepthwiseConv3d",
    "EncoderFeatures",
    "ImplicitDecoder",
    "LatentState",
    "MetadataConditioner",
    "MetadataEncoding",
    "ModelConfig",
    "ModelError",
    "RTFSyn",
    "ResBlock3d",
    "StructuredMetadataEncoder",
    "TextMetadataEncoder",
    "UNet3D",
    "VisualEncoder",
    "VoxelCrossAttention",
    "attention_map_elements",
    "available_configs",
    "available_metadata_encoders",
    "build_metadata_encoder",
    "build_model",
    "cell_size",
    "count_flops",
    "count_parameters",
    "cross_attention",
    "dynamic_depthwise_conv3d",
    "encode_fields",
    "load_config",
    "make_coord_grid",
    "pixel_shuffle_3d",
    "pixel_unshuffle_3d",
    "profile_model",
    "register_metadata_encoder",
    "sample_features",
]
