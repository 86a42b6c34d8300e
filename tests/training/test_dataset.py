from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from rtfsyn.data import load_cases
from rtfsyn.errors import DatasetError
from rtfsyn.training.config import load_train_config
from rtfsyn.training.dataset import (
    GridSpec,
    PatchDataset,
    StepBatchSampler,
    _crop,
    collate,
    load_subject,
    load_subject_levels,
    load_subject_pyramid,
    load_subjects,
    sample_grid,
    split_cases,
)


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


def test_case_weights_set_how_often_a_subject_is_drawn(tiny_bids) -> None:
    subjects = load_subjects(load_cases(tiny_bids), spacing=2.0, progress=False)
    plain = PatchDataset(subjects, patch_size=8, samples_per_epoch=300, seed=1)
    ds = PatchDataset(subjects, patch_size=8, samples_per_epoch=300, seed=1,
                      weights=[1.0, 1.0, 8.0])
    drawn = np.bincount([ds.sample_spec(i).subject for i in range(300)], minlength=3)
    assert 0.7 < drawn[2] / 300 < 0.9  # expected 0.8
    even = np.bincount([plain.sample_spec(i).subject for i in range(300)], minlength=3)
    assert even.min() > 70  # unweighted: about 100 each
    assert [ds.sample_spec(i) for i in range(20)] == [ds.sample_spec(i) for i in range(20)]
    with pytest.raises(ValueError, match="one per subject"):
        PatchDataset(subjects, patch_size=8, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="finite and > 0"):
        PatchDataset(subjects, patch_size=8, weights=[1.0, 0.0, 1.0])


def test_case_sampling_weights_first_matching_pattern_counts() -> None:
    from rtfsyn.errors import RtfsynError
    from rtfsyn.training.config import case_sampling_weights

    ids = ["sub-real01", "sub-real02", "sub-phantom01"]
    assert case_sampling_weights(ids, None) is None
    assert case_sampling_weights(ids, {"*real01": 2.0, "*real*": 4.0}) == [2.0, 4.0, 1.0]
    with pytest.raises(RtfsynError, match=r"\['\*rael\*'\] match no training participant"):
        case_sampling_weights(ids, {"*rael*": 4.0})
    with pytest.raises(RtfsynError, match="use a finite weight > 0"):
        load_train_config({"case_weights": {"*real*": 0}})


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


# --------------------------------------------------------------------- output grids, loader
def _levels_dataset(tiny_bids, **kw) -> PatchDataset:
    pyramid = load_subject_pyramid(load_cases(tiny_bids), 2.0, (1, 2), progress=False)
    return PatchDataset([lv[1] for lv in pyramid], patch_size=12, samples_per_epoch=16,
                        seed=3, levels={2: [lv[2] for lv in pyramid]}, **kw)


def test_subject_levels_only_where_the_data_are_fine_enough(tiny_bids) -> None:
    case = load_cases(tiny_bids)[0]
    levels = load_subject_levels(case, 2.0, (1, 2, 4))
    assert levels[1].spacing == (2.0, 2.0, 2.0) and levels[2].spacing == (1.0, 1.0, 1.0)
    assert levels[2].native_spacing == 1.0
    assert levels[4] is None  # 0.5 mm targets from 1 mm data would only be interpolations
    # level 1 is exactly what load_subject gives (the original training data)
    plain = load_subject(case, 2.0)
    for c in plain.volumes:
        np.testing.assert_array_equal(plain.volumes[c], levels[1].volumes[c])


