from __future__ import annotations

import numpy as np
import pytest

from rtfsyn.data import load_cases
from rtfsyn.data.pack import bids_label, pack_cases
from rtfsyn.errors import DatasetError
from rtfsyn.training.dataset import load_subject


def test_pack_round_trip(tiny_bids, tmp_path) -> None:
    cases = load_cases(tiny_bids)
    out = tmp_path / "packed"
    written = pack_cases(cases, out, spacing=2.0, tag="tiny", progress=False)
    assert len(written) == len(cases)
    packed = {c.subject: c for c in load_cases(out)}
    assert len(packed) == len(cases)
    for case in cases:
        p = packed[f"sub-{bids_label('tiny' + case.participant_id)}"]
        assert p.contrasts == case.contrasts
        assert p.site == case.site
        for c in case.contrasts:  # the protocol survives exactly
            a, b = case.metadata[c], p.metadata[c]
            assert (a.repetition_time, a.echo_time, a.field_strength) == (
                b.repetition_time, b.echo_time, b.field_strength)
        orig, again = load_subject(case, 2.0), load_subject(p, 2.0)
        for c in case.contrasts:  # 8-bit quantisation only (training re-normalises)
            assert again.volumes[c].shape == orig.volumes[c].shape
            assert np.abs(again.volumes[c] - orig.volumes[c]).max() < 0.02


def test_pack_refuses_to_mix_into_existing_subjects(tiny_bids, tmp_path) -> None:
    cases = load_cases(tiny_bids)
    pack_cases(cases, tmp_path / "p", spacing=2.0, progress=False)
    with pytest.raises(DatasetError, match="exists"):
        pack_cases(cases, tmp_path / "p", spacing=2.0, progress=False)


def test_bad_label_and_spacing_are_named(tmp_path) -> None:
    with pytest.raises(DatasetError, match="'__'"):
        bids_label("__")
    with pytest.raises(DatasetError, match="spacing=0"):
        pack_cases([], tmp_path, spacing=0)
