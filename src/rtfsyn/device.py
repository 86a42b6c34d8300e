"""Device selection (``auto`` → cuda → mps → cpu) and CPU thread settings."""

from __future__ import annotations

import os

import torch

from rtfsyn.errors import RtfsynError

__all__ = ["available_cpus", "resolve_device"]

DEVICES = ("auto", "cpu", "cuda", "mps")


def available_cpus() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def resolve_device(name: str = "auto", set_threads: bool = True) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a :class:`torch.device`, checking availability.

    On CPU, torch's intra-op threads are set to the usable cores unless ``OMP_NUM_THREADS``
    is set by the user.
    """
    name = (name or "auto").lower()
    base = name.split(":", 1)[0]
    if base not in DEVICES:
        raise RtfsynError(f"device {name!r} is unknown: use auto, cpu, cuda, cuda:N or mps")
    if base == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
    elif base == "cuda":
        if not torch.cuda.is_available():
            raise RtfsynError(
                "device cuda requested but CUDA is not available: install a CUDA build of "
                "torch (see README) or use --device cpu"
            )
        device = torch.device(name)
    elif base == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RtfsynError("device mps requested but MPS is not available: use --device cpu")
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    if device.type == "cpu" and set_threads and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(available_cpus())
    return device
