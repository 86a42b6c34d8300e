"""Training: configuration, patch dataset, losses and the (DDP-capable) training loop."""

from __future__ import annotations

from rtfsyn.training.config import TrainConfig, load_train_config

__all__ = ["TrainConfig", "load_train_config", "train"]


def __getattr__(name: str):
    if name == "train":
        from rtfsyn.training.trainer import train

        return train
    raise AttributeError(name)
