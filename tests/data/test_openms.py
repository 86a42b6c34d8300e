"""Open MS readers (rtfsyn.data.openms): both layouts, transforms, registration, head masks."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_nifti
from rtfsyn.data import detect_layout, load_cases
from rtfsyn.data.inspect import check_case
from rtfsyn.data.openms import (
    _resample,
    align_study,
    brain_mask_in_head,
    find_openms_folders,
    head_mask,
    normalized_mutual_information,
)

SHIFT_LPS = (4.0, -3.0, 5.0)  # mm: the FLAIR-space point p sits at p + SHIFT in the T1W scan


def _blobs(points: np.ndarray) -> np.ndarray:
    """A smooth 'head' defined in physical (LPS) space: (N, 3) points → (N,) intensities."""
    centres = np.array([[0, 0, 0], [12, 5, -4], [-10, -8, 6], [4, -14, -8], [-6, 12, 10]], float)
    weights = np.array([300.0, 500.0, 200.0, 400.0, 250.0])
    sig = np.array([25.0, 6.0, 7.0, 5.0, 6.0])
    d2 = ((points[:, None, :] - centres[None]) ** 2).sum(-1)
    return (weights * np.exp(-d2 / (2 * sig**2))).sum(-1)


def _write_scan(path, spacing, origin, shift=(0.0, 0.0, 0.0), size=(36, 36, 14), angle=0.0):
    """Write ``_blobs(p - shift)`` on an oblique grid with SimpleITK (NIfTI)."""
    import SimpleITK as sitk

    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    direction = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], float)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    pts = np.asarray(origin) + (direction @ (idx * np.asarray(spacing)).T).T
    vol = _blobs(pts - np.asarray(shift)).reshape(size).astype(np.float32)
    img = sitk.GetImageFromArray(np.transpose(vol, (2, 1, 0)).copy())
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction.ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def _write_transform(path, translation) -> None:
    """An ITK transform file in the layout of the open MS data (MatrixOffsetTransformBase)."""
    path.write_text(
        "#Insight Transform File V1.0\n#Transform 0\n"
        "Transform: MatrixOffsetTransformBase_double_3_3\n"
        f"Parameters: 1 0 0 0 1 0 0 0 1 {translation[0]} {translation[1]} {translation[2]}\n"
        "FixedParameters: 0 0 0\n"
    )


def _longitudinal(root):
    """patient05: study1 FLAIR + T1W (other grid, shifted, with transform) + T2W (other grid,
    rotated, NO transform); study2: only transform files (no images)."""
    p = root / "patient05"
    _write_scan(p / "study1_FLAIR.nii.gz", (2.0, 2.0, 4.0), (-35.0, -35.0, -26.0))
    _write_scan(p / "study1_T1W.nii.gz", (1.6, 1.6, 3.0), (-30.0, -33.0, -22.0),
                shift=SHIFT_LPS, size=(44, 44, 20))
    _write_transform(p / "study1_T1W_intrastudy_to_FLAIR.txt", SHIFT_LPS)
    _write_scan(p / "study1_T2W.nii.gz", (1.8, 1.8, 3.5), (-33.0, -36.0, -24.0),
                shift=(2.0, 2.0, 0.0), size=(40, 40, 16), angle=6.0)
    _write_transform(p / "study2_T1W_intrastudy_to_FLAIR.txt", (0, 0, 0))
    return p


def _corr(a, b, m) -> float:
    return float(np.corrcoef(a[m], b[m])[0, 1])


def test_longitudinal_layout_aligns_every_contrast(tmp_path, monkeypatch) -> None:
    import nibabel as nib

    monkeypatch.setenv("RTFSYN_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "open-ms" / "raw"
    _longitudinal(data)
    before = sorted(p.name for p in (data / "patient05").iterdir())
    assert detect_layout(data) == "openms"
    cases = load_cases(data)
    assert [c.subject for c in cases] == ["openms-long-patient05-study1"]  # study2: no images
    case = cases[0]
    assert case.info["participant"] == "openms-long-patient05"
    assert case.info["session"] == "study1" and case.info["skull_stripped"] is False
    assert case.contrasts == ["T1w", "T2w", "FLAIR"]
    assert case.images["FLAIR"].parent == data / "patient05"  # the reference is read as is
    for c in ("T1w", "T2w"):  # the others are cached, never written beside the data
        assert (tmp_path / "cache") in case.images[c].parents
    assert sorted(p.name for p in (data / "patient05").iterdir()) == before
    assert check_case(case).ok  # one grid: the FLAIR's
    assert case.info["mask"].startswith("head")  # a blob without a skull: no brain estimate
    ali = case.info["alignment"]
    assert ali["T1w"]["method"] == "transform file"
    assert ali["T2w"]["method"].startswith("rigid registration")
    flair = nib.load(case.images["FLAIR"]).get_fdata()
    mask = nib.load(case.mask).get_fdata() > 0
    assert 0.2 < mask.mean() < 1.0
    for c in ("T1w", "T2w"):
        aligned = nib.load(case.images[c]).get_fdata()
        m = mask & (aligned > 0)
        assert _corr(aligned, flair, m) > 0.97, c
        assert ali[c]["nmi"] > ali[c]["nmi_header_only"] + 0.02, c
    # cached: the second read does not recompute
    stamp = case.images["T1w"].stat().st_mtime_ns
    again = load_cases(data)[0]
    assert again.images == case.images and case.images["T1w"].stat().st_mtime_ns == stamp


def test_transform_direction_convention(tmp_path) -> None:
    """The file maps FLAIR points into the moving scan: Resample(moving, flair, tx) aligns; the
    inverse (the other convention) and the headers alone do not."""
    import SimpleITK as sitk

    p = _longitudinal(tmp_path)
    fixed = sitk.ReadImage(str(p / "study1_FLAIR.nii.gz"), sitk.sitkFloat32)
    moving = sitk.ReadImage(str(p / "study1_T1W.nii.gz"), sitk.sitkFloat32)
    tx = sitk.ReadTransform(str(p / "study1_T1W_intrastudy_to_FLAIR.txt"))
    ref = np.transpose(sitk.GetArrayFromImage(fixed), (2, 1, 0))
    scores = {}
    for name, t in (("file", tx), ("identity", sitk.Transform(3, sitk.sitkIdentity)),
                    ("inverse", tx.GetInverse())):
        arr, cov = _resample(moving, fixed, t)
        scores[name] = _corr(arr, ref, cov & (ref > 20))
    assert scores["file"] > 0.99 > scores["identity"] > scores["inverse"]


def test_failed_registration_is_flagged_not_paired(tmp_path, monkeypatch) -> None:
    import rtfsyn.data.openms as om

    p = _longitudinal(tmp_path / "d")

    def boom(fixed, moving, seed=0):
        raise RuntimeError("Exception thrown in SimpleITK ImageRegistrationMethod_Execute")

    monkeypatch.setattr(om, "_rigid_register", boom)
    out = align_study({"FLAIR": p / "study1_FLAIR.nii.gz", "T2w": p / "study1_T2W.nii.gz"}, {},
                      tmp_path / "cache")
    assert list(out["images"]) == ["FLAIR"]
    assert out["flags"] and out["flags"][0].startswith("T2w left out: rigid registration")


def test_cross_sectional_layout(tmp_path) -> None:
    p = tmp_path / "MNI" / "patient07"
    aff = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS like the real files
    for name in ("T1", "T1POST", "T2", "FLAIR"):
        make_nifti(p / f"{name}_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
                   affine=aff, shape=(12, 14, 10))
    make_nifti(p / "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz",
               affine=aff, shape=(12, 14, 10))
    assert find_openms_folders(tmp_path) == {p: "cross"}
    assert detect_layout(tmp_path) == "openms"
    (case,) = load_cases(tmp_path)
    assert case.subject == "openms-cs-patient07" and case.layout == "openms"
    assert case.contrasts == ["T1w", "T1Gd", "T2w", "FLAIR"]
    assert case.images["T1w"].name.startswith("T1_")
    assert case.labels is not None and case.labels.name.startswith("GOLD_STANDARD")
    assert case.info["skull_stripped"] is True and case.info["participant"] == case.subject


def test_mixed_folder_keeps_openms_out_of_brats_and_folder(tmp_path, monkeypatch) -> None:
    """``study1_FLAIR``/``study1_T2W`` look like old BraTS names; they must not become a BraTS
    case, nor a plain-folder case with the same participant twice."""
    monkeypatch.setenv("RTFSYN_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "real"
    _longitudinal(data / "open-ms-longitudinal-raw")
    for suffix in ("t1n", "t2w"):
        make_nifti(data / "BraTS-GLI-00000-000" / f"BraTS-GLI-00000-000-{suffix}.nii.gz")
    make_nifti(data / "other" / "patient05" / "patient05_T1w.nii.gz")
    assert detect_layout(data) == "mixed"
    cases = {c.subject: c.layout for c in load_cases(data)}
    assert cases == {"BraTS-GLI-00000-000": "brats", "openms-long-patient05-study1": "openms",
                     "other/patient05": "folder"}  # nested ids keep their path (issue 12)


def test_head_mask_fills_the_skull_gap() -> None:
    """Bright scalp ring, dark skull, brain inside: the mask is the whole head."""
    x, y, _ = np.meshgrid(*[np.arange(48) - 23.5] * 2, np.arange(8), indexing="ij")
    r = np.hypot(x, y)
    vol = np.where(r < 12, 300.0, 0.0) + np.where((r >= 15) & (r < 18), 600.0, 0.0)
    vol += np.abs(np.random.default_rng(0).normal(0, 4, vol.shape))  # noisy background
    mask = head_mask(vol)
    assert mask[r < 17.5].all() and not mask[r > 19.5].any()


def test_brain_mask_in_head_cuts_scalp_and_skull() -> None:
    """Brain inside a dark skull ring inside a scalp that is bright on the T1w: the estimate
    keeps the brain and drops skull and scalp; the head mask keeps everything."""
    x, y, _ = np.meshgrid(*[np.arange(72) - 35.5] * 2, np.arange(10), indexing="ij")
    r = np.hypot(x, y)
    rng = np.random.default_rng(0)
    brain, skull, scalp = r < 22, (r >= 22) & (r < 26), (r >= 26) & (r < 31)
    t1 = np.where(brain, 300.0 + 60.0 * (r < 12), 0.0) + np.where(scalp, 700.0, 0.0)
    flair = np.where(brain, 400.0 - 80.0 * (r < 12), 0.0) + np.where(scalp, 350.0, 0.0)
    t1[skull] = flair[skull] = 15.0
    vols = {c: v + np.abs(rng.normal(0, 4, v.shape)) for c, v in (("T1w", t1), ("FLAIR", flair))}
    head = head_mask(*vols.values())
    assert head[r < 30.5].all()
    est = brain_mask_in_head(vols, head, (1.0, 1.0, 3.0))
    assert est is not None
    assert est[r < 20.5].all()  # the brain, up to the skull
    assert not est[r > 23.5].any()  # no skull, no scalp
    # nothing to find: the estimate declines and the caller keeps the head mask
    assert brain_mask_in_head(vols, np.zeros_like(head), (1.0, 1.0, 3.0)) is None


def test_nmi_orders_alignment() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((20, 20, 20))
    assert normalized_mutual_information(a, a) == pytest.approx(2.0)
    assert normalized_mutual_information(a, 1 - a) == pytest.approx(2.0)
    assert normalized_mutual_information(a, rng.random(a.shape)) < 1.2


# ----------------------------------------------------------------------- real data (../shared)
def test_real_cross_sectional(real_data) -> None:
    import nibabel as nib

    cases = load_cases(real_data / "open-ms-cross-sectional")
    assert [c.subject for c in cases] == ["openms-cs-patient07", "openms-cs-patient19"]
    for c in cases:
        assert c.contrasts == ["T1w", "T1Gd", "T2w", "FLAIR"] and c.labels is not None
        assert check_case(c).ok
        img = nib.load(c.images["T1Gd"])
        assert img.shape == (182, 218, 182) and nib.aff2axcodes(img.affine) == ("L", "A", "S")
        assert "T1POST" in c.images["T1Gd"].name
        assert nib.load(c.labels).get_fdata().sum() > 100  # lesion voxels


def test_real_transform_direction_improves_alignment(real_data) -> None:
    """On patient03 study2 (the largest T1W→FLAIR transform: 2° and 5 mm) the transform as
    applied aligns the T1W to the FLAIR better than the headers alone, and the inverse (the
    other convention) is worse than both: NMI and edge (gradient) correlation in the head."""
    import SimpleITK as sitk

    folder = real_data / "open-ms-longitudinal-raw" / "patient03"
    fixed = sitk.ReadImage(str(folder / "study2_FLAIR.nii.gz"), sitk.sitkFloat32)
    moving = sitk.ReadImage(str(folder / "study2_T1W.nii.gz"), sitk.sitkFloat32)
    tx = sitk.ReadTransform(str(folder / "study2_T1W_intrastudy_to_FLAIR.txt"))
    ref = np.transpose(sitk.GetArrayFromImage(fixed), (2, 1, 0))
    head = head_mask(ref)
    g_ref = np.hypot(*np.gradient(ref, axis=(0, 1)))
    nmi, edge = {}, {}
    for name, t in (("file", tx), ("identity", sitk.Transform(3, sitk.sitkIdentity)),
                    ("inverse", tx.GetInverse())):
        arr, cov = _resample(moving, fixed, t)
        m = head & cov
        nmi[name] = normalized_mutual_information(ref, arr, m)
        edge[name] = _corr(np.hypot(*np.gradient(arr, axis=(0, 1))), g_ref, m)
    assert nmi["file"] > nmi["identity"] + 0.01 and nmi["identity"] > nmi["inverse"]
    assert edge["file"] > edge["identity"] + 0.1 and edge["identity"] > edge["inverse"]


def test_real_longitudinal_study(real_data, tmp_path) -> None:
    import nibabel as nib

    folder = real_data / "open-ms-longitudinal-raw" / "patient20"
    images = {"FLAIR": folder / "study2_FLAIR.nii.gz", "T1w": folder / "study2_T1W.nii.gz"}
    out = align_study(images, {"T1w": folder / "study2_T1W_intrastudy_to_FLAIR.txt"}, tmp_path)
    assert out["reference"] == "FLAIR" and not out["flags"]
    ali = out["alignment"]["T1w"]
    assert ali["method"] == "transform file" and ali["nmi"] > ali["nmi_header_only"]
    flair = nib.load(images["FLAIR"])
    t1 = nib.load(out["images"]["T1w"])
    assert t1.shape == flair.shape and np.allclose(t1.affine, flair.affine, atol=1e-4)
    head = nib.load(out["head_mask"]).get_fdata() > 0
    assert 0.2 < head.mean() < 0.8  # the head, not the field of view
    brain = nib.load(out["mask"]).get_fdata() > 0  # the loss mask: the estimated brain
    assert not (brain & ~head).any() and 0.35 < brain.sum() / head.sum() < 0.8
    ml = brain.sum() * np.prod(flair.header.get_zooms()[:3]) / 1000
    assert 900 < ml < 1900, ml  # an adult intracranial volume, not a head
    assert out == align_study(images, {"T1w": folder / "study2_T1W_intrastudy_to_FLAIR.txt"},
                              tmp_path)  # cached


def test_real_data_has_every_openms_case(real_data) -> None:
    cases = {c.subject: c for c in load_cases(real_data)}
    assert len(cases) == len(set(cases))
    om = {s: c for s, c in cases.items() if c.layout == "openms"}
    assert {"openms-cs-patient07", "openms-cs-patient19", "openms-long-patient19-study2"} <= set(om)
    assert len([s for s in om if s.startswith("openms-long")]) == 8  # studies with images
    assert not [c for c in cases.values() if c.layout == "brats" and "patient" in str(c.images)]
    for s, c in om.items():
        flags = check_case(c).flags
        assert flags == (["unpaired (1 contrast)"] if s == "openms-long-patient19-study1" else [])
