from __future__ import annotations

import sys

import pytest
import torch
from _model_helpers import metas, targets

from rtfsyn.metadata import Metadata
from rtfsyn.models import (
    MetadataConditioner,
    ModelError,
    StructuredMetadataEncoder,
    available_metadata_encoders,
    build_metadata_encoder,
    encode_fields,
    register_metadata_encoder,
)
from rtfsyn.models.metadata_encoder import FIELD_NAMES


def test_encode_fields_values_and_masks() -> None:
    f = encode_fields(metas())
    assert f["numeric"].shape == (3, 10) and f["categorical"].shape == (3, 4)
    assert f["numeric"][0, 0].item() == pytest.approx(2300.0)  # TR in ms
    assert f["numeric"][1, 1].item() == pytest.approx(90.0)
    assert f["numeric_mask"][1].tolist() == [True, True] + [False, False, True] + [False] * 5
    vocab = Metadata.CATEGORICAL_FIELDS
    assert f["categorical"][0, 0].item() == vocab["contrast"].index("T1w")
    assert f["categorical"][2, 2].item() == 0  # unknown vendor → 'other'
    assert f["categorical_mask"][1].tolist() == [True, False, True, False]


def test_structured_shapes_and_inputs() -> None:
    torch.manual_seed(0)
    enc = StructuredMetadataEncoder(d_model=16, field_dropout=0.0).eval()
    out = enc(metas())
    assert out.tokens.shape == (3, len(FIELD_NAMES), 16)
    assert out.pooled.shape == (3, 16) and out.mask.dtype == torch.bool and out.mask.all()
    # a dict of precomputed tensors gives the same result
    torch.testing.assert_close(enc(encode_fields(metas())).tokens, out.tokens)
    # a single record is broadcast to the batch size
    one = enc(metas()[0], batch_size=2)
    torch.testing.assert_close(one.tokens[1], out.tokens[0])


def test_missing_field_uses_null_token() -> None:
    torch.manual_seed(0)
    enc = StructuredMetadataEncoder(d_model=16, field_dropout=0.0).eval()
    a = Metadata.from_string("contrast=T2w,TR=3000")
    b = Metadata.from_string("contrast=T2w,TR=4000")
    c = Metadata.from_string("contrast=T2w")
    ta, tb, tc = enc([a, b, c]).tokens
    assert not torch.allclose(ta[0], tb[0])
    null = enc.norm(enc.null_token[0] + enc.field_embed[0])
    torch.testing.assert_close(tc[0], null)
    torch.testing.assert_close(ta[1:], tc[1:])  # the other fields are untouched


def test_field_dropout_only_in_training_and_keeps_contrast() -> None:
    torch.manual_seed(0)
    enc = StructuredMetadataEncoder(d_model=16, field_dropout=1.0)
    m = [metas()[0]]
    nulls = enc.norm(enc.null_token + enc.field_embed)
    enc.train()
    tok = enc(m).tokens[0]
    contrast = FIELD_NAMES.index("contrast")
    for i in range(len(FIELD_NAMES)):
        if i != contrast:
            torch.testing.assert_close(tok[i], nulls[i])
    assert not torch.allclose(tok[contrast], nulls[contrast])
    enc.eval()
    assert not torch.allclose(enc(m).tokens[0, 0], nulls[0])


def test_registry() -> None:
    assert {"structured", "text"} <= set(available_metadata_encoders())
    assert isinstance(build_metadata_encoder("structured", d_model=8), StructuredMetadataEncoder)
    with pytest.raises(ModelError, match="'nope'"):
        build_metadata_encoder("nope")

    @register_metadata_encoder("test-dummy")
    class Dummy(StructuredMetadataEncoder):
        pass

    assert isinstance(build_metadata_encoder("test-dummy", d_model=8), Dummy)


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(ModelError, match="1.5"):
        StructuredMetadataEncoder(field_dropout=1.5)
    with pytest.raises(ModelError, match="'TR'"):
        StructuredMetadataEncoder(keep_fields=("TR",))
    with pytest.raises(ModelError, match="got 2 metadata records for a batch of 3"):
        StructuredMetadataEncoder()(metas()[:2], batch_size=3)


def test_conditioner_concatenates_source_and_target() -> None:
    torch.manual_seed(0)
    cond = MetadataConditioner(d_model=16, heads=2, layers=1, field_dropout=0.0).eval()
    out = cond(metas(), targets(), batch_size=3)
    n = len(FIELD_NAMES)
    assert out.tokens.shape == (3, 2 * n, 16) and out.mask.shape == (3, 2 * n)
    assert out.pooled.shape == (3, 16)
    swapped = cond(targets(), metas(), batch_size=3)  # roles matter
    assert not torch.allclose(out.pooled, swapped.pooled, atol=1e-4)


def test_text_encoder_missing_transformers_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import now raises ImportError
    with pytest.raises(ModelError, match=r"pip install rtfsyn\[text\]"):
        build_metadata_encoder("text", d_model=8, model_path=tmp_path)


def test_text_encoder_with_local_model(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    # a tiny randomly initialised BERT saved locally: no download
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    chars = "abcdefghijklmnopqrstuvwxyz0123456789:;(),."
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, "age", "sex", "contrast"]
    vocab.write_text("\n".join(words))
    tok = BertTokenizerFast(vocab_file=str(vocab))
    cfg = BertConfig(vocab_size=len(words), hidden_size=8, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=16)
    BertModel(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert transformers is not None
    enc = build_metadata_encoder("text", d_model=16, model_path=tmp_path, field_dropout=0.0)
    out = enc.eval()(metas())
    assert out.tokens.shape[0] == 3 and out.tokens.shape[2] == 16
    assert out.mask[:, 0].all() and not out.mask.all()  # prompts differ in length
    assert not any(k.startswith("_frozen") for k in enc.state_dict())
