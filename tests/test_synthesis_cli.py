from __future__ import annotations

import gzip
import hashlib
import json
import os

import nibabel as nib
import numpy as np
import pytest

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


# --------------------------------------------------------------------------- issue 13
@pytest.fixture
def fast(monkeypatch):
    """Skip the network's forward pass (the CLI plumbing is what these tests check)."""
    import rtfsyn.inference as inference

    def identity(lm, src, *a, out=None, **k):
        if out is None:
            return src.copy()
        out[...] = src  # predict_volume writes into ``out`` when given
        return out

    monkeypatch.setattr(inference, "predict_volume", identity)


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the model is loaded: validation must happen before it."""
    import rtfsyn.inference as inference

    def boom(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were validated")

    monkeypatch.setattr(inference, "load_model", boom)


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _leftovers(folder) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name]


def test_metadata_file_named_like_output_is_never_replaced(capsys, tmp_path, tiny_checkpoint,
                                                           fast) -> None:
    src = _head(tmp_path / "in_T1w.nii.gz")
    protocol = tmp_path / "sub-01_T2w.json"
    protocol.write_text(json.dumps({"RepetitionTime": 4.0, "EchoTime": 0.09}))
    before = _md5(protocol)
    out = tmp_path / "sub-01_T2w.nii.gz"
    code, _, err = run_cli(capsys, "synthesize", "-i", str(src), "-m", str(protocol), "-o",
                           str(out), "--model", str(tiny_checkpoint), "-d", "cpu")
    assert code == 0, err
    assert _md5(protocol) == before  # the user's protocol file is untouched
    prov = json.loads((tmp_path / "sub-01_T2w.rtfsyn.json").read_text())
    assert prov["output"] == str(out)


def test_output_beside_input_never_writes_its_sidecar(capsys, tmp_path, tiny_checkpoint,
                                                      fast) -> None:
    src = _head(tmp_path / "small_T1w.nii.gz")
    sidecar = tmp_path / "small_T1w.json"
    sidecar.write_text(json.dumps({"RepetitionTime": 2.3, "EchoTime": 0.003}))
    before = _md5(sidecar)
    code, _, err = run_cli(capsys, "synthesize", "-i", str(src), "-t", "T2w", "-o",
                           str(tmp_path / "small_T1w.nii"), "--model", str(tiny_checkpoint),
                           "-d", "cpu")
    assert code == 0, err
    assert _md5(sidecar) == before
    assert (tmp_path / "small_T1w.rtfsyn.json").exists()


def test_output_guard_refusals(tmp_path, monkeypatch) -> None:
    from rtfsyn import io
    from rtfsyn.errors import OutputPathError

    src = _head(tmp_path / "a_T1w.nii.gz")
    guard = io.OutputGuard()
    guard.protect_input(src)
    with pytest.raises(OutputPathError, match="refusing to overwrite input file"):
        guard.check(src)
    # the sidecar name of an input is refused even when it does not exist yet
    with pytest.raises(OutputPathError, match="metadata sidecar of input a_T1w.nii.gz"):
        guard.check(tmp_path / "a_T1w.json")
    with pytest.raises(OutputPathError, match=r"must end in \.nii or \.nii\.gz \(got \.png\)"):
        guard.check(tmp_path / "y.png", nifti=True)
    (tmp_path / "x.nii.gz").write_text("old")
    with pytest.raises(OutputPathError, match="exists: pass --overwrite"):
        guard.check(tmp_path / "x.nii.gz")
    guard.plan(tmp_path / "o.nii.gz", what="the output of a")
    with pytest.raises(OutputPathError, match="two outputs would be written"):
        guard.plan(tmp_path / "o.nii.gz", what="the output of b")
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        guard.check(tmp_path / "file" / "o.nii.gz")
    monkeypatch.setattr(io, "_writable", lambda folder: False)  # root ignores chmod in CI
    with pytest.raises(OutputPathError, match="is not writable"):
        guard.check(tmp_path / "new" / "o.nii.gz")
    # an active guard checks every atomic write, whatever wrote it
    with guard, pytest.raises(OutputPathError, match="metadata sidecar"):
        io.atomic_write(tmp_path / "a_T1w.json", lambda tmp: None)


def test_bad_outputs_fail_before_the_model_loads(capsys, tmp_path, tiny_checkpoint,
                                                 no_model, monkeypatch) -> None:
    src = _head(tmp_path / "a_T1w.nii.gz")
    args = ("synthesize", "-i", str(src), "-t", "T2w", "--model", str(tiny_checkpoint))
    code, _, err = run_cli(capsys, *args, "-o", str(tmp_path / "y.png"))
    assert code == 2 and "must end in .nii or .nii.gz" in err and len(err.splitlines()) == 1
    (tmp_path / "ro").write_text("")  # a file where the folder should be
    code, _, err = run_cli(capsys, *args, "-o", str(tmp_path / "ro" / "o.nii.gz"))
    assert code == 2 and "not a folder" in err and len(err.splitlines()) == 1
    from rtfsyn import io

    with monkeypatch.context() as m:
        m.setattr(io, "_writable", lambda folder: False)  # a read-only folder
        code, _, err = run_cli(capsys, *args, "-o", str(tmp_path / "out" / "o.nii.gz"))
    assert code == 2 and "is not writable" in err and "Traceback" not in err
    # batch: two inputs that map to one output are refused before any work
    folder = tmp_path / "batch"
    _head(folder / "b_T1w.nii.gz")
    _head(folder / "b_T1w.nii")
    code, _, err = run_cli(capsys, "synthesize", "-i", str(folder), "-t", "T2w", "-o",
                           str(tmp_path / "bout"), "--model", str(tiny_checkpoint))
    assert code == 2 and "two outputs would be written" in err
    # batch: an existing output is refused up front (or skipped with --skip-existing)
    (tmp_path / "bout2").mkdir()
    (folder / "b_T1w.nii").unlink()
    (tmp_path / "bout2" / "b_T1w_synth-T2w.nii.gz").write_text("old")
    code, _, err = run_cli(capsys, "synthesize", "-i", str(folder), "-t", "T2w", "-o",
                           str(tmp_path / "bout2"), "--model", str(tiny_checkpoint))
    assert code == 2 and "exists" in err and "--skip-existing" in err


def test_write_error_mid_run_is_one_line_and_leaves_no_temp(capsys, tmp_path, tiny_checkpoint,
                                                            fast, monkeypatch) -> None:
    import errno
    import shutil

    import rtfsyn.inference as inference

    src = _head(tmp_path / "a_T1w.nii.gz")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real_load = inference.load_model

    def load_then_break_folder(*args, **kwargs):
        lm = real_load(*args, **kwargs)
        shutil.rmtree(out_dir)  # the folder disappears after validation ...
        out_dir.write_text("")  # ... and a file takes its name: writing there must fail
        return lm

    monkeypatch.setattr(inference, "load_model", load_then_break_folder)
    code, _, err = run_cli(capsys, "synthesize", "-i", str(src), "-t", "T2w", "-o",
                           str(out_dir / "o.nii.gz"), "--model", str(tiny_checkpoint), "-d", "cpu")
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code != 0 and len(lines) == 1 and "cannot write" in lines[0]
    assert "Traceback" not in err and _leftovers(tmp_path) == []
    monkeypatch.setattr(inference, "load_model", real_load)

    def disk_full(img, filename):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(nib, "save", disk_full)
    out = tmp_path / "o2" / "o.nii.gz"
    code, _, err = run_cli(capsys, "synthesize", "-i", str(src), "-t", "T2w", "-o", str(out),
                           "--model", str(tiny_checkpoint), "-d", "cpu")
    assert code != 0 and "No space left on device" in err and "Traceback" not in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_ctrl_c_is_one_line_exit_130_and_removes_temp_files(capsys, tmp_path, tiny_checkpoint,
                                                             fast, monkeypatch) -> None:
    src = _head(tmp_path / "a_T1w.nii.gz")

    def interrupted(img, filename):
        with open(filename, "wb") as fh:
            fh.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", interrupted)
    out = tmp_path / "out" / "o.nii.gz"
    code, _, err = run_cli(capsys, "synthesize", "-i", str(src), "-t", "T2w", "-o", str(out),
                           "--model", str(tiny_checkpoint), "-d", "cpu")
    assert code == 130
    assert "interrupted" in err and "Aborted" not in err and "Traceback" not in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_skip_existing_single_file_says_it_skipped(capsys, tmp_path, tiny_checkpoint,
                                                   no_model) -> None:
    src = _head(tmp_path / "a_T1w.nii.gz")
    out = tmp_path / "o.nii.gz"
    out.write_text("old")
    code, _stdout, err = run_cli(capsys, "synthesize", "-i", str(src), "-t", "T2w", "-o",
                                 str(out), "--skip-existing", "--model", str(tiny_checkpoint))
    assert code == 0 and "skipped" in err and str(out) in err
    assert out.read_text() == "old"


def test_source_contrast_is_reported_or_refused(capsys, tmp_path, tiny_checkpoint,
                                                fast) -> None:
    scan = _head(tmp_path / "scan.nii.gz")
    args = ("--model", str(tiny_checkpoint), "-d", "cpu")
    code, _, err = run_cli(capsys, "synthesize", "-i", str(scan), "-t", "T2w", *args)
    assert code == 2 and "cannot tell the source contrast of scan.nii.gz" in err
    assert "-s" in err and not list(tmp_path.glob("*synth*"))
    # -s is used as the contrast of a --source-meta string that has none
    code, _, err = run_cli(capsys, "synthesize", "-i", str(scan), "-t", "T2w", "--source-meta",
                           "TR=2300,TE=3", "-s", "T1w", *args)
    assert code == 0, err
    assert "source contrast T1w (from -s/--source-contrast)" in err
    prov = json.loads((tmp_path / "scan_synth-T2w.rtfsyn.json").read_text())
    assert prov["source_metadata"]["contrast"] == "T1w"
    assert prov["source_metadata"]["repetition_time"] == 2.3
    # the file name is reported as the source of the guess
    named = _head(tmp_path / "sub-02_FLAIR.nii.gz")
    code, _, err = run_cli(capsys, "synthesize", "-i", str(named), "-t", "T2w", *args)
    assert code == 0, err
    assert "source contrast FLAIR (from file name sub-02_FLAIR.nii.gz)" in err


def test_unstripped_head_warns_with_the_fix(capsys, tmp_path, tiny_checkpoint, fast) -> None:
    rng = np.random.default_rng(0)
    img = nib.load(str(_head(tmp_path / "h.nii.gz")))
    data = np.asarray(img.dataobj)
    data = np.where(data > 0, data, 5 + 5 * rng.random(data.shape)).astype(np.float32)
    src = tmp_path / "head_T1w.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), str(src))
    code, _, err = run_cli(capsys, "synthesize", "-i", str(src), "-t", "T2w", "--model",
                           str(tiny_checkpoint), "-d", "cpu")
    assert code == 0, err
    assert "warning:" in err and "not skull-stripped" in err
    assert "--mask" in err and "HD-BET" in err


def test_intensity_like_and_descrip(capsys, tmp_path, tiny_checkpoint, fast) -> None:
    src = _head(tmp_path / "a_T1w.nii.gz")
    ref = _head(tmp_path / "ref_T2w.nii.gz", seed=3)
    args = ("synthesize", "-i", str(src), "-t", "T2w", "--model", str(tiny_checkpoint),
            "-d", "cpu")
    code, _, err = run_cli(capsys, *args, "-o", str(tmp_path / "n.nii.gz"))
    assert code == 0, err
    norm = nib.load(str(tmp_path / "n.nii.gz"))
    assert float(np.max(norm.dataobj)) <= 1.0
    assert b"0-1" in norm.header["descrip"].tobytes()
    code, _, err = run_cli(capsys, *args, "-o", str(tmp_path / "s.nii.gz"), "--intensity-like",
                           str(ref))
    assert code == 0, err
    scaled = nib.load(str(tmp_path / "s.nii.gz"))
    data = np.asarray(scaled.dataobj)
    ref_data = np.asarray(nib.load(str(ref)).dataobj)
    lo, hi = np.percentile(ref_data[ref_data > 0], [0.5, 99.5])
    inside = data > 0
    assert data[inside].min() >= lo - 1e-3 and data[inside].max() <= hi + 1e-3
    assert data[inside].max() > 0.9 * hi  # scanner-like range, not [0, 1]
    assert b"scaled like ref_T2w" in scaled.header["descrip"].tobytes()
    prov = json.loads((tmp_path / "s.rtfsyn.json").read_text())
    assert "ref_T2w" in prov["output_units"]


def test_boolean_flags_are_plain_in_help(capsys) -> None:
    code, stdout, _ = run_cli(capsys, "synthesize", "--help")
    assert code == 0 and "--overwrite" in stdout and "<bool>" not in stdout


def test_precision_bf16_is_close_to_fp32_and_recorded(capsys, tmp_path, tiny_checkpoint
                                                      ) -> None:
    src = _head(tmp_path / "sub-01_T1w.nii.gz")
    outs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.nii.gz"
        code, _, err = run_cli(capsys, "synthesize", "-i", str(src), "-t", "T2w", "-o",
                               str(out), "--model", str(tiny_checkpoint), "-d", "cpu",
                               "--precision", precision)
        assert code == 0, err
        prov = json.loads((tmp_path / f"{precision}.rtfsyn.json").read_text())
        assert prov["precision"] == precision
        outs[precision] = np.asarray(nib.load(str(out)).dataobj, dtype=np.float32)
    diff = np.abs(outs["bf16"] - outs["fp32"])
    assert 0 < diff.max() < 0.1  # bf16 really ran, and stays close
    code, _, err = run_cli(capsys, "synthesize", "-i", str(src), "-t", "T2w", "-o",
                           str(tmp_path / "x.nii.gz"), "--model", str(tiny_checkpoint),
                           "-d", "cpu", "--precision", "fp16")
    assert code == 2 and "--precision 'fp16' is unknown" in err and len(err.splitlines()) == 1
