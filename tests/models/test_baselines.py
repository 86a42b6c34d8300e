from __future__ import annotations

import torch
from _model_helpers import metas, targets, tiny_model

from rtfsyn.metadata import Metadata
from rtfsyn.models import (
    CrossAttnSynth,
    CrossModalAdaptiveFusion,
    UNet3D,
    VoxelCrossAttention,
    attention_map_elements,
    encode_fields,
)
from rtfsyn.models.baselines import contrast_one_hot


def test_unet_uses_only_the_target_contrast() -> None:
    m = tiny_model(arch="unet3d").eval()
    assert isinstance(m, UNet3D)
    x = torch.rand(1, 1, 12, 10, 9)
    t2 = Metadata.from_string("contrast=T2w,TR=3000,TE=90")
    with torch.no_grad():
        y = m(x, metas()[0], [t2])
        same = m(x, metas()[1], [t2.with_updates(repetition_time=5.0, echo_time=0.12)])
        other = m(x, metas()[0], [Metadata.from_string("contrast=FLAIR")])
    torch.testing.assert_close(y, same)
    assert not torch.allclose(y, other)


def test_unet_out_shape_and_encoded_fields() -> None:
    m = tiny_model(arch="unet3d").eval()
    x = torch.rand(2, 1, 10, 10, 10)
    with torch.no_grad():
        assert m(x, None, targets()[:2], out_shape=(20, 10, 10)).shape == (2, 1, 20, 10, 10)
        torch.testing.assert_close(m(x, None, encode_fields(targets()[:2])),
                                   m(x, None, targets()[:2]))
    onehot = contrast_one_hot(targets(), 3, torch.device("cpu"))
    assert onehot.sum(1).tolist() == [1.0, 1.0, 1.0]


def test_crossattn_is_conventional_full_resolution_attention() -> None:
    ca, rt = tiny_model(arch="crossattn").eval(), tiny_model().eval()
    assert isinstance(ca, CrossAttnSynth)
    assert not any(isinstance(m, CrossModalAdaptiveFusion) for m in ca.modules())
    assert not hasattr(ca, "refinement")
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        ca(x, metas()[0], targets()[0])
        rt(x, metas()[0], targets()[0])
    att_ca = next(m for m in ca.modules() if isinstance(m, VoxelCrossAttention))
    att_rt = rt.fusions[0]
    n_tokens = 28  # 14 fields × (source, target)
    assert att_ca.last_attention_shape == (1, 2, 8**3, n_tokens)  # every latent voxel
    assert att_rt.last_attention_shape == (1, 2, 4**3, n_tokens)  # packed, r = 2
    assert attention_map_elements(ca, 16) == 8 * attention_map_elements(rt, 16)
    assert attention_map_elements(tiny_model(arch="unet3d"), 16) == 0
