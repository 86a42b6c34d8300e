"""Participant-level splits, exclusion keys that survive renames, and split labels in evaluate."""

from __future__ import annotations

import shutil

import pytest

from _tiny import write_tiny_bids
from rtfsyn.data.brats import brats_participant
from rtfsyn.data.cases import Case, load_cases
from rtfsyn.data.splits import (
    SplitIndex,
    case_fingerprint,
    exclusion_key,
    split_cases,
    split_participants,
)
from rtfsyn.errors import DatasetError


def _cohort() -> list[Case]:
    """BIDS-like two-session participants, BraTS time points and open-ms studies, 4 sites."""
    cases = []
    for i in range(16):
        for ses in (1, 2):
            cases.append(Case(f"sub-{i:02d}_ses-{ses}", {}, {}, site="ABCD"[i % 4],
                              participant=f"sub-{i:02d}"))
    for i in range(6):
        for tp in ("000", "001"):
            sid = f"BraTS-GLI-{i:05d}-{tp}"
            cases.append(Case(sid, {}, {}, participant=brats_participant(sid)))
    for i in range(5):
        for study in (1, 2):
            cases.append(Case(f"open-ms/patient{i:02d}_study{study}", {}, {}, site="MS",
                              participant=f"open-ms/patient{i:02d}"))
    return cases


@pytest.mark.parametrize("seed", range(8))
def test_a_participant_never_straddles_splits(seed: int) -> None:
    s = split_participants(_cohort(), val_fraction=0.25, test_fraction=0.25, seed=seed)
    side = {}
    for part in ("train", "val", "test"):
        for c in getattr(s, part):
            assert side.setdefault(c.participant_id, part) == part, c.subject
    assert s.train and s.val and s.test
    assert len(s.train) + len(s.val) + len(s.test) == len(_cohort())
    # every site with ≥ 4 participants has test participants
    assert {c.site for c in s.test} >= {"A", "B", "C", "D", "MS"}


def test_split_is_deterministic_and_holdout_site() -> None:
    a = split_participants(_cohort(), 0.2, 0.2, holdout_site="D", seed=3)
    b = split_participants(_cohort(), 0.2, 0.2, holdout_site="D", seed=3)
    assert [c.subject for c in a.test] == [c.subject for c in b.test]
    assert {c.site for c in a.holdout} == {"D"}
    assert all(c.site != "D" for c in a.train + a.val + a.test)
    # the two-way form: no test split, same validation draw as with a test split
    train, val, _ = split_cases(_cohort(), 0.2, holdout_site="D", seed=3)
    assert [c.subject for c in val] == [c.subject for c in a.val] and not set(
        map(id, train)) & set(map(id, val))
    with pytest.raises(DatasetError, match="no training cases left"):
        split_participants(_cohort()[:2], 0.9, 0.0)


def test_brats_time_points() -> None:
    assert brats_participant("BraTS-GLI-00001-001") == "BraTS-GLI-00001"
    assert brats_participant("sub/BraTS-MET-00110-000") == "sub/BraTS-MET-00110"
    assert brats_participant("BraTS-case-preprocessed") == "BraTS-case-preprocessed"


def _sessions(root):
    """tiny_bids with sub-01 (and the others) as two sessions each."""
    write_tiny_bids(root)
    for sub in sorted(root.glob("sub-*")):
        anat = sub / "anat"
        for ses in ("ses-1", "ses-2"):
            dest = sub / ses / "anat"
            dest.mkdir(parents=True)
            for f in anat.iterdir():
                name = f.name.replace(f"{sub.name}_", f"{sub.name}_{ses}_")
                shutil.copy(f, dest / name)
        shutil.rmtree(anat)
    # make ses-2 a different image (a later scan)
    import nibabel as nib
    import numpy as np

    for f in root.glob("sub-*/ses-2/anat/*_T1w.nii.gz"):
        img = nib.load(str(f))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 1.1, img.affine), str(f))
    return root


def test_bids_sessions_share_a_participant(tmp_path) -> None:
    cases = load_cases(_sessions(tmp_path / "bids"))
    assert [c.subject for c in cases][:2] == ["sub-01_ses-1", "sub-01_ses-2"]
    assert {c.participant_id for c in cases[:2]} == {"sub-01"}
    assert case_fingerprint(cases[0]) != case_fingerprint(cases[1])


def test_exclusion_key_survives_rename_and_does_not_collide(tmp_path) -> None:
    a = write_tiny_bids(tmp_path / "a")
    keys = [exclusion_key(c) for c in load_cases(a)]
    assert keys[0].startswith("sub-01@")
    renamed = shutil.copytree(a, tmp_path / "a-copy-renamed")
    assert [exclusion_key(c) for c in load_cases(renamed)] == keys
    other = write_tiny_bids(tmp_path / "other", seed=1)  # same ids, other images
    assert not set(exclusion_key(c) for c in load_cases(other)) & set(keys)
    index = SplitIndex.from_infos([{"train_cases": keys[:1], "val_cases": keys[1:2]}])
    roles = index.roles(load_cases(renamed), renamed)
    assert roles == {"sub-01": "training", "sub-02": "validation", "sub-03": None}
    assert set(index.roles(load_cases(other), other).values()) == {None}
    # legacy keys (folder name / subject) are still read
    legacy = SplitIndex.from_infos([{"train_cases": ["a/sub-03"]}])
    assert legacy.roles(load_cases(a), a)["sub-03"] == "training"


def test_one_excluded_session_excludes_the_participant(tmp_path) -> None:
    root = _sessions(tmp_path / "bids")
    cases = load_cases(root)
    index = SplitIndex.from_infos([{"train_cases": [exclusion_key(cases[0])]}])  # sub-01 ses-1
    roles = index.roles(cases, root)
    assert roles["sub-01_ses-1"] == roles["sub-01_ses-2"] == "training"
    assert roles["sub-02_ses-1"] is None


def test_inspect_shows_participants(tmp_path) -> None:
    from rich.console import Console

    from rtfsyn.data.inspect import _wide_table, check_case

    cases = load_cases(_sessions(tmp_path / "bids"))
    console = Console(width=250, record=True)
    console.print(_wide_table("bids", [check_case(c) for c in cases], ["T1w", "T2w"]))
    text = console.export_text()
    assert "participant" in text and "sub-01_ses-2" in text


def test_participant_from_info_is_honoured() -> None:
    """Readers may give the participant in ``info`` (e.g. the open MS reader)."""
    a = Case("ms-p01-study1", {}, {}, info={"participant": "ms-p01"})
    b = Case("ms-p01-study2", {}, {}, info={"participant": "ms-p01"})
    assert a.participant_id == b.participant_id == "ms-p01"
    assert Case("x", {}, {}, participant="p", info={"participant": "q"}).participant_id == "p"
