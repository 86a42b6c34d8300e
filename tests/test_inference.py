from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

import rtfsyn
from conftest import make_nifti, oblique_lps_affine
from rtfsyn import io
from rtfsyn.checkpoint import CheckpointError
from rtfsyn.errors import MetadataError
from rtfsyn.inference import block_factors, load_model, synthesize_image


def _head(path, shape=(30, 34, 26), affine=None, seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape, dtype=np.float32)
    c = (np.array(shape) - 1) / 2
    r = ((z - c[0]) / 12) ** 2 + ((y - c[1]) / 14) ** 2 + ((x - c[2]) / 10) ** 2
    tex = ndimage.gaussian_filter(rng.random(shape).astype(np.float32), 2)
    data = np.where(r <= 1, 100 + 800 * tex, 0).astype(np.float32)
    return make_nifti(path, data=data, affine=affine if affine is not None else np.eye(4))


def test_block_factors() -> None:
    assert block_factors((1.0, 1.0, 1.0), 2.0) == (2, 2, 2)
    assert block_factors((1.0, 1.0, 5.0), 2.0) == (2, 2, 1)
    assert block_factors((0.7, 0.7, 0.7), None) == (1, 1, 1)


@pytest.mark.parametrize("affine", [np.eye(4), oblique_lps_affine((1.0, 1.1, 0.9))])
def test_output_on_input_grid(tmp_path, tiny_checkpoint, affine) -> None:
    src = _head(tmp_path / "sub_T1w.nii.gz", affine=affine)
    res = synthesize_image(src, "T2w", "TR=3000,TE=90", model=tiny_checkpoint, device="cpu")
    img = res.image
    orig = nib.load(str(src))
    assert img.shape == orig.shape
    assert np.allclose(img.affine, orig.affine)
    data = np.asarray(img.dataobj)
    assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1
    assert np.all(data[np.asarray(orig.dataobj) == 0] == 0)  # zero outside the brain
    prov = res.provenance
    assert prov["target_metadata"]["contrast"] == "T2w"
    assert prov["target_metadata"]["echo_time"] == pytest.approx(0.09)
    assert "Contrast: T2w" in prov["prompt"] and prov["work_factors"] == [2, 2, 2]
    json.dumps(prov)


