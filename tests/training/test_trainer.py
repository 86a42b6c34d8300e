from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
import torch

import rtfsyn
from _tiny import TINY_MODEL
from rtfsyn.checkpoint import load_checkpoint, read_checkpoint_info
from rtfsyn.errors import RtfsynError
from rtfsyn.training.config import load_train_config
from rtfsyn.training.trainer import train

REPO = Path(__file__).resolve().parents[2]


def tiny_config(**overrides):
    base = dict(model=TINY_MODEL, spacing=2.0, patch_size=12, batch_size=2, max_steps=6,
                warmup_steps=2, val_every=6, val_cases=1, ckpt_every=3, log_every=1,
                samples_per_epoch=8, val_fraction=0.34, downscale_prob=0.5, seed=1)
    base.update(overrides)
    return load_train_config(base)


def test_train_writes_run_and_validates(tiny_bids, tmp_path) -> None:
    out = tmp_path / "run"
    res = train([tiny_bids], tiny_config(), out, progress=False, device="cpu")
    assert res.step == 6 and not res.stopped_early
    assert (out / "config.yaml").exists()
    assert list((out / "tensorboard").iterdir())
    lines = (out / "metrics.jsonl").read_text().splitlines()
    val = json.loads(lines[-1])
    assert val["step"] == 6 and 0 < val["ssim"] <= 1 and val["psnr"] > 0
    info = read_checkpoint_info(res.final_checkpoint)
    assert info.step == 6 and info.config["model"]["arch"] == "rtfsyn"
    assert len(info.info["train_cases"]) == 2 and len(info.info["val_cases"]) == 1
    assert not set(info.info["train_cases"]) & set(info.info["val_cases"])
    # participant-level three-way split, keys = participant @ content fingerprint
    assert info.info["split_version"] == 2 and info.info["test_cases"] == []
    assert all(k.startswith("sub-0") and "@" in k for k in info.info["train_cases"])
    assert info.info["train_sites"] and set(info.info["val_participants"]).isdisjoint(
        info.info["train_participants"])
    # end to end: the trained checkpoint synthesizes a subject on its own grid and affine
    src = tiny_bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    img = rtfsyn.synthesize(src, target="T2w", metadata="TR=4000,TE=90",
                            model=res.final_checkpoint, device="cpu")
    ref = nib.load(str(src))
    assert img.shape == ref.shape and (img.affine == ref.affine).all()
    # a second run into the same folder is refused (nothing is overwritten)
    with pytest.raises(RtfsynError, match="already holds a run"):
        train([tiny_bids], tiny_config(), out, progress=False, device="cpu")


def test_resume_reaches_same_weights(tiny_bids, tmp_path) -> None:
    cfg = tiny_config(max_steps=6, ckpt_every=3, val_every=100)
    full = train([tiny_bids], cfg, tmp_path / "full", progress=False, device="cpu")
    part = train([tiny_bids], cfg, tmp_path / "part", progress=False, device="cpu",
                 stop_after_steps=3)
    assert part.stopped_early and part.step == 3
    part_weights, _ = load_checkpoint(part.last_checkpoint)
    resumed = train([tiny_bids], cfg, tmp_path / "part", resume=True, progress=False,
                    device="cpu")
    assert resumed.step == 6
    a, _ = load_checkpoint(full.last_checkpoint)
    b, _ = load_checkpoint(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    # and the resumed part really trained: weights moved away from the step-3 state
    assert any(not torch.equal(part_weights[k], b[k]) for k in b)


def test_init_from_fine_tunes_and_keeps_training_cases(tiny_bids, tmp_path) -> None:
    first = train([tiny_bids], tiny_config(max_steps=3, val_every=100), tmp_path / "a",
                  progress=False, device="cpu")
    w0, info0 = load_checkpoint(first.final_checkpoint)
    # a different split seed: the union of both runs' training cases is recorded
    res = train([tiny_bids], tiny_config(max_steps=2, val_every=100, seed=7), tmp_path / "b",
                progress=False, device="cpu", init_from=first.final_checkpoint)
    w1, info1 = load_checkpoint(res.final_checkpoint)
    assert info1.step == 2 and info1.config["init_from"]["step"] == 3
    assert set(info0.info["train_cases"]) <= set(info1.info["train_cases"])
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # it trained on
    other = tiny_config(model={**TINY_MODEL, "d_model": 8, "attn_dim": 8})
    with pytest.raises(RtfsynError, match="model config differs"):
        train([tiny_bids], other, tmp_path / "c", progress=False, device="cpu",
              init_from=first.final_checkpoint)


def test_resume_errors(tiny_bids, tmp_path) -> None:
    with pytest.raises(RtfsynError, match="--resume given but"):
        train([tiny_bids], tiny_config(), tmp_path / "none", resume=True, progress=False,
              device="cpu")


def test_ddp_two_cpu_processes_end_identical(tiny_bids, tmp_path) -> None:
    cfg = tmp_path / "cfg.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(tiny_config(max_steps=4, val_every=100).model_dump(
        mode="json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29533", "-m", "rtfsyn", "train", "--data", str(tiny_bids),
           "--config", str(cfg), "--out", str(tmp_path / "ddp"), "--device", "cpu",
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = json.loads((tmp_path / "ddp" / "ddp_ranks.json").read_text())["digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert "world size 2" in proc.stderr


def test_test_participants_are_stored_and_never_loaded(tmp_path, monkeypatch) -> None:
    from _tiny import write_tiny_bids
    from rtfsyn.training import trainer as trainer_mod

    data = write_tiny_bids(tmp_path / "five", n_subjects=5)
    loaded: list[str] = []
    real = trainer_mod.load_subjects

    def spy(cases, *a, **k):
        loaded.extend(c.subject for c in cases)
        return real(cases, *a, **k)

    monkeypatch.setattr(trainer_mod, "load_subjects", spy)
    res = train([data], tiny_config(max_steps=2, val_every=2, ckpt_every=2,
                                    test_fraction=0.34, val_cases=5),
                tmp_path / "run", progress=False, device="cpu")
    info = read_checkpoint_info(res.final_checkpoint).info
    test = info["test_participants"]
    assert len(test) == 1 and len(info["test_cases"]) == 1
    assert test[0] not in loaded and set(loaded) == set(info["train_participants"]) | set(
        info["val_participants"])
