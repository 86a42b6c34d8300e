from __future__ import annotations

import gzip
import os
import stat

import nibabel as nib
import numpy as np
import pytest

from conftest import make_nifti, oblique_lps_affine
from rtfsyn import io
from rtfsyn.errors import InputImageError, RtfsynError

AFFINES = {
    "lps": np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.diag([0.9, 1.1, 2.0, 1.0]),
    "oblique": oblique_lps_affine(),
    "pir": np.array([[0, 0, -1.0, 5], [-1.2, 0, 0, 3], [0, -0.8, 0, -2], [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_canonical_round_trip_is_exact(tmp_path, name: str) -> None:
    src = make_nifti(tmp_path / "in.nii.gz", affine=AFFINES[name], sform_code=2, qform_code=1)
    img = io.load_nifti(src)
    canon = io.to_canonical(img)
    assert nib.aff2axcodes(canon.affine) == ("R", "A", "S")
    back = io.from_canonical(np.asanyarray(canon.dataobj), img)
    out = io.save_nifti(back, tmp_path / "out.nii.gz", protect=[src])
    orig = nib.load(str(src))
    saved = nib.load(str(out))
    assert np.array_equal(saved.get_fdata(), orig.get_fdata())
    assert np.array_equal(saved.affine, orig.affine)
    assert int(saved.header["sform_code"]) == 2
    assert int(saved.header["qform_code"]) == 1


def test_singleton_4d_is_squeezed(tmp_path) -> None:
    data = np.random.default_rng(0).random((6, 7, 8, 1)).astype(np.float32)
    img = io.load_nifti(make_nifti(tmp_path / "a.nii.gz", data=data))
    assert img.shape == (6, 7, 8)


def test_real_4d_is_rejected(tmp_path) -> None:
    data = np.zeros((6, 7, 8, 3), np.float32)
    with pytest.raises(InputImageError, match=r"expected a 3-D image.*3 volumes"):
        io.load_nifti(make_nifti(tmp_path / "a.nii.gz", data=data))


def test_2d_is_rejected(tmp_path) -> None:
    with pytest.raises(InputImageError, match="expected a 3-D image"):
        io.load_nifti(make_nifti(tmp_path / "a.nii.gz", data=np.zeros((6, 7), np.float32)))


def test_nan_is_rejected(tmp_path) -> None:
    data = np.ones((6, 7, 8), np.float32)
    data[1, 2, 3] = np.nan
    data[2, 2, 3] = np.inf
    with pytest.raises(InputImageError, match="2 voxels are NaN or Inf"):
        io.load_nifti(make_nifti(tmp_path / "a.nii.gz", data=data))


def _zero_voxel_file(tmp_path):
    """A NIfTI whose header has a zero voxel size and no affine (only pixdim)."""
    img = nib.Nifti1Image(np.ones((6, 7, 8), np.float32), None)
    img.header["pixdim"][1:4] = [1.0, 0.0, 1.0]
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    path = tmp_path / "a.nii.gz"
    nib.save(img, str(path))
    return path


def test_zero_voxel_size_is_rejected(tmp_path) -> None:
    path = _zero_voxel_file(tmp_path)
    with pytest.raises(InputImageError, match="voxel sizes .* include zero"):
        io.load_nifti(path)


def test_uncompressed_file_named_gz_is_read(tmp_path) -> None:
    plain = make_nifti(tmp_path / "a.nii")
    misnamed = tmp_path / "b.nii.gz"
    os.rename(plain, misnamed)
    assert io.load_nifti(misnamed).shape == (12, 14, 10)


def test_gzipped_file_named_nii_is_read(tmp_path) -> None:
    gz = make_nifti(tmp_path / "a.nii.gz")
    misnamed = tmp_path / "b.nii"
    misnamed.write_bytes(gz.read_bytes())
    assert io.load_nifti(misnamed).shape == (12, 14, 10)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [(b"", "not a readable NIfTI"), (b"hello world" * 10, "not a readable NIfTI")],
)
def test_corrupt_files(tmp_path, content: bytes, pattern: str) -> None:
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(gzip.compress(content))
    with pytest.raises(InputImageError, match=pattern) as info:
        io.load_nifti(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_file(tmp_path) -> None:
    good = make_nifti(tmp_path / "a.nii", shape=(20, 20, 20))
    cut = tmp_path / "cut.nii"
    cut.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(InputImageError, match="not a readable NIfTI"):
        io.load_nifti(cut)


def test_missing_and_wrong_names(tmp_path) -> None:
    with pytest.raises(InputImageError, match="does not exist"):
        io.load_nifti(tmp_path / "nope.nii.gz")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InputImageError, match=r"not a NIfTI file name"):
        io.load_nifti(tmp_path / "x.txt")
    with pytest.raises(InputImageError, match="is a folder"):
        io.load_nifti(tmp_path)


def test_save_refuses_input_and_is_atomic(tmp_path) -> None:
    src = make_nifti(tmp_path / "in.nii.gz")
    img = io.load_nifti(src)
    before = src.read_bytes()
    with pytest.raises(RtfsynError, match="refusing to overwrite input"):
        io.save_nifti(img, src, protect=[src])
    assert src.read_bytes() == before
    with pytest.raises(RtfsynError, match="exists: pass --overwrite"):
        io.save_nifti(img, src, overwrite=False)
    out = io.save_nifti(np.zeros(img.shape, np.float32), tmp_path / "sub" / "o.nii.gz",
                        reference=img)
    assert out.exists()
    assert [p.name for p in out.parent.iterdir()] == ["o.nii.gz"]  # no temporary left


def test_save_failure_leaves_nothing(tmp_path, monkeypatch) -> None:
    img = io.load_nifti(make_nifti(tmp_path / "in.nii.gz"))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(RtfsynError, match="cannot write .*disk full"):
        io.save_nifti(img, tmp_path / "out" / "o.nii.gz")
    assert list((tmp_path / "out").iterdir()) == []


def test_save_with_affine_only(tmp_path) -> None:
    aff = oblique_lps_affine()
    out = io.save_nifti(np.ones((4, 5, 6), np.float32), tmp_path / "a.nii.gz", affine=aff)
    img = nib.load(str(out))
    assert np.allclose(img.affine, aff, atol=1e-5)
    assert int(img.header["sform_code"]) == 1


def test_resample_to_spacing_keeps_centre_and_orientation(tmp_path) -> None:
    aff = oblique_lps_affine(spacing=(1.2, 0.9, 2.5))
    img = io.load_nifti(make_nifti(tmp_path / "a.nii.gz", affine=aff, shape=(20, 22, 10)))
    res = io.resample_to_spacing(img, 1.0)
    assert np.allclose(io.spacing_of(res), 1.0)
    assert res.shape == (24, 20, 25)
    centre = lambda im: im.affine @ np.r_[(np.array(im.shape) - 1) / 2.0, 1.0]  # noqa: E731
    assert np.allclose(centre(res), centre(img))
    assert nib.aff2axcodes(res.affine) == nib.aff2axcodes(img.affine)


def test_resample_round_trip_on_smooth_data(tmp_path) -> None:
    x, y, z = np.meshgrid(*[np.linspace(0, 1, n) for n in (24, 26, 12)], indexing="ij")
    data = (np.sin(3 * x) + np.cos(2 * y) + z).astype(np.float32)
    img = io.load_nifti(make_nifti(tmp_path / "a.nii.gz", data=data, affine=oblique_lps_affine()))
    back = io.resample_to_reference(io.resample_to_spacing(img, 0.7), img)
    assert back.shape == img.shape
    assert np.array_equal(back.affine, img.affine)
    inner = (slice(2, -2),) * 3
    err = np.abs(back.get_fdata()[inner] - data[inner]).max()
    assert err < 0.02


def test_resample_identity_is_noop(tmp_path) -> None:
    img = io.load_nifti(make_nifti(tmp_path / "a.nii.gz"))
    assert io.resample_to_spacing(img, 1.0) is img
    back = io.resample_to_reference(img, img)
    assert np.array_equal(back.get_fdata(), img.get_fdata())


@pytest.mark.parametrize("bad", [0, -1, (1, 2), float("nan")])
def test_bad_spacing(tmp_path, bad) -> None:
    img = io.load_nifti(make_nifti(tmp_path / "a.nii.gz"))
    with pytest.raises(RtfsynError, match="spacing .* is invalid"):
        io.resample_to_spacing(img, bad)


def test_real_brats_round_trip(real_data, tmp_path) -> None:
    src = real_data / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t2w.nii.gz"
    img = io.load_nifti(src)
    assert img.shape == (240, 240, 155)
    back = io.from_canonical(np.asanyarray(io.to_canonical(img).dataobj), img)
    out = io.save_nifti(back, tmp_path / "t2w.nii.gz", protect=[src])
    assert np.array_equal(nib.load(str(out)).get_fdata(), nib.load(str(src)).get_fdata())
    assert np.array_equal(nib.load(str(out)).affine, nib.load(str(src)).affine)


def test_saved_file_has_umask_permissions(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        path = io.save_nifti(np.zeros((3, 3, 3), np.float32), tmp_path / "a.nii.gz",
                             affine=np.eye(4))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]


# --------------------------------------------------------------------------- issue 13
def test_text_file_named_nii_gz_says_not_nifti_gzip(tmp_path) -> None:
    path = tmp_path / "notes.nii.gz"
    path.write_text("hello, this is a text file\n" * 20)
    with pytest.raises(InputImageError, match="not a NIfTI/gzip file") as info:
        io.load_nifti(path)
    assert "complete" not in str(info.value)


def test_nibabel_log_lines_do_not_reach_the_terminal(tmp_path) -> None:
    import subprocess
    import sys

    path = _zero_voxel_file(tmp_path)
    # a fresh process: nibabel's own log handler writes to the real stderr there
    proc = subprocess.run([sys.executable, "-m", "rtfsyn", "synthesize", "-i", str(path), "-t",
                           "T2w", "-s", "T1w"], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 2
    assert "pixdim[1,2,3] should be non-zero" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # our one line only
    assert "include zero" in proc.stderr


def test_singular_affine_reports_the_affine(tmp_path) -> None:
    import struct

    path = tmp_path / "sing.nii"
    nib.save(nib.Nifti1Image(np.ones((6, 7, 8), np.float32), np.eye(4)), str(path))
    raw = bytearray(path.read_bytes())
    raw[296:312] = struct.pack("<4f", 0, 0, 0, 0)  # srow_y = 0: the y axis has no size
    path.write_bytes(bytes(raw))
    with pytest.raises(InputImageError, match="affine is singular") as info:
        io.load_nifti(path)
    msg = str(info.value)
    assert "rows: 1 0 0 0; 0 0 0 0; 0 0 1 0" in msg
    assert "(1.0, 1.0, 1.0)" not in msg  # no longer "voxel sizes (1, 1, 1) include zero"


def test_geometry_only_keeps_geometry_without_voxels() -> None:
    img = nib.Nifti1Image(np.ones((6, 5, 4), np.float32), np.diag([2.0, 1.5, 1.0, 1.0]))
    ref = io.geometry_only(img)
    assert ref.shape == img.shape and np.allclose(ref.affine, img.affine)
    assert np.asanyarray(ref.dataobj).strides == (0, 0, 0)  # no memory behind it
    out = io.from_canonical(np.zeros(io.to_canonical(img).shape, np.float32), ref)
    assert out.shape == img.shape and np.allclose(out.affine, img.affine)
