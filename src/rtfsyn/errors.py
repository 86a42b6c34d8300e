"""User-facing errors.

Every error that a user can cause (bad file, bad metadata, bad option) is raised as an
:class:`RtfsynError` with a one-line message saying what is wrong and how to fix it. The CLI
prints such errors on one line and exits with a non-zero code; any other exception is a bug.
"""

from __future__ import annotations


class RtfsynError(ValueError):
    """An error caused by user input; its message is one line and says how to fix it."""


class InputImageError(RtfsynError):
    """A NIfTI file that cannot be used (unreadable, wrong dimensionality, non-finite…)."""


class MetadataError(RtfsynError):
    """Acquisition metadata that is malformed or out of range."""


class DatasetError(RtfsynError):
    """A dataset folder that does not match any supported layout."""


class OutputPathError(RtfsynError):
    """An output path that must not be written (an input, a sidecar, existing, unwritable…)."""


class OutputWriteError(RtfsynError):
    """Writing an output failed (disk full, permission changed, folder removed…)."""
