"""Model configuration (pydantic ↔ dict / JSON / YAML) and :func:`build_model`.

Bundled configs live in ``rtfsyn/configs``: ``cpu-small`` (the default) and ``gpu-base``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
    model_validator,
)

from rtfsyn.models._common import ModelError

__all__ = [
    "ARCHS",
    "CONFIG_DIR",
    "DEFAULT_CONFIG",
    "ModelConfig",
    "available_configs",
    "build_model",
    "load_config",
]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = "cpu-small"
ARCHS: tuple[str, ...] = ("rtfsyn", "crossattn", "unet3d")


class ModelConfig(BaseModel):
    """Everything needed to build a synthesis network; defaults = ``cpu-small``.

    ``arch`` picks the network (``rtfsyn``, or the baselines ``crossattn`` / ``unet3d``);
    fields a network does not use are ignored by it, so one config can be built with the
    arch swapped (:meth:`with_arch`) for a like-for-like comparison.
    """

    model_config = ConfigDict(extra="forbid")

    arch: Literal["rtfsyn", "crossattn", "unet3d"] = "rtfsyn"
    in_channels: int = Field(1, ge=1)
    # optional second input channel: the training-free physics prior (rtfsyn.prior) of the
    # target, computed outside the network from the source and the metadata; the network
    # then takes in_channels + 1 channels (source, prior)
    physics_prior: bool = False
    # visual encoder
    encoder_channels: list[int] = Field(default_factory=lambda: [16, 48])
    encoder_blocks: list[int] = Field(default_factory=lambda: [1, 2])
    downsample: Literal[1, 2, 4, 8] = 2
    # metadata
    d_model: int = Field(64, ge=4)
    metadata_encoder: str = "structured"
    metadata_encoder_kwargs: dict[str, Any] = Field(default_factory=dict)
    metadata_layers: int = Field(1, ge=0)
    field_dropout: float = Field(0.1, ge=0.0, le=1.0)
    # fusion
    heads: int = Field(4, ge=1)
    attn_dim: int = Field(64, ge=1)
    pack_factor: int = Field(2, ge=1, le=8)
    fusion_blocks: int = Field(1, ge=1)
    post_blocks: int = Field(1, ge=0)
    dynconv_basis: int = Field(4, ge=1)
    dynconv_kernel: int = Field(3, ge=1)
    # refinement
    refinement_kernel: int = Field(7, ge=1)
    tie_axis_weights: bool = False
    # ablations
    use_refinement: bool = True
    use_packing: bool = True
    use_dynamic_conv: bool = True
    # decoder
    decoder: Literal["implicit", "conv"] = "implicit"
    decoder_hidden: int = Field(64, ge=1)
    decoder_layers: int = Field(3, ge=1)
    decoder_skip: bool = True
    chunk_size: int = Field(4096, ge=1)
    # regularisation
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # unet3d baseline
    unet_channels: list[int] = Field(default_factory=lambda: [16, 32, 64])

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        n = {1: 1, 2: 2, 4: 3, 8: 4}[self.downsample]
        if len(self.encoder_channels) != n or len(self.encoder_blocks) != n:
            raise ValueError(
                f"downsample={self.downsample} needs {n} encoder stages: got encoder_channels="
                f"{self.encoder_channels} and encoder_blocks={self.encoder_blocks}"
            )
        if any(c < 1 for c in self.encoder_channels) or any(b < 0 for b in self.encoder_blocks):
            raise ValueError(f"encoder_channels={self.encoder_channels} must be >= 1 and "
                             f"encoder_blocks={self.encoder_blocks} >= 0")
        if len(self.unet_channels) < 2 or any(c < 1 for c in self.unet_channels):
            raise ValueError(f"unet_channels={self.unet_channels} needs >= 2 positive widths")
        for name in ("attn_dim", "d_model"):
            if getattr(self, name) % self.heads:
                raise ValueError(f"{name}={getattr(self, name)} is not divisible by "
                                 f"heads={self.heads}")
        for name in ("dynconv_kernel", "refinement_kernel"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name}={getattr(self, name)} must be odd")
        return self

    @property
    def input_channels(self) -> int:
        """Channels the network takes: the source's plus one for the physics prior."""
        return self.in_channels + int(self.physics_prior)

    # ---------------------------------------------------------------- serialisation
    @model_serializer(mode="wrap")
    def _serialise(self, handler: Any) -> dict[str, Any]:
        # fields added later are left out while at their default, so configs (and the
        # checkpoints that store them) written before they existed compare equal
        data = handler(self)
        for name in _OMIT_WHEN_DEFAULT:
            if name in data and data[name] == type(self).model_fields[name].default:
                del data[name]
        return data

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (what checkpoints store)."""
        return self.model_dump(mode="json")

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json()
        path.write_text(text)
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Validate a dict; errors become one-line :class:`ModelError`."""
        try:
            return cls(**data)
        except ValidationError as exc:
            raise ModelError(_one_line(exc)) from None
        except TypeError as exc:
            raise ModelError(f"model config is invalid: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_yaml(cls, text: str) -> ModelConfig:
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ModelError("model config YAML must be a mapping")
        return cls.from_dict(data)

    def with_arch(self, arch: str) -> ModelConfig:
        """The same config with ``arch`` replaced (validated)."""
        return self.from_dict({**self.to_dict(), "arch": arch})

    def updated(self, **changes: Any) -> ModelConfig:
        """The same config with some fields replaced (validated)."""
        return self.from_dict({**self.to_dict(), **changes})


#: Fields omitted from the serialised config while they hold their default.
_OMIT_WHEN_DEFAULT: tuple[str, ...] = ("physics_prior",)


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    if loc:
        return f"model config field {loc}={err.get('input')!r} is invalid: {msg}"
    return f"model config is invalid: {msg}"


def available_configs() -> tuple[str, ...]:
    """Names of the bundled model configs."""
    return tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")
                        if not p.stem.startswith("train-")))


