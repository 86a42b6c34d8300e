from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np

from test_cli import run_cli
from test_inference import _head


def test_synthesize_single_file_with_sidecar(capsys, tmp_path, tiny_checkpoint) -> None:
    src = _head(tmp_path / "sub-01_T1w.nii.gz")
    (tmp_path / "sub-01_T1w.json").write_text(json.dumps(
        {"RepetitionTime": 2.3, "EchoTime": 0.003, "MagneticFieldStrength": 3}))
    out = tmp_path / "out" / "t2.nii.gz"
    code, _stdout, err = run_cli(capsys, "synthesize", "-i", str(src), "-t", "T2w",
                                "--meta", "TR=3000,TE=90", "-o", str(out), "--model",
                                str(tiny_checkpoint), "-d", "cpu")
    assert code == 0, err
    assert nib.load(str(out)).shape == nib.load(str(src)).shape
    prov = json.loads((tmp_path / "out" / "t2.rtfsyn.json").read_text())
    assert prov["source_metadata"]["repetition_time"] == 2.3  # sidecar found beside input
    assert prov["target_metadata"]["echo_time"] == 0.09
    assert prov["device"] == "cpu" and prov["seconds"] > 0
    # existing output is not overwritten without --overwrite
    code, _, err = run_cli(capsys, "synthesize", "-i", str(src), "-t", "T2w", "-o", str(out),
                           "--model", str(tiny_checkpoint), "-d", "cpu")
    assert code == 2 and "exists" in err


def test_synthesize_refuses_to_overwrite_input(capsys, tmp_path, tiny_checkpoint) -> None:
    src = _head(tmp_path / "a_T1w.nii.gz")
    before = src.read_bytes()
    code, _, err = run_cli(capsys, "synthesize", "-i", str(src), "-t", "T2w", "-o", str(src),
                           "--overwrite", "--model", str(tiny_checkpoint), "-d", "cpu")
    assert code == 2 and "refusing to overwrite input" in err
    assert src.read_bytes() == before


def test_batch_folder_with_corrupt_file(capsys, tmp_path, tiny_checkpoint) -> None:
    folder = tmp_path / "in"
    _head(folder / "a_T1w.nii.gz", seed=1)
    _head(folder / "c_T1w.nii.gz", seed=2)
    (folder / "b_T1w.nii.gz").write_bytes(gzip.compress(b"not a nifti at all" * 10))
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "synthesize", "-i", str(folder), "-t", "FLAIR", "-o",
                                str(out), "--model", str(tiny_checkpoint), "-d", "cpu")
    assert code == 1
    assert "b_T1w.nii.gz" in err and "1 input(s) failed" in err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [
        "a_T1w_synth-FLAIR.nii.gz", "c_T1w_synth-FLAIR.nii.gz"]
    # --skip-existing: the two good ones are skipped, the corrupt one fails again
    code, stdout, err = run_cli(capsys, "synthesize", "-i", str(folder), "-t", "FLAIR", "-o",
                                str(out), "--model", str(tiny_checkpoint), "-d", "cpu",
                                "--skip-existing")
    assert code == 1 and "2 skipped" in stdout


def test_synthesize_bad_inputs(capsys, tmp_path, tiny_checkpoint) -> None:
    four_d = tmp_path / "x_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4)), str(four_d))
    code, _, err = run_cli(capsys, "synthesize", "-i", str(four_d), "-t", "T2w", "--model",
                           str(tiny_checkpoint), "-d", "cpu")
    assert code == 2 and "expected a 3-D image" in err and len(err.strip().splitlines()) <= 2
    code, _, err = run_cli(capsys, "synthesize", "-i", str(four_d), "-t", "T7", "--model",
                           str(tiny_checkpoint))
    assert code == 2 and "unknown contrast 'T7'" in err
    code, _, err = run_cli(capsys, "synthesize", "-i", str(four_d), "-t", "T2w", "--meta",
                           "TE=90000", "--model", str(tiny_checkpoint), "-d", "cpu")
    assert code == 2 and "echo_time=90 s is out of range" in err
