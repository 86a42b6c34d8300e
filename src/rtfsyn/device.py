"""Device selection (``auto`` → cuda → mps → cpu) and CPU thread settings."""

from __future__ import annotations

import os

import torch

from rtfsyn.errors import RtfsynError

__all__ = ["available_cpus", "configure_threads", "physical_cores", "resolve_device"]

DEVICES = ("auto", "cpu", "cuda", "mps")


def available_cpus() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def physical_cores() -> int:
    """Physical cores among the CPUs this process may use (SMT siblings counted once).

    Read from ``/sys/devices/system/cpu/cpuN/topology``; :func:`available_cpus` where that
    is not available.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return available_cpus()
    cores = set()
    for n in cpus:
        topo = f"/sys/devices/system/cpu/cpu{n}/topology"
        try:
            with open(f"{topo}/physical_package_id") as fh:
                pkg = fh.read().strip()
            with open(f"{topo}/core_id") as fh:
                core = fh.read().strip()
        except OSError:
            return available_cpus()
        cores.add((pkg, core))
    return max(1, len(cores))


def configure_threads() -> int:
    """Set torch's intra-op threads to the physical cores (dense fp32 kernels gain nothing
    from SMT siblings) unless ``OMP_NUM_THREADS`` is set; returns the thread count."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(physical_cores())
    return torch.get_num_threads()


def resolve_device(name: str = "auto", set_threads: bool = True) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a :class:`torch.device`, checking availability.

    On CPU, torch's intra-op threads are set to the usable physical cores unless
    ``OMP_NUM_THREADS`` is set by the user (:func:`configure_threads`).
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
    if device.type == "cpu" and set_threads:
        configure_threads()
    return device
