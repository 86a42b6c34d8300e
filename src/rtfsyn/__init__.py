"""rtfsyn: metadata-guided cross-modality 3D MRI synthesis (RTFSyn, refine-then-fusion)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Metadata", "__version__", "synthesize"]


def __getattr__(name: str) -> Any:
    # Lazy imports keep `rtfsyn --version` and `import rtfsyn` fast (no torch import).
    if name == "Metadata":
        from rtfsyn.metadata import Metadata

        return Metadata
    if name == "synthesize":
        from rtfsyn.inference import synthesize

        return synthesize
    raise AttributeError(f"module 'rtfsyn' has no attribute {name!r}")
