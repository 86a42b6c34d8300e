"""Dataset adapters producing :class:`Case` records (BIDS, BraTS, IXI, plain folders)."""

from __future__ import annotations

from rtfsyn.data.cases import LAYOUTS, Case, detect_layout, load_cases

__all__ = ["LAYOUTS", "Case", "detect_layout", "load_cases"]
