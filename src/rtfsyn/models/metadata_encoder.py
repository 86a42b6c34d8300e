"""Metadata encoders: acquisition metadata → tokens ``T (B, L, d)``, pooled ``t (B, d)``.

Two encoders are registered (pluggable by name, :func:`build_metadata_encoder`):

* ``structured`` (default, no external weights): one token per schema field
  (:attr:`Metadata.NUMERIC_FIELDS` then :attr:`Metadata.CATEGORICAL_FIELDS`), token = field
  embedding + value embedding. Numeric values are log-scaled (``log1p``, times in ms) and
  passed through fixed Fourier features and a per-field linear map; categoricals through
  per-field embeddings; a missing value is a learned per-field null token. During training
  each field is replaced by its null token with probability ``field_dropout`` (fields in
  ``keep_fields``, by default the contrast, are never dropped).
* ``text``: a frozen local sentence-transformers / Hugging Face model directory applied to
  :meth:`Metadata.prompt`; token states are projected to ``d``, padding comes from the
  tokenizer, and the frozen states are cached per prompt. Needs ``pip install rtfsyn[text]``.

:class:`MetadataConditioner` encodes the source and the target metadata with one encoder,
adds a learned role embedding (source / target), concatenates the tokens, mixes them with a
few masked self-attention layers and pools ``t = MLP([pooled_source, pooled_target])``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Union

import torch
from torch import nn

from rtfsyn.metadata import Metadata
from rtfsyn.models._common import ModelError, check_choice, check_int, check_prob

__all__ = [
    "FIELD_NAMES",
    "MetaInput",
    "MetadataConditioner",
    "MetadataEncoding",
    "StructuredMetadataEncoder",
    "TextMetadataEncoder",
    "as_metadata_list",
    "available_metadata_encoders",
    "build_metadata_encoder",
    "encode_fields",
    "masked_mean",
    "register_metadata_encoder",
]

NUMERIC_FIELDS: tuple[str, ...] = tuple(Metadata.NUMERIC_FIELDS)
CATEGORICAL_FIELDS: tuple[str, ...] = tuple(Metadata.CATEGORICAL_FIELDS)
#: Token order of the structured encoder: numeric fields, then categorical fields.
FIELD_NAMES: tuple[str, ...] = NUMERIC_FIELDS + CATEGORICAL_FIELDS

#: What the encoders accept for one side (source or target) of a batch.
MetaInput = Union[Metadata, Sequence[Metadata], Mapping[str, torch.Tensor]]  # noqa: UP007


class MetadataEncoding(NamedTuple):
    """Encoded metadata of a batch.

    Attributes:
        tokens: ``(B, L, d)`` token embeddings.
        pooled: ``(B, d)`` one vector per sample.
        mask: ``(B, L)`` bool, True where a token is valid (False = padding).
    """

    tokens: torch.Tensor
    pooled: torch.Tensor
    mask: torch.Tensor


# --------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[nn.Module]] = {}


def register_metadata_encoder(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator registering a metadata encoder under ``name``.

    An encoder is an ``nn.Module`` whose constructor takes ``d_model`` (and keywords) and
    whose ``forward(meta: MetaInput, batch_size: int | None)`` returns a
    :class:`MetadataEncoding`.
    """

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ModelError(f"metadata encoder {name!r} is already registered")
        _REGISTRY[name] = cls
        return cls

    return deco


def available_metadata_encoders() -> tuple[str, ...]:
    """Names accepted by :func:`build_metadata_encoder`."""
    return tuple(sorted(_REGISTRY))


