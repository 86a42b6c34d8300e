"""Shared fixtures: tiny synthetic NIfTIs and the real data in ../shared (skipped if absent)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from _tiny import TINY_MODEL, write_tiny_bids

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"


@pytest.fixture
def real_data() -> Path:
    """``../shared/data/real``; tests using it skip on a machine without it."""
    if not REAL.is_dir():
        pytest.skip("../shared/data/real is not present")
    return REAL


def oblique_lps_affine(spacing=(1.2, 0.9, 2.5), angles=(10.0, 5.0, -20.0)) -> np.ndarray:
    """An LPS-flipped, rotated (oblique) affine with anisotropic voxels."""
    aff = np.eye(4)
    rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    aff[:3, :3] = rot @ np.diag([-spacing[0], -spacing[1], spacing[2]])
    aff[:3, 3] = [12.5, -30.25, 7.0]
    return aff


def make_nifti(
    path: Path,
    data: np.ndarray | None = None,
    affine: np.ndarray | None = None,
    shape=(12, 14, 10),
    seed: int = 0,
    sform_code: int = 1,
    qform_code: int = 1,
) -> Path:
    """Write a small float32 NIfTI (random smooth-ish data) and return its path."""
    if data is None:
        rng = np.random.default_rng(seed)
        data = rng.random(shape).astype(np.float32)
    affine = np.eye(4) if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=sform_code)
    img.set_qform(affine, code=qform_code)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    """An (untrained) tiny rtfsyn checkpoint with a training spacing of 2 mm."""
    import torch

    from rtfsyn.checkpoint import save_checkpoint
    from rtfsyn.models import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(**TINY_MODEL)
    model = build_model(cfg)
    config = {"model": cfg.model_dump(mode="json"),
              "train": {"spacing": 2.0, "patch_size": 16}}
    return save_checkpoint(tmp_path / "tiny.safetensors", model, config, step=0)


@pytest.fixture
def tiny_bids(tmp_path) -> Path:
    """Three 28³ subjects (T1w, T2w, FLAIR with sidecars) at sites A / B."""
    return write_tiny_bids(tmp_path / "bids")
