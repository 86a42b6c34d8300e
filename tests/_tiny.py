"""Constants shared by tests in several folders (imported as ``from _tiny import ...``)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

#: a very small rtfsyn model config used by training / inference tests (fast on CPU)
TINY_MODEL: dict = dict(
    encoder_channels=[8, 16], encoder_blocks=[1, 1], downsample=2, d_model=16, heads=2,
    attn_dim=16, pack_factor=2, fusion_blocks=1, post_blocks=1, dynconv_basis=3,
    dynconv_kernel=3, refinement_kernel=5, metadata_layers=1, decoder_hidden=16,
    decoder_layers=2, chunk_size=512, unet_channels=[8, 16], field_dropout=0.0,
)


def write_tiny_bids(root: Path, n_subjects: int = 3, shape=(28, 28, 28), seed: int = 0) -> Path:
    """Ellipsoid head with two 'tissues'; contrasts are different monotone maps of them."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny",
                                                              "BIDSVersion": "1.9.0"}))
    rows = ["participant_id\tage\tsex\tsite"]
    z, y, x = np.indices(shape, dtype=np.float32)
    c = (np.array(shape) - 1) / 2
    for i in range(1, n_subjects + 1):
        r = ((z - c[0]) / 11) ** 2 + ((y - c[1]) / 12) ** 2 + ((x - c[2]) / 10) ** 2
        brain = r <= 1.0
        wm = ndimage.gaussian_filter(rng.random(shape).astype(np.float32), 2.5)
        wm = (wm - wm.min()) / (wm.max() - wm.min())
        t1 = np.where(brain, 200 + 600 * wm, 0)
        t2 = np.where(brain, 900 - 500 * wm ** 1.5, 0)
        fl = np.where(brain, 300 + 400 * np.abs(wm - 0.5), 0)
        anat = root / f"sub-{i:02d}" / "anat"
        anat.mkdir(parents=True)
        aff = np.diag([1.0, 1.0, 1.0, 1.0])
        for name, vol, sidecar in (
            ("T1w", t1, {"RepetitionTime": 2.0, "EchoTime": 0.003, "InversionTime": 0.9,
                         "FlipAngle": 9}),
            ("T2w", t2, {"RepetitionTime": 4.0, "EchoTime": 0.09, "FlipAngle": 90}),
            ("FLAIR", fl, {"RepetitionTime": 9.0, "EchoTime": 0.12, "InversionTime": 2.5}),
        ):
            img = nib.Nifti1Image(vol.astype(np.float32), aff)
            nib.save(img, str(anat / f"sub-{i:02d}_{name}.nii.gz"))
            meta = {**sidecar, "MagneticFieldStrength": 3, "Manufacturer": "Siemens"}
            (anat / f"sub-{i:02d}_{name}.json").write_text(json.dumps(meta))
        rows.append(f"sub-{i:02d}\t{30 + i}\tF\t{'AB'[i % 2]}")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root
