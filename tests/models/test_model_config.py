from __future__ import annotations

import json

import pytest
import yaml

from rtfsyn.models import (
    CrossAttnSynth,
    ModelConfig,
    ModelError,
    RTFSyn,
    UNet3D,
    available_configs,
    build_model,
    count_flops,
    count_parameters,
    load_config,
)
from rtfsyn.models.config import CONFIG_DIR


def test_bundled_configs() -> None:
    assert {"cpu-small", "gpu-base"} <= set(available_configs())
    small = load_config("cpu-small")
    assert small == load_config() == ModelConfig()  # cpu-small is the default
    assert load_config("gpu-base").d_model > small.d_model
    assert load_config(CONFIG_DIR / "gpu-base.yaml") == load_config("gpu-base")


def test_round_trips(tmp_path) -> None:
    cfg = load_config("gpu-base", use_packing=False)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert ModelConfig.from_yaml(cfg.to_yaml()) == cfg
    assert load_config(cfg.save(tmp_path / "m.yaml")) == cfg
    assert load_config(cfg.save(tmp_path / "m.json")) == cfg
    assert json.loads(cfg.to_json())["use_packing"] is False
    assert ModelConfig(**cfg.model_dump(mode="json")) == cfg  # what the trainer does


def test_training_yaml_resolves_its_model(tmp_path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"model": "cpu-small", "patch_size": 32}))
    assert load_config(path) == load_config("cpu-small")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"arch": "vit"}, "'vit'"),
        ({"downsample": 3}, "downsample"),
        ({"downsample": 4}, "needs 3 encoder stages"),
        ({"attn_dim": 30, "heads": 4}, "attn_dim=30"),
        ({"dynconv_kernel": 4}, "dynconv_kernel=4"),
        ({"field_dropout": 2.0}, "2.0"),
        ({"nonsense": 1}, "nonsense"),
    ],
)
def test_invalid_configs_name_the_value(changes, match) -> None:
    with pytest.raises(ModelError, match=match):
        load_config("cpu-small", **changes)


def test_unknown_config_name() -> None:
    with pytest.raises(ModelError, match="cpu-small, cpu-small-prior, gpu-base"):
        load_config("no-such-config")


def test_build_model_arch_swap() -> None:
    cfg = load_config("cpu-small")
    assert isinstance(build_model(cfg), RTFSyn)
    assert isinstance(build_model(cfg.with_arch("crossattn")), CrossAttnSynth)
    assert isinstance(build_model(cfg.with_arch("unet3d").to_dict()), UNet3D)
    assert isinstance(build_model("cpu-small"), RTFSyn)


def test_budgets() -> None:
    """DESIGN.md: ≤ 10M params; ≤ 1.5 MFLOP per output voxel incl. sliding-window overlap
    (overlap 0.25 → ×(4/3)³ ≈ 2.37 evaluations per voxel) for the default model."""
    small = build_model("cpu-small")
    assert count_parameters(small) <= 2_000_000
    per_voxel = count_flops(small, 24) / 24**3
    assert per_voxel * (4 / 3) ** 3 <= 1.5e6
    assert count_parameters(build_model("gpu-base")) <= 10_000_000