def build_metadata_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the metadata encoder registered as ``name`` with ``kwargs``."""
    if name not in _REGISTRY:
        names = ", ".join(available_metadata_encoders())
        raise ModelError(f"unknown metadata encoder {name!r}: use one of {names}")
    return _REGISTRY[name](**kwargs)


# --------------------------------------------------------------------------- helpers
def as_metadata_list(meta: Metadata | Sequence[Metadata], batch_size: int | None) -> list[Metadata]:
    """A list of :class:`Metadata` of length ``batch_size`` (one item is broadcast)."""
    if isinstance(meta, Metadata):
        return [meta] * (batch_size or 1)
    items = list(meta)
    if not items or not all(isinstance(m, Metadata) for m in items):
        raise ModelError("metadata must be a Metadata or a non-empty list of Metadata")
    if batch_size is not None and len(items) != batch_size:
        if len(items) == 1:
            return items * batch_size
        raise ModelError(
            f"got {len(items)} metadata records for a batch of {batch_size} images"
        )
    return items


def encode_fields(metas: Sequence[Metadata]) -> dict[str, torch.Tensor]:
    """Convert metadata records to tensors (what the ``structured`` encoder consumes).

    Returns a dict (collatable by stacking, so a data loader can precompute it):

    * ``numeric`` ``(B, 10)`` float32: values of :attr:`Metadata.NUMERIC_FIELDS`
      (times in ms), 0 where missing;
    * ``numeric_mask`` ``(B, 10)`` bool: True where present;
    * ``categorical`` ``(B, 4)`` int64: vocabulary indices of
      :attr:`Metadata.CATEGORICAL_FIELDS` (0 = other), 0 where missing;
    * ``categorical_mask`` ``(B, 4)`` bool: True where present.
    """
    if isinstance(metas, Metadata):
        metas = [metas]
    num, num_mask, cat, cat_mask = [], [], [], []
    for m in metas:
        nv = m.numeric_values()
        cv = m.categorical_indices()
        num.append([0.0 if nv[f] is None else float(nv[f]) for f in NUMERIC_FIELDS])
        num_mask.append([nv[f] is not None for f in NUMERIC_FIELDS])
        cat.append([0 if cv[f] is None else int(cv[f]) for f in CATEGORICAL_FIELDS])
        cat_mask.append([cv[f] is not None for f in CATEGORICAL_FIELDS])
    return {
        "numeric": torch.tensor(num, dtype=torch.float32),
        "numeric_mask": torch.tensor(num_mask, dtype=torch.bool),
        "categorical": torch.tensor(cat, dtype=torch.long),
        "categorical_mask": torch.tensor(cat_mask, dtype=torch.bool),
    }


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens (B, L, d)`` over valid positions of ``mask (B, L)`` → ``(B, d)``."""
    w = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)


