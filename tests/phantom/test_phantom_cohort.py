"""Phantom cohort: determinism, BIDS output, round trip through the BIDS adapter, lesions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtfsyn.errors import RtfsynError
from rtfsyn.metadata import Metadata
from rtfsyn.phantom import (
    CONTRAST_ORDER,
    DEFAULT_SITES,
    make_cohort,
    sample_subject,
    simulate_subject,
    subject_id,
)
from rtfsyn.phantom.anatomy import base_anatomy

SPACING = 4.0  # coarse grid: every simulation here takes well under a second


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom") / "cohort"
    paths = make_cohort(root, n_subjects=5, n_sites=4, spacing=SPACING, seed=3,
                        progress=False)
    assert [p.name for p in paths] == [f"sub-0{i}" for i in range(1, 6)]
    return root


def _data(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


# --------------------------------------------------------------------------- anatomy
def test_base_anatomy_grid_and_tissues() -> None:
    base = base_anatomy(SPACING)
    assert base is base_anatomy(SPACING)  # cached
    assert base.shape == (50, 59, 48)
    assert np.allclose(np.diag(base.affine)[:3], SPACING)
    assert np.allclose(base.affine[:3, 3], [-98, -134, -72])
    assert not base.gm.flags.writeable
    csf = base.mask - base.gm - base.wm
    assert csf.min() > -1e-5
    inside = base.mask > 0.5
    assert base.gm[inside].mean() > 0.2 and base.wm[inside].mean() > 0.2
    assert 0.05 < csf[inside].mean() < 0.5


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_arrays_different_seed_different() -> None:
    site = DEFAULT_SITES[1]
    a = simulate_subject(sample_subject(0, 1, site), SPACING)
    b = simulate_subject(sample_subject(0, 1, site), SPACING)
    c = simulate_subject(sample_subject(1, 1, site), SPACING)
    d = simulate_subject(sample_subject(0, 2, site), SPACING)
    for contrast in CONTRAST_ORDER:
        assert a.images[contrast].dtype == np.float32
        assert np.array_equal(a.images[contrast], b.images[contrast])
        assert not np.array_equal(a.images[contrast], c.images[contrast])
        assert not np.array_equal(a.images[contrast], d.images[contrast])
    assert np.array_equal(a.labels, b.labels) and not np.array_equal(a.labels, c.labels)


def test_subject_parameters_do_not_depend_on_cohort_options() -> None:
    site = DEFAULT_SITES[0]
    p = sample_subject(7, 4, site)
    q = sample_subject(7, 4, site, lesions=True, n_subjects=100)
    assert p.deformation.angles_deg == q.deformation.angles_deg
    assert p.tissue_factors == q.tissue_factors and p.noise_seed == q.noise_seed
    assert p.lesions == () and 1 <= len(q.lesions) <= 3
    assert q.subject == "sub-005" and subject_id(0) == "sub-01"


def test_two_runs_give_identical_files(tmp_path) -> None:
    kw = {"n_subjects": 2, "n_sites": 2, "spacing": 6.0, "seed": 11, "progress": False}
    make_cohort(tmp_path / "a", **kw)
    make_cohort(tmp_path / "b", **kw)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                   if p.is_file())
    assert len(files) == 2 * 10 + 5
    for rel in files:
        if rel.suffix == ".gz":
            assert np.array_equal(_data(tmp_path / "a" / rel), _data(tmp_path / "b" / rel))
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


# --------------------------------------------------------------------------- BIDS output
def test_bids_files_and_top_level_metadata(cohort) -> None:
    desc = json.loads((cohort / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.9.0" and desc["DatasetType"] == "raw"
    gen = desc["GeneratedBy"][0]
    assert gen["Name"] == "rtfsyn phantom" and gen["Version"]
    assert gen["Parameters"]["seed"] == 3 and gen["Parameters"]["spacing"] == SPACING
    with open(cohort / "participants.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert list(rows[0]) == ["participant_id", "age", "sex", "site"]
    assert [r["site"] for r in rows] == ["SiteA", "SiteB", "SiteC", "SiteD", "SiteA"]
    assert set(json.loads((cohort / "participants.json").read_text())) == {
        "participant_id", "age", "sex", "site"}
    dseg = (cohort / "dseg.tsv").read_text().splitlines()
    assert dseg[0] == "index\tname" and "4\tlesion" in dseg
    anat = cohort / "sub-02" / "anat"
    names = sorted(p.name for p in anat.iterdir())
    assert names == sorted(
        [f"sub-02_{c}.nii.gz" for c in CONTRAST_ORDER] + [f"sub-02_{c}.json" for c in
                                                         CONTRAST_ORDER]
        + ["sub-02_desc-brain_mask.nii.gz", "sub-02_dseg.nii.gz"])


def test_images_mask_labels(cohort) -> None:
    anat = cohort / "sub-01" / "anat"
    ref = nib.load(str(anat / "sub-01_T1w.nii.gz"))
    assert ref.shape == base_anatomy(SPACING).shape
    assert np.allclose(ref.affine, base_anatomy(SPACING).affine)
    assert ref.get_data_dtype() == np.float32
    mask_img = nib.load(str(anat / "sub-01_desc-brain_mask.nii.gz"))
    labels_img = nib.load(str(anat / "sub-01_dseg.nii.gz"))
    assert mask_img.get_data_dtype() == np.uint8 and labels_img.get_data_dtype() == np.uint8
    mask = _data(anat / "sub-01_desc-brain_mask.nii.gz").astype(bool)
    labels = _data(anat / "sub-01_dseg.nii.gz")
    assert set(np.unique(labels)) == {0, 1, 2, 3}  # no lesions by default
    assert np.array_equal(labels > 0, mask)
    means = {}
    for contrast in CONTRAST_ORDER:
        img = _data(anat / f"sub-01_{contrast}.nii.gz")
        assert np.all(img[~mask] == 0) and np.all(img >= 0)
        assert 100 < np.percentile(img[mask], 99) < 3000
        means[contrast] = {k: float(img[labels == k].mean()) for k in (1, 2, 3)}
    csf, gm, wm = 1, 2, 3
    assert means["T1w"][wm] > means["T1w"][gm] > means["T1w"][csf]
    assert means["T2w"][csf] > means["T2w"][gm] > means["T2w"][wm]
    assert means["FLAIR"][gm] > means["FLAIR"][wm] > means["FLAIR"][csf]
    assert means["PDw"][gm] > means["PDw"][wm]


def test_sidecars_match_site_protocols(cohort) -> None:
    required = {"RepetitionTime", "EchoTime", "FlipAngle", "MagneticFieldStrength",
                "Manufacturer", "ManufacturersModelName", "InstitutionName", "SliceThickness",
                "SequenceFamily"}
    for i in range(4):
        site = DEFAULT_SITES[i]
        sub = f"sub-0{i + 1}"
        for contrast in CONTRAST_ORDER:
            path = cohort / sub / "anat" / f"{sub}_{contrast}.json"
            data = json.loads(path.read_text())
            protocol = site.protocols[contrast]
            assert required <= set(data)
            assert ("InversionTime" in data) == (protocol.family in ("IR", "MPRAGE"))
            # BIDS units: seconds
            assert 0 < data["EchoTime"] < 0.5 and 0.001 < data["RepetitionTime"] < 20
            assert data["RepetitionTime"] == protocol.tr and data["EchoTime"] == protocol.te
            assert data.get("InversionTime") == protocol.ti
            assert data["FlipAngle"] == protocol.flip_angle
            assert data["MagneticFieldStrength"] == site.field_strength
            assert data["Manufacturer"] == site.manufacturer
            assert data["ManufacturersModelName"] == site.model
            assert data["InstitutionName"] == site.name
            assert data["SequenceFamily"] == protocol.family
            assert data["SliceThickness"] == max(protocol.slice_thickness, SPACING)
            meta = Metadata.from_sidecar(path)
            assert meta.contrast.value == contrast
            assert meta.sequence.value == protocol.family
            assert meta.repetition_time == pytest.approx(protocol.tr)
            assert meta.echo_time == pytest.approx(protocol.te)
            assert meta.field_strength == site.field_strength
            assert meta.manufacturer == site.manufacturer and meta.site == site.name
    flair = json.loads((cohort / "sub-01" / "anat" / "sub-01_FLAIR.json").read_text())
    assert 1.5 < flair["InversionTime"] < 3.5  # seconds, CSF-nulling TI
    sited = json.loads((cohort / "sub-04" / "anat" / "sub-04_T2w.json").read_text())
    assert sited["SliceThickness"] == 5.0


def test_load_cases_round_trip(cohort) -> None:
    from rtfsyn.data import load_cases

    cases = load_cases(cohort)
    assert [c.subject for c in cases] == [f"sub-0{i}" for i in range(1, 6)]
    for i, case in enumerate(cases):
        assert case.layout == "bids"
        assert case.contrasts == ["T1w", "T2w", "FLAIR", "PDw"]
        assert case.site == DEFAULT_SITES[i % 4].name
        assert case.mask is not None and case.mask.name.endswith("_desc-brain_mask.nii.gz")
        assert case.labels is not None and case.labels.name.endswith("_dseg.nii.gz")
        meta = case.metadata["FLAIR"]
        assert meta.inversion_time == DEFAULT_SITES[i % 4].protocols["FLAIR"].ti
        assert meta.voxel_size == (SPACING,) * 3
        assert meta.age is not None and meta.sex in ("M", "F")


# --------------------------------------------------------------------------- lesions
def test_lesions_are_labelled_and_bright_on_flair_and_t2(tmp_path) -> None:
    site = DEFAULT_SITES[1]
    params = sample_subject(0, 1, site, lesions=True)
    sim = simulate_subject(params, SPACING)
    plain = simulate_subject(sample_subject(0, 1, site), SPACING)
    les = sim.labels == 4
    assert les.sum() >= 1 and not np.any(plain.labels == 4)
    # outside the lesions the anatomy is unchanged
    far = ~les & (plain.labels > 0)
    assert np.mean(sim.labels[far] == plain.labels[far]) > 0.9
    for contrast in ("FLAIR", "T2w"):
        img = sim.images[contrast]
        assert img[les].mean() > img[sim.labels == 3].mean()
    flair = sim.images["FLAIR"]
    assert flair[les].mean() > flair[sim.labels == 2].mean()
    # make_cohort writes the lesion label
    make_cohort(tmp_path / "c", n_subjects=1, spacing=SPACING, lesions=True, progress=False)
    labels = _data(tmp_path / "c" / "sub-01" / "anat" / "sub-01_dseg.nii.gz")
    assert np.any(labels == 4)


# --------------------------------------------------------------------------- API errors
@pytest.mark.parametrize("kwargs, match", [
    ({"n_subjects": 0}, "subjects=0"),
    ({"spacing": 0.2}, "spacing=0.2"),
    ({"spacing": 9}, "spacing=9"),
    ({"n_sites": 5}, "sites=5"),
    ({"seed": -1}, "seed=-1"),
])
def test_invalid_arguments(tmp_path, kwargs, match) -> None:
    with pytest.raises(RtfsynError, match=match):
        make_cohort(tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x").exists()


def test_non_empty_folder_needs_force(tmp_path) -> None:
    out = tmp_path / "c"
    make_cohort(out, n_subjects=3, spacing=8.0, progress=False)
    with pytest.raises(RtfsynError, match="not empty"):
        make_cohort(out, n_subjects=2, spacing=8.0, progress=False)
    calls = []
    make_cohort(out, n_subjects=2, spacing=8.0, progress=lambda d, t: calls.append((d, t)),
                force=True)
    assert calls == [(1, 2), (2, 2)]
    # the earlier cohort's extra subject is gone; the dataset is consistent
    assert sorted(p.name for p in out.glob("sub-*")) == ["sub-01", "sub-02"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    make_cohort(other, n_subjects=1, spacing=8.0, progress=False, force=True)
    assert (other / "notes.txt").read_text() == "keep me"


def test_noise_free_twin_matches_written_subject_up_to_noise(tmp_path) -> None:
    from rtfsyn.phantom import get_sites, make_cohort, sample_subject, simulate_noise_free

    make_cohort(tmp_path / "c", n_subjects=1, n_sites=1, spacing=6.0, seed=3, progress=False)
    written = np.asarray(nib.load(str(next((tmp_path / "c").rglob("*_T2w.nii.gz")))).dataobj)
    params = sample_subject(3, 0, get_sites(1)[0], n_subjects=1)
    clean = simulate_noise_free(params, 6.0).images["T2w"]
    inside = written > 0
    diff = (written - clean)[inside]
    sigma = params.site.noise * 1000.0 * params.site.scale
    assert np.abs(diff).max() > 0  # the written image has noise ...
    assert 0.3 * sigma < diff.std() < 3 * sigma  # ... of the site's level, and nothing else
