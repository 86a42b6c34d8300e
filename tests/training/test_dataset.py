from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data.distributed import DistributedSampler

from rtfsyn.data import load_cases
from rtfsyn.errors import DatasetError
from rtfsyn.training.config import load_train_config
from rtfsyn.training.dataset import PatchDataset, collate, load_subjects, split_cases


def test_subjects_are_normalised_and_cropped(tiny_bids) -> None:
    subjects = load_subjects(load_cases(tiny_bids), spacing=2.0, progress=False)
    assert len(subjects) == 3
    s = subjects[0]
    assert s.spacing == (2.0, 2.0, 2.0)
    assert s.contrasts == ["T1w", "T2w", "FLAIR"]
    for v in s.volumes.values():
        assert v.shape == s.mask.shape
        assert v.min() >= 0.0 and v.max() <= 1.0
        assert np.all(v[~s.mask] == 0)
    assert s.metadata("T2w").voxel_size == (2.0, 2.0, 2.0)
    assert s.metadata("T2w").echo_time == pytest.approx(0.09)


def test_patch_samples_are_deterministic_and_in_brain(tiny_bids) -> None:
    subjects = load_subjects(load_cases(tiny_bids), spacing=None, progress=False)
    ds = PatchDataset(subjects, patch_size=12, samples_per_epoch=50, seed=3)
    a = [ds.sample_spec(i, epoch=2) for i in range(50)]
    b = [ds.sample_spec(i, epoch=2) for i in range(50)]
    assert a == b
    assert a != [ds.sample_spec(i, epoch=3) for i in range(50)]
    assert all(spec.source != spec.target for spec in a)
    assert len({(s.source, s.target) for s in a}) == 6  # many-to-many
    for spec in a[:10]:
        item = ds.extract(spec)
        centre = item["mask"][0, 6, 6, 6]
        assert centre == 1.0  # patch centred on a brain voxel
        assert item["source"].shape == (1, 12, 12, 12)
    batch = collate([ds[i] for i in range(4)])
    assert batch["source"].shape == (4, 1, 12, 12, 12)
    assert len(batch["target_meta"]) == 4


def test_pairs_restriction(tiny_bids) -> None:
    subjects = load_subjects(load_cases(tiny_bids), spacing=2.0, progress=False)
    ds = PatchDataset(subjects, patch_size=8, samples_per_epoch=20, pairs=[("T1w", "T2w")])
    assert {(ds.sample_spec(i).source, ds.sample_spec(i).target) for i in range(20)} == {
        ("T1w", "T2w")}
    with pytest.raises(DatasetError, match="no subject has any of the requested pairs"):
        PatchDataset(subjects, patch_size=8, pairs=[("T1w", "PDw")])


def test_distributed_sampler_partitions_indices(tiny_bids) -> None:
    subjects = load_subjects(load_cases(tiny_bids), spacing=2.0, progress=False)
    ds = PatchDataset(subjects, patch_size=8, samples_per_epoch=40)
    parts = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0,
                                     drop_last=True)
        sampler.set_epoch(1)
        parts.append(set(sampler))
    assert not parts[0] & parts[1]
    assert len(parts[0] | parts[1]) == 40


def test_split_cases(tiny_bids) -> None:
    cases = load_cases(tiny_bids)
    train, val, site = split_cases(cases, val_fraction=0.3, seed=0)
    assert len(val) == 1 and len(train) == 2 and site == []
    train, val, site = split_cases(cases, val_fraction=0.0, holdout_site="A")
    assert {c.site for c in site} == {"A"} and all(c.site != "A" for c in train)
    with pytest.raises(DatasetError, match="matches no case; sites are: A, B"):
        split_cases(cases, holdout_site="Z")


def test_split_is_stratified_by_site() -> None:
    from rtfsyn.data.cases import Case

    cases = [Case(f"s{i}", {}, {}, site=site) for i, site in
             enumerate(["A"] * 6 + ["B"] * 6 + ["C"] * 3 + [None] * 2)]
    train, val, _ = split_cases(cases, val_fraction=0.25, seed=3)
    per_site = {s: sum(c.site == s for c in val) for s in ("A", "B", "C", None)}
    assert per_site == {"A": 2, "B": 2, "C": 1, None: 0}
    assert len(train) + len(val) == len(cases) and not set(map(id, train)) & set(map(id, val))
    assert [c.subject for c in split_cases(cases, 0.25, seed=3)[1]] == [c.subject for c in val]


def test_train_config_validation(tmp_path) -> None:
    cfg = load_train_config("train-cpu", max_steps=5)
    assert cfg.max_steps == 5 and cfg.patch_size == 32
    bad = tmp_path / "c.yaml"
    bad.write_text("patch_size: 4\n")
    from rtfsyn.errors import RtfsynError

    with pytest.raises(RtfsynError, match="patch_size=4 is invalid"):
        load_train_config(bad)
    with pytest.raises(RtfsynError, match="neither a file nor a bundled config"):
        load_train_config("nope")
    cfg = load_train_config({"pairs": ["t1:t2", "T1w:FLAIR"]})
    assert cfg.pairs == [("T1w", "T2w"), ("T1w", "FLAIR")]