def load_config(source: str | Path | dict[str, Any] | None = None,
                **overrides: Any) -> ModelConfig:
    """A :class:`ModelConfig` from a bundled name (``cpu-small``, ``gpu-base``), a YAML/JSON
    file, or a dict, with optional field overrides. ``None`` gives ``cpu-small``.

    A training YAML (with a ``model:`` entry) is accepted: its model entry is used.
    """
    if source is None:
        source = DEFAULT_CONFIG
    if isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            bundled = CONFIG_DIR / f"{source}.yaml"
            if not bundled.is_file():
                raise ModelError(
                    f"model config {str(source)!r} is neither a file nor a bundled config "
                    f"({', '.join(available_configs())})"
                )
            path = bundled
        try:
            loaded = (json.loads(path.read_text()) if path.suffix == ".json"
                      else yaml.safe_load(path.read_text()))
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            raise ModelError(
                f"model config {path} cannot be parsed ({str(exc).splitlines()[0]})"
            ) from None
        if not isinstance(loaded, dict):
            raise ModelError(f"model config {path} must be a mapping")
        data = loaded
    if "arch" not in data and "model" in data:
        model = data["model"]
        return load_config(model, **overrides)
    data.update(overrides)
    return ModelConfig.from_dict(data)


def build_model(config: ModelConfig | dict[str, Any] | str | Path | None = None) -> Any:
    """Build the network a config describes (``RTFSyn``, ``CrossAttnSynth`` or ``UNet3D``).

    ``config`` may be a :class:`ModelConfig`, a dict of its fields, or anything
    :func:`load_config` accepts.
    """
    from rtfsyn.models.baselines import CrossAttnSynth, UNet3D
    from rtfsyn.models.rtfsyn import RTFSyn

    if not isinstance(config, ModelConfig):
        config = load_config(config)
    c = config
    common: dict[str, Any] = dict(
        in_channels=c.input_channels, encoder_channels=c.encoder_channels,
        encoder_blocks=c.encoder_blocks, downsample=c.downsample, d_model=c.d_model,
        metadata_encoder=c.metadata_encoder, metadata_encoder_kwargs=c.metadata_encoder_kwargs,
        metadata_layers=c.metadata_layers, heads=c.heads, attn_dim=c.attn_dim,
        fusion_blocks=c.fusion_blocks, post_blocks=c.post_blocks,
        decoder_hidden=c.decoder_hidden, decoder_layers=c.decoder_layers,
        decoder_skip=c.decoder_skip, chunk_size=c.chunk_size, field_dropout=c.field_dropout,
        dropout=c.dropout,
    )
    if c.arch == "rtfsyn":
        return RTFSyn(
            **common, pack_factor=c.pack_factor, dynconv_basis=c.dynconv_basis,
            dynconv_kernel=c.dynconv_kernel, refinement_kernel=c.refinement_kernel,
            tie_axis_weights=c.tie_axis_weights, use_refinement=c.use_refinement,
            use_packing=c.use_packing, use_dynamic_conv=c.use_dynamic_conv, decoder=c.decoder,
        )
    if c.arch == "crossattn":
        return CrossAttnSynth(**common)
    return UNet3D(in_channels=c.input_channels, channels=c.unet_channels, dropout=c.dropout)