def test_sample_grid_modes_and_determinism() -> None:
    grids = [sample_grid(0, s, 0, 32, 0.3, 2.0, (1, 2)) for s in range(300)]
    assert grids == [sample_grid(0, s, 0, 32, 0.3, 2.0, (1, 2)) for s in range(300)]
    assert grids != [sample_grid(0, s, 1, 32, 0.3, 2.0, (1, 2)) for s in range(300)]
    assert {g.mode for g in grids} == {"own", "train", "fine"}
    for g in grids:
        if g.mode == "own":
            assert g.level == 1 and g.out_shape == g.source_shape
        elif g.mode == "train":
            assert g.level == 1 and g.out_shape == (32, 32, 32)
        else:  # inference for an input at spacing / k: block average by k, output k× finer
            assert g.level == 2 and g.region == (32, 32, 32)
            for n, m in zip(g.source_shape, g.out_shape, strict=True):
                assert (n == 16 and m == 32) or m == n  # fine axis, or a thick axis kept
    assert all(g.level == 1 for g in (sample_grid(0, s, 0, 32, 0.3, 2.0) for s in range(50)))


def test_fine_grid_item_is_what_inference_feeds_the_model(tiny_bids) -> None:
    ds = _levels_dataset(tiny_bids)
    assert ds.grid_levels == [1, 2]
    grid = GridSpec(2, (12, 12, 12), (6, 6, 6), (12, 12, 12), "fine")
    spec = ds.sample_spec(5, 0, grid)
    item = ds[(0, 5, grid)]
    assert item["source"].shape == (1, 6, 6, 6) and item["target"].shape == (1, 12, 12, 12)
    assert item["source_meta"].voxel_size == (2.0, 2.0, 2.0)
    assert item["target_meta"].voxel_size == (1.0, 1.0, 1.0)
    fine = ds.levels[2][spec.subject]
    region = torch.from_numpy(_crop(fine.volumes[spec.source], spec.corner, 12))
    # predict_volume block-averages the 1 mm input by k = 2: the same source
    torch.testing.assert_close(item["source"], F.avg_pool3d(region[None, None], 2)[0])
    np.testing.assert_array_equal(item["target"][0].numpy(),
                                  _crop(fine.volumes[spec.target], spec.corner, 12))
    own = GridSpec(1, (12, 12, 12), (8, 12, 12), (8, 12, 12), "own")
    item = ds[(0, 5, own)]
    assert item["source_meta"].voxel_size == item["target_meta"].voxel_size == (3.0, 2.0, 2.0)
    assert item["target"].shape == (1, 8, 12, 12)