# --------------------------------------------------------------------------- structured
@register_metadata_encoder("structured")
class StructuredMetadataEncoder(nn.Module):
    """Per-field tokens from the metadata schema (no external weights).

    Args:
        d_model: token width ``d``.
        n_frequencies: Fourier frequencies for numeric values (``0.25 · 2^k``, k < n).
        field_dropout: probability, in training, to replace a field by its null token.
        keep_fields: fields never dropped (default: the contrast).

    ``forward(meta, batch_size=None)`` takes a list of :class:`Metadata` (or one record,
    broadcast to ``batch_size``) or the dict of :func:`encode_fields`, and returns a
    :class:`MetadataEncoding` with ``tokens (B, 14, d)``, ``pooled (B, d)``, ``mask (B, 14)``
    (all True: every field has a token, missing ones the null token).
    """

    def __init__(
        self,
        d_model: int = 64,
        n_frequencies: int = 6,
        field_dropout: float = 0.1,
        keep_fields: Sequence[str] = ("contrast",),
    ) -> None:
        super().__init__()
        self.d_model = check_int("d_model", d_model)
        check_int("n_frequencies", n_frequencies)
        self.field_dropout = check_prob("field_dropout", field_dropout, inclusive=True)
        for f in keep_fields:
            check_choice("keep_fields item", f, FIELD_NAMES)
        keep = torch.tensor([f in keep_fields for f in FIELD_NAMES], dtype=torch.bool)
        self.register_buffer("keep", keep, persistent=False)
        n_num, n_fields = len(NUMERIC_FIELDS), len(FIELD_NAMES)
        freqs = 0.25 * 2.0 ** torch.arange(n_frequencies, dtype=torch.float32)
        self.register_buffer("freqs", freqs, persistent=False)
        n_feat = 1 + 2 * n_frequencies
        self.field_embed = nn.Parameter(torch.randn(n_fields, d_model) * 0.02)
        self.null_token = nn.Parameter(torch.randn(n_fields, d_model) * 0.02)
        self.numeric_weight = nn.Parameter(
            torch.randn(n_num, n_feat, d_model) / math.sqrt(n_feat)
        )
        self.numeric_bias = nn.Parameter(torch.zeros(n_num, d_model))
        self.categorical = nn.ModuleList(
            nn.Embedding(len(Metadata.CATEGORICAL_FIELDS[f]), d_model) for f in CATEGORICAL_FIELDS
        )
        self.norm = nn.LayerNorm(d_model)

    @property
    def num_tokens(self) -> int:
        return len(FIELD_NAMES)

    def fourier(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` raw values → ``(B, F, 1 + 2K)`` features of ``log1p(value)``."""
        x = torch.log1p(values.clamp_min(0.0))
        ang = x.unsqueeze(-1) * self.freqs
        return torch.cat([x.unsqueeze(-1) / 10.0, torch.sin(ang), torch.cos(ang)], dim=-1)

    def forward(self, meta: MetaInput, batch_size: int | None = None) -> MetadataEncoding:
        device = self.field_embed.device
        if isinstance(meta, Mapping):
            missing = {"numeric", "numeric_mask", "categorical", "categorical_mask"} - set(meta)
            if missing:
                raise ModelError(
                    f"encoded metadata lacks {', '.join(sorted(missing))}: build it with "
                    "rtfsyn.models.encode_fields"
                )
            fields = {k: v.to(device) for k, v in meta.items()}
        else:
            fields = {k: v.to(device) for k, v in
                      encode_fields(as_metadata_list(meta, batch_size)).items()}
        numeric = fields["numeric"].to(self.field_embed.dtype)
        b = numeric.shape[0]
        num_val = torch.einsum("bfi,fid->bfd", self.fourier(numeric), self.numeric_weight)
        num_val = num_val + self.numeric_bias
        cat_idx = fields["categorical"]
        cat_val = torch.stack(
            [emb(cat_idx[:, i]) for i, emb in enumerate(self.categorical)], dim=1
        )
        values = torch.cat([num_val, cat_val], dim=1)  # (B, F, d)
        present = torch.cat([fields["numeric_mask"], fields["categorical_mask"]], dim=1)
        if self.training and self.field_dropout > 0:
            drop = torch.rand(present.shape, device=device) < self.field_dropout
            present = present & (~drop | self.keep)
        values = torch.where(present.unsqueeze(-1), values, self.null_token.expand(b, -1, -1))
        tokens = self.norm(values + self.field_embed)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=device)
        return MetadataEncoding(tokens, tokens.mean(1), mask)


# --------------------------------------------------------------------------- text
def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ModelError(
            "the 'text' metadata encoder needs the transformers package: "
            "pip install rtfsyn[text]"
        ) from None
    return transformers


class _Frozen:
    """Holds the frozen HF model outside the module tree (not in ``state_dict``)."""

    def __init__(self, tokenizer: Any, model: Any) -> None:
        self.tokenizer = tokenizer
        self.model = model


@register_metadata_encoder("text")
class TextMetadataEncoder(nn.Module):
    """Frozen local text model over :meth:`Metadata.prompt`, token states projected to ``d``.

    Args:
        d_model: output token width ``d``.
        model_path: local sentence-transformers / Hugging Face model directory (loaded with
            ``local_files_only=True``; nothing is downloaded).
        field_dropout: probability, in training, to blank a field (set to None) before the
            prompt is rendered (the contrast is kept).
        max_length: tokenizer truncation length.
        cache_size: prompts whose frozen token states are kept (LRU).

    The frozen model is not part of ``state_dict`` (only the projection is trained);
    ``model_path`` must therefore be available wherever a checkpoint is loaded.
    Output: tokens ``(B, L, d)`` with ``L`` the longest prompt of the batch, ``mask``
    False at padding.
    """

    def __init__(
        self,
        d_model: int = 64,
        model_path: str | Path | None = None,
        field_dropout: float = 0.1,
        max_length: int = 96,
        cache_size: int = 4096,
        keep_fields: Sequence[str] = ("contrast",),
    ) -> None:
        super().__init__()
        self.d_model = check_int("d_model", d_model)
        self.field_dropout = check_prob("field_dropout", field_dropout, inclusive=True)
        self.max_length = check_int("max_length", max_length)
        self.cache_size = check_int("cache_size", cache_size)
        if model_path is None:
            raise ModelError(
                "the 'text' metadata encoder needs model_path=DIR (a local sentence-"
                "transformers / Hugging Face model directory)"
            )
        path = Path(model_path).expanduser()
        if not path.is_dir():
            raise ModelError(f"text encoder model_path={str(model_path)!r} is not a directory")
        tf = _import_transformers()
        tokenizer = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = tf.AutoModel.from_pretrained(str(path), local_files_only=True)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self._frozen = _Frozen(tokenizer, model)
        self.keep_fields = tuple(keep_fields)
        hidden = int(model.config.hidden_size)
        self.proj = nn.Linear(hidden, d_model)
        self.norm = nn.LayerNorm(d_model)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def _states(self, prompt: str) -> torch.Tensor:
        if prompt in self._cache:
            self._cache.move_to_end(prompt)
            return self._cache[prompt]
        fz = self._frozen
        enc = fz.tokenizer(prompt, return_tensors="pt", truncation=True,
                           max_length=self.max_length)
        with torch.no_grad():
            out = fz.model(**enc).last_hidden_state[0].float()
        self._cache[prompt] = out
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def _dropout(self, m: Metadata) -> Metadata:
        names = [n for n in type(m).model_fields if n not in self.keep_fields
                 and getattr(m, n) is not None]
        drop = [n for n in names if float(torch.rand(())) < self.field_dropout]
        return m.model_copy(update=dict.fromkeys(drop)) if drop else m

    def forward(self, meta: MetaInput, batch_size: int | None = None) -> MetadataEncoding:
        if isinstance(meta, Mapping):
            raise ModelError(
                "the 'text' metadata encoder needs Metadata records, not encoded field tensors"
            )
        metas = as_metadata_list(meta, batch_size)
        if self.training and self.field_dropout > 0:
            metas = [self._dropout(m) for m in metas]
        states = [self._states(m.prompt()) for m in metas]
        length = max(s.shape[0] for s in states)
        device = self.proj.weight.device
        padded = torch.zeros(len(states), length, states[0].shape[1], device=device)
        mask = torch.zeros(len(states), length, dtype=torch.bool, device=device)
        for i, s in enumerate(states):
            padded[i, : s.shape[0]] = s.to(device)
            mask[i, : s.shape[0]] = True
        tokens = self.norm(self.proj(padded.to(self.proj.weight.dtype)))
        tokens = tokens * mask.unsqueeze(-1)
        return MetadataEncoding(tokens, masked_mean(tokens, mask), mask)


# --------------------------------------------------------------------------- conditioner
class TokenMixer(nn.Module):
    """Pre-norm transformer layer over metadata tokens with a key padding mask.

    Shapes: ``tokens (B, L, d)``, ``mask (B, L)`` → ``(B, L, d)``.
    """

    def __init__(self, d_model: int, heads: int = 4, mlp_ratio: int = 2) -> None:
        super().__init__()
        if d_model % heads:
            raise ModelError(f"d_model={d_model} is not divisible by heads={heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
            nn.Linear(mlp_ratio * d_model, d_model),
        )

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        q, k, v = self.qkv(self.norm1(tokens)).view(b, n, 3, self.heads, -1).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        tokens = tokens + self.out(att)
        return tokens + self.mlp(self.norm2(tokens))


class MetadataConditioner(nn.Module):
    """Source + target metadata → one :class:`MetadataEncoding` for the fusion modules.

    Args:
        encoder: registered encoder name (``structured`` or ``text``).
        d_model: token width ``d``.
        heads: heads of the token mixer.
        layers: token-mixer (self-attention) layers over the concatenated tokens (0: none).
        field_dropout: passed to the encoder.
        encoder_kwargs: further encoder arguments (e.g. ``model_path`` for ``text``).

    ``forward(source_meta, target_meta, batch_size)`` returns tokens ``(B, Ls + Lt, d)``
    (source tokens + role 0, then target tokens + role 1), their mask, and
    ``pooled (B, d) = MLP([mean(source tokens), mean(target tokens)])``.
    """

    def __init__(
        self,
        encoder: str = "structured",
        d_model: int = 64,
        heads: int = 4,
        layers: int = 1,
        field_dropout: float = 0.1,
        encoder_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_int("d_model", d_model)
        check_int("layers", layers, minimum=0)
        self.encoder = build_metadata_encoder(
            encoder, d_model=d_model, field_dropout=field_dropout, **dict(encoder_kwargs or {})
        )
        self.role = nn.Parameter(torch.randn(2, d_model) * 0.02)
        self.mixers = nn.ModuleList(TokenMixer(d_model, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.pool = nn.Sequential(
            nn.Linear(2 * d_model, d_model), nn.GELU(), nn.Linear(d_model, d_model)
        )
        self.pool_norm = nn.LayerNorm(d_model)

    def forward(
        self, source_meta: MetaInput, target_meta: MetaInput, batch_size: int | None = None
    ) -> MetadataEncoding:
        src = self.encoder(source_meta, batch_size)
        tgt = self.encoder(target_meta, batch_size)
        if src.tokens.shape[0] != tgt.tokens.shape[0]:
            raise ModelError(
                f"source metadata has batch {src.tokens.shape[0]}, target {tgt.tokens.shape[0]}"
            )
        n_src = src.tokens.shape[1]
        tokens = torch.cat([src.tokens + self.role[0], tgt.tokens + self.role[1]], dim=1)
        mask = torch.cat([src.mask, tgt.mask], dim=1)
        for mixer in self.mixers:
            tokens = mixer(tokens, mask)
        tokens = self.norm(tokens)
        pooled = torch.cat([masked_mean(tokens[:, :n_src], mask[:, :n_src]),
                            masked_mean(tokens[:, n_src:], mask[:, n_src:])], dim=-1)
        pooled = self.pool_norm(self.pool(pooled))
        return MetadataEncoding(tokens, pooled, mask)
