from __future__ import annotations

import json

from rich.console import Console

from _tiny import write_tiny_bids
from conftest import make_nifti
from rtfsyn.data import load_cases
from rtfsyn.data.inspect import check_case, inspect_dataset
from test_cli import run_cli


def test_implausible_sidecar_is_flagged_not_refused(tmp_path) -> None:
    root = write_tiny_bids(tmp_path / "bids", n_subjects=2)
    sidecar = root / "sub-01" / "anat" / "sub-01_T2w.json"
    data = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**data, "EchoTime": 0.00009}))  # 0.09 ms: a unit slip
    cases = {c.subject: c for c in load_cases(root)}  # loading does not refuse it
    assert "implausible T2w TE=0.09 ms" in check_case(cases["sub-01"]).flags
    assert check_case(cases["sub-02"]).ok


def test_inspect_lists_known_assumed_missing_fields(capsys, tmp_path, monkeypatch) -> None:
    from rtfsyn import cli

    root = write_tiny_bids(tmp_path / "bids", n_subjects=1)
    console = Console(width=100, record=True)
    inspect_dataset(root, console=console, fields=True)
    text = console.export_text()
    assert "TR known for 3 of 3 images" in text
    # sidecars give TR/TE (and TI for T1w/FLAIR) but no sequence: that one is assumed
    assert "TR TE TI FA field vendor" in text and "seq" in text
    plain = tmp_path / "plain" / "case1"
    make_nifti(plain / "case1_T1w.nii.gz")
    make_nifti(plain / "case1_T2w.nii.gz")
    monkeypatch.setattr(cli, "console", Console(width=100))
    code, out, _ = run_cli(capsys, "inspect", str(tmp_path / "plain"), "--layout", "folder",
                           "--fields")
    assert code == 0
    assert "TR known for 0 of 2 images, assumed" in out
    assert "TR TE FA field seq" in out  # the T2w's assumed fields