def test_output_at_requested_spacing(tmp_path, tiny_checkpoint) -> None:
    src = _head(tmp_path / "a_T1w.nii.gz", affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    img = rtfsyn.synthesize(src, target="FLAIR", model=tiny_checkpoint, spacing=1.0,
                            device="cpu")
    assert np.allclose(img.header.get_zooms()[:3], 1.0)
    assert img.shape == (60, 68, 52)


def test_python_api_accepts_image_and_dict(tmp_path, tiny_checkpoint) -> None:
    src = nib.load(str(_head(tmp_path / "a.nii.gz")))
    lm = load_model(tiny_checkpoint, "cpu")
    with pytest.raises(MetadataError, match="cannot tell the source contrast"):
        rtfsyn.synthesize(src, target="T2w", metadata={"TE": 100, "TR": 4000}, model=lm)
    img = rtfsyn.synthesize(src, target="T2w", metadata={"TE": 100, "TR": 4000}, model=lm,
                            source_contrast="T1w")
    assert img.shape == src.shape


def test_metadata_contrast_conflict(tmp_path, tiny_checkpoint) -> None:
    src = _head(tmp_path / "a_T1w.nii.gz")
    with pytest.raises(MetadataError, match="says contrast FLAIR but T2w was requested"):
        synthesize_image(src, "T2w", "contrast=FLAIR,TE=90", model=tiny_checkpoint,
                         device="cpu")


def test_missing_model(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="neither a file nor a known model name"):
        load_model(tmp_path / "nope.safetensors")


def test_spacing_output_keeps_the_input_orientation(tmp_path, tiny_checkpoint) -> None:
    """issue 13: ``spacing`` outputs were written in RAS; now input axis order/direction."""
    aff = np.array([[0, 0, -2.0, 40], [-2.0, 0, 0, 30], [0, 2.0, 0, -20], [0, 0, 0, 1]])  # PSL
    src = _head(tmp_path / "a_T1w.nii.gz", affine=aff)
    res = synthesize_image(src, "T2w", model=tiny_checkpoint, spacing=1.0, device="cpu")
    img = res.image
    assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(aff) == ("P", "S", "L")
    assert np.allclose(io_spacing(img), 1.0)
    assert img.shape == (60, 68, 52)  # the input's axis order, twice as many voxels
    # same field of view: the world centre of the grid is unchanged
    centre = lambda a, shape: a[:3, :3] @ ((np.array(shape) - 1) / 2) + a[:3, 3]  # noqa: E731
    assert np.allclose(centre(img.affine, img.shape), centre(aff, (30, 34, 26)), atol=1e-4)
    # the output says what its intensities are
    assert b"0-1" in img.header["descrip"].tobytes()
    assert res.provenance["source_contrast_from"] == "file name a_T1w.nii.gz"


def io_spacing(img) -> tuple[float, ...]:
    from rtfsyn import io

    return io.spacing_of(img)


class _Recorder(torch.nn.Module):
    """Wraps a model and keeps what it was handed (input, metadata, output shape)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[tuple] = []

    def forward(self, x, src_meta, tgt_meta, out_shape=None):
        self.calls.append((x.clone(), list(src_meta), list(tgt_meta), out_shape))
        return self.model(x, src_meta, tgt_meta, out_shape=out_shape)


def test_slice_first_image_gets_ras_voxel_sizes(tmp_path, tiny_checkpoint) -> None:
    """A slice-first 5×2×2 mm file and the same image stored RAS: same metadata, model
    inputs and output (after reorienting back); the voxel size is (2, 2, 5) in RAS order."""
    ras = nib.load(str(_head(tmp_path / "ras_T1w.nii.gz", shape=(30, 34, 10),
                             affine=np.diag([2.0, 2.0, 5.0, 1.0]))))
    data = np.asarray(ras.dataobj)
    sf_affine = np.array([[0, 2.0, 0, 0], [0, 0, 2.0, 0], [5.0, 0, 0, 0], [0, 0, 0, 1]])
    sf_path = make_nifti(tmp_path / "sf_T1w.nii.gz", data=data.transpose(2, 0, 1).copy(),
                         affine=sf_affine)
    assert io.canonical_voxel_size(nib.load(str(sf_path))) == (2.0, 2.0, 5.0)
    runs = {}
    for name, path in (("ras", tmp_path / "ras_T1w.nii.gz"), ("sf", sf_path)):
        lm = load_model(tiny_checkpoint, "cpu")
        lm.model = _Recorder(lm.model)
        res = synthesize_image(path, "T2w", "TR=4000,TE=90", model=lm)
        runs[name] = (res, lm.model.calls)
    (res_ras, calls_ras), (res_sf, calls_sf) = runs["ras"], runs["sf"]
    for key in ("source_metadata", "target_metadata", "prompt", "source_prompt",
                "work_factors"):
        assert res_ras.provenance[key] == res_sf.provenance[key], key
    assert res_sf.provenance["source_metadata"]["voxel_size"] == [2.0, 2.0, 5.0]
    assert len(calls_ras) == len(calls_sf) > 0
    for a, b in zip(calls_ras, calls_sf, strict=True):
        assert torch.equal(a[0], b[0])
        assert a[1] == b[1] and a[2] == b[2] and a[3] == b[3]
    assert calls_sf[0][1][0].voxel_size == (2.0, 2.0, 5.0)  # work factors (1, 1, 1)
    back = io.to_canonical(res_sf.image)
    np.testing.assert_allclose(np.asarray(back.dataobj), np.asarray(res_ras.image.dataobj),
                               atol=1e-6)


def test_adapters_give_ras_voxel_sizes(tmp_path) -> None:
    from rtfsyn.data.cases import header_voxel_size

    path = make_nifti(tmp_path / "x.nii.gz", shape=(10, 12, 14),
                      affine=np.array([[0, 2.0, 0, 0], [0, 0, 3.0, 0], [5.0, 0, 0, 0],
                                       [0, 0, 0, 1]]))
    assert header_voxel_size(path) == (2.0, 3.0, 5.0)
    assert io.canonical_voxel_size(oblique_lps_affine((1.2, 0.9, 2.5))) == (1.2, 0.9, 2.5)


def test_bare_contrast_as_metadata(tmp_path, tiny_checkpoint) -> None:
    src = _head(tmp_path / "a_T1w.nii.gz", shape=(16, 18, 14))
    lm = load_model(tiny_checkpoint, "cpu")
    img = rtfsyn.synthesize(src, target="T2w", metadata="T2w", model=lm)
    assert img.shape == (16, 18, 14)
    res = synthesize_image(src, "t2", "T2w,TE=95", model=lm)
    assert res.provenance["target_metadata"]["echo_time"] == pytest.approx(0.095)
    with pytest.raises(MetadataError, match="says contrast FLAIR but T2w was requested"):
        synthesize_image(src, "T2w", "FLAIR", model=lm)


def test_models_trained_before_the_sequence_fix_get_no_sequence(tiny_checkpoint) -> None:
    from rtfsyn.inference import load_model, sequence_conditioned

    lm = load_model(tiny_checkpoint, "cpu")
    assert not sequence_conditioned(lm)
    lm.info.info["sequence_conditioning"] = True
    assert sequence_conditioned(lm)
