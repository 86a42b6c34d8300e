from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_nifti
from rtfsyn.data import detect_layout, load_cases
from rtfsyn.data.brats import brats_contrast
from rtfsyn.data.folder import classify_file
from rtfsyn.data.inspect import check_case
from rtfsyn.data.ixi import parse_ixi_name
from rtfsyn.errors import DatasetError


def _bids(root, n=2):
    desc = {"Name": "t", "BIDSVersion": "1.9.0"}
    (root / "dataset_description.json").write_text(json.dumps(desc))
    (root / "participants.tsv").write_text(
        "participant_id\tage\tsex\tsite\n" + "".join(
            f"sub-{i:02d}\t{30 + i}\t{'MF'[i % 2]}\tSite{'AB'[i % 2]}\n" for i in range(1, n + 1))
    )
    (root / "T2w.json").write_text(json.dumps({"MagneticFieldStrength": 3, "EchoTime": 0.09}))
    for i in range(1, n + 1):
        anat = root / f"sub-{i:02d}" / "anat"
        for suffix in ("T1w", "T2w", "FLAIR"):
            make_nifti(anat / f"sub-{i:02d}_{suffix}.nii.gz", seed=i)
        make_nifti(anat / f"sub-{i:02d}_ce-gd_T1w.nii.gz", seed=i)
        make_nifti(anat / f"sub-{i:02d}_desc-brain_mask.nii.gz", seed=i)
        make_nifti(anat / f"sub-{i:02d}_dseg.nii.gz", seed=i)
        (anat / f"sub-{i:02d}_T2w.json").write_text(
            json.dumps({"RepetitionTime": 3.2, "Manufacturer": "GE MEDICAL SYSTEMS"}))
    return root


def test_bids_cases(tmp_path) -> None:
    root = _bids(tmp_path)
    assert detect_layout(root) == "bids"
    cases = load_cases(root)
    assert [c.subject for c in cases] == ["sub-01", "sub-02"]
    c = cases[0]
    assert c.contrasts == ["T1w", "T1Gd", "T2w", "FLAIR"]
    assert c.site == "SiteB"
    assert c.mask is not None and c.mask.name == "sub-01_desc-brain_mask.nii.gz"
    assert c.labels is not None and c.labels.name == "sub-01_dseg.nii.gz"
    t2 = c.metadata["T2w"]
    # inherited top-level sidecar + own sidecar + participants.tsv
    assert t2.field_strength == 3 and t2.echo_time == pytest.approx(0.09)
    assert t2.repetition_time == pytest.approx(3.2) and t2.manufacturer == "GE"
    assert t2.age == 31 and t2.sex == "F" and t2.site == "SiteB"
    assert t2.voxel_size == (1.0, 1.0, 1.0)
    assert len(c.pairs()) == 12


def test_bids_bad_sidecar_names_file(tmp_path) -> None:
    root = _bids(tmp_path, n=1)
    bad = root / "sub-01" / "anat" / "sub-01_T1w.json"
    bad.write_text(json.dumps({"EchoTime": 30}))
    with pytest.raises(DatasetError, match=r"sub-01_T1w.nii.gz: echo_time=30 s is out of range"):
        load_cases(root)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("BraTS-GLI-00001-000-t1n.nii.gz", "T1w"), ("t1c.nii.gz", "T1Gd"),
        ("BraTS-MET-00110-000-t2f.nii.gz", "FLAIR"), ("t2w.nii.gz", "T2w"),
        ("BraTS19_2013_2_1_flair.nii.gz", "FLAIR"), ("BraTS19_2013_2_1_t1ce.nii.gz", "T1Gd"),
        ("BraTS-GLI-00001-000-seg.nii.gz", "seg"), ("notes.txt", None),
    ],
)
def test_brats_names(name, expected) -> None:
    assert brats_contrast(name)[0] == expected