def _batches(ds, workers: int, start: int = 0, rank: int = 0) -> list[dict]:
    sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3,
                                 drop_last=True)
    bs = StepBatchSampler(sampler, 2, start, 9,
                          lambda s: sample_grid(3, s, rank, 12, 0.5, 2.0, (1, 2)))
    loader = DataLoader(ds, batch_sampler=bs, num_workers=workers, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    return list(loader)


def test_loader_is_independent_of_workers_and_resumable(tiny_bids) -> None:
    ds = _levels_dataset(tiny_bids)
    rng_before = torch.get_rng_state()
    serial = _batches(ds, 0)
    assert torch.equal(rng_before, torch.get_rng_state())  # the global RNG is untouched
    assert len(serial) == 9 and len({b["target"].shape for b in serial}) > 1
    parallel = _batches(ds, 2)
    resumed = _batches(ds, 0, start=4)
    other_rank = _batches(ds, 0, rank=1)
    for a, b in zip(serial, parallel, strict=True):
        for key in ("source", "target", "mask"):
            assert torch.equal(a[key], b[key])
        assert a["target_meta"] == b["target_meta"]
    for a, b in zip(serial[4:], resumed, strict=True):
        assert torch.equal(a["source"], b["source"])
    assert not all(torch.equal(a["source"], b["source"]) if a["source"].shape ==
                   b["source"].shape else False for a, b in zip(serial, other_rank, strict=True))


def test_plain_index_items_are_unchanged(tiny_bids) -> None:
    """Without output grids a key (epoch, i, None) is the old ``dataset[i]`` of that epoch."""
    ds = _levels_dataset(tiny_bids)
    ds.set_epoch(2)
    for i in range(6):
        a, b = ds[i], ds[(2, i, None)]
        assert torch.equal(a["source"], b["source"]) and a["target_meta"] == b["target_meta"]
        assert a["source"].shape == (1, 12, 12, 12)


def test_fine_grid_item_carries_the_prior_averaged_like_the_source(tiny_bids) -> None:
    ds = _levels_dataset(tiny_bids)
    ds.physics_prior = True
    grid = GridSpec(2, (12, 12, 12), (6, 6, 6), (12, 12, 12), "fine")
    spec = ds.sample_spec(5, 0, grid)
    item = ds[(0, 5, grid)]
    assert item["source"].shape == (2, 6, 6, 6)
    prior = ds.prior(spec.subject, spec.source, spec.target, level=2)
    assert prior.shape == ds.levels[2][spec.subject].mask.shape  # on the fine grid
    region = torch.from_numpy(_crop(prior, spec.corner, 12))
    torch.testing.assert_close(item["source"][1], F.avg_pool3d(region[None, None], 2)[0, 0])


def test_source_augment_changes_the_source_only(tiny_bids) -> None:
    subjects = load_subjects(load_cases(tiny_bids), spacing=2.0, progress=False)
    plain = PatchDataset(subjects, 8, 16, seed=5)
    aug = PatchDataset(subjects, 8, 16, seed=5, source_augment=1.0)
    changed = 0
    for i in range(8):
        a, b = plain[i], aug[i]
        assert aug.sample_spec(i).augment is not None
        # same patch, target and metadata: augmentation is drawn after the other choices
        assert torch.equal(a["target"], b["target"]) and torch.equal(a["mask"], b["mask"])
        assert a["target_meta"] == b["target_meta"]
        changed += int(not torch.allclose(a["source"], b["source"]))
    assert changed >= 6


def test_fill_targets_gives_bare_targets_the_typical_protocol(tiny_bids) -> None:
    subjects = load_subjects(load_cases(tiny_bids), spacing=2.0, progress=False)
    s = subjects[0]
    bare = s.case.metadata["T2w"].model_copy(update={"repetition_time": None,
                                                     "echo_time": None})
    s.case.metadata["T2w"] = bare
    plain = PatchDataset([s], 8, 4, seed=0)
    filled = PatchDataset([s], 8, 4, seed=0, fill_targets=True)
    assert plain.target_meta(s, "T1w", "T2w").echo_time is None
    meta = filled.target_meta(s, "T1w", "T2w")
    assert meta.echo_time == pytest.approx(0.1) and meta.repetition_time is not None
    # fields a case has are never replaced
    given = plain.target_meta(s, "T1w", "FLAIR").model_dump(exclude_none=True)
    assert filled.target_meta(s, "T1w", "FLAIR").model_dump(include=set(given)) == given


def test_source_meta_drop_cuts_the_source_metadata_only(tiny_bids) -> None:
    subjects = load_subjects(load_cases(tiny_bids), spacing=2.0, progress=False)
    plain = PatchDataset(subjects, 8, 16, seed=5)
    off = PatchDataset(subjects, 8, 16, seed=5, source_meta_drop=0.0)
    bare = PatchDataset(subjects, 8, 16, seed=5, source_meta_drop=1.0)
    half = PatchDataset(subjects, 8, 64, seed=5, source_meta_drop=0.5)
    for i in range(8):
        a, c = plain[i], bare[i]
        assert plain.sample_spec(i) == off.sample_spec(i)  # disabled: the same samples
        assert a["source_meta"].repetition_time is not None  # the tiny data have sidecars
        # drawn last: same patch, target and target metadata
        assert torch.equal(a["source"], c["source"]) and torch.equal(a["target"], c["target"])
        assert c["target_meta"] == a["target_meta"]
        assert c["source_meta"].model_dump(exclude_none=True) == {
            "contrast": a["source_meta"].contrast, "voxel_size": a["source_meta"].voxel_size}
    drawn = sum(half.sample_spec(i).bare_source for i in range(64))
    assert 16 <= drawn <= 48
    with pytest.raises(ValueError, match="source_meta_drop"):
        PatchDataset(subjects, 8, 16, source_meta_drop=1.5)