def test_brats_both_naming_styles(tmp_path) -> None:
    for suffix in ("t1n", "t1c", "t2w", "t2f"):
        make_nifti(tmp_path / "BraTS-GLI-00001-000" / f"BraTS-GLI-00001-000-{suffix}.nii.gz")
        make_nifti(tmp_path / "bare" / f"{suffix}.nii.gz")
    make_nifti(tmp_path / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-seg.nii.gz")
    assert detect_layout(tmp_path) == "brats"
    cases = load_cases(tmp_path)
    assert [c.subject for c in cases] == ["BraTS-GLI-00001-000", "bare"]
    for c in cases:
        assert c.contrasts == ["T1w", "T1Gd", "T2w", "FLAIR"]
        assert c.layout == "brats"
    assert cases[0].labels is not None and cases[0].info["dataset"] == "BraTS-GLI"


def test_ixi_sites(tmp_path) -> None:
    assert parse_ixi_name("IXI002-Guys-0828-T1.nii.gz") == ("IXI002", "Guys", "T1w")
    assert parse_ixi_name("IXI002-Guys-0828-MRA.nii.gz") is None
    for sub, site in (("IXI002", "Guys"), ("IXI012", "HH"), ("IXI035", "IOP")):
        for c in ("T1", "T2", "PD"):
            make_nifti(tmp_path / f"IXI-{c}" / f"{sub}-{site}-0828-{c}.nii.gz")
    assert detect_layout(tmp_path) == "ixi"
    cases = {c.subject: c for c in load_cases(tmp_path)}
    assert cases["IXI002"].site == "Guys" and cases["IXI012"].site == "HH"
    assert cases["IXI002"].contrasts == ["T1w", "T2w", "PDw"]
    hh = cases["IXI012"].metadata["T2w"]
    assert hh.field_strength == 3.0 and hh.manufacturer == "Philips"
    iop = cases["IXI035"].metadata["PDw"]
    assert iop.field_strength == 1.5 and iop.manufacturer == "GE"


@pytest.mark.parametrize(
    ("name", "kind"),
    [("MNI152_T1_1mm_brain.nii.gz", "T1w"), ("MNI152_T2_1mm_brain.nii.gz", "T2w"),
     ("MNI152_T1_1mm_brain_mask.nii.gz", "mask"), ("5_anat-T1w_acq-tfl.nii.gz", "T1w"),
     ("scan.nii.gz", None)],
)
def test_folder_classification(name, kind) -> None:
    assert classify_file(name) == kind


def test_misregistered_and_unpaired_flags(tmp_path) -> None:
    make_nifti(tmp_path / "s1" / "s1_T1w.nii.gz", shape=(10, 10, 10))
    make_nifti(tmp_path / "s1" / "s1_T2w.nii.gz", shape=(10, 10, 12))
    make_nifti(tmp_path / "s2" / "s2_T1w.nii.gz", shape=(10, 10, 10))
    make_nifti(tmp_path / "s3" / "s3_T1w.nii.gz", shape=(10, 10, 10))
    make_nifti(tmp_path / "s3" / "s3_T2w.nii.gz", shape=(10, 10, 10),
               affine=np.diag([1.0, 1.0, 1.0, 1.0]) + np.eye(4, k=3) * 0)
    cases = {c.subject: c for c in load_cases(tmp_path, layout="folder")}
    assert "different grid from T1w: T2w" in check_case(cases["s1"]).flags
    assert "unpaired (1 contrast)" in check_case(cases["s2"]).flags
    assert check_case(cases["s3"]).ok


def test_empty_and_missing_folders(tmp_path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_cases(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no cases found"):
        load_cases(tmp_path)
    with pytest.raises(DatasetError, match="layout 'xnat' is unknown"):
        load_cases(tmp_path, layout="xnat")


def test_real_data_mixed_layout(real_data) -> None:
    cases = {c.subject: c for c in load_cases(real_data)}
    brats = [c for c in cases.values() if c.subject.startswith("BraTS")]
    assert len(brats) == 4 and all(c.layout == "brats" for c in brats)
    assert cases["BraTS-GLI-00001-000"].participant_id == "BraTS-GLI-00001"
    # the same folder name in two datasets: two cases, two participants (ids namespaced)
    p19 = [c for c in cases.values() if "patient19" in c.subject]
    assert len({c.participant_id for c in p19}) == 2  # cross-sectional and longitudinal
    assert len(cases) == len(load_cases(real_data))  # no id occurs twice
    for c in brats:
        assert c.contrasts == ["T1w", "T1Gd", "T2w", "FLAIR"]
        assert check_case(c).ok
    mni = cases["MNI152-template"]
    assert mni.contrasts == ["T1w", "T2w"] and mni.mask is not None
    assert check_case(mni).ok
    side = cases["sidecar-example"]
    assert side.metadata["T1w"].manufacturer == "Siemens"
    assert "unpaired (1 contrast)" in check_case(side).flags
