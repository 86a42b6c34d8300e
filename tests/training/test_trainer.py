from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import rtfsyn
import rtfsyn.io
import rtfsyn.training.trainer as trainer_mod
from _tiny import TINY_MODEL
from rtfsyn.checkpoint import load_checkpoint, load_training_state, read_checkpoint_info
from rtfsyn.errors import RtfsynError
from rtfsyn.training.config import load_train_config
from rtfsyn.training.trainer import NonFiniteLossError, train

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


def test_time_budget_writes_final_ema_weights(tiny_bids, tmp_path) -> None:
    # --max-minutes is a planned end: the final (EMA) weights are written, as at max_steps;
    # before, a run stopped by time left only last.safetensors (raw weights, EMA unused)
    cfg = tiny_config(max_steps=50, max_minutes=1e-6, ema_decay=0.9, val_every=100)
    res = train([tiny_bids], cfg, tmp_path / "run", progress=False, device="cpu")
    assert res.stopped_early and res.step == 1 and res.final_checkpoint is not None
    final, info = load_checkpoint(res.final_checkpoint)
    raw, _ = load_checkpoint(res.last_checkpoint)
    ema = load_training_state(res.last_checkpoint.with_name("last.state.pt"))["ema"]
    assert info.step == 1
    for k in final:
        torch.testing.assert_close(final[k], ema[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(final[k], raw[k]) for k in final)


def test_resume_reaches_same_weights(tiny_bids, tmp_path) -> None:
    cfg = tiny_config(max_steps=6, ckpt_every=3, val_every=100)
    full = train([tiny_bids], cfg, tmp_path / "full", progress=False, device="cpu")
    part = train([tiny_bids], cfg, tmp_path / "part", progress=False, device="cpu",
                 stop_after_steps=3)
    assert part.stopped_early and part.step == 3
    assert part.final_checkpoint is None  # an interruption leaves only the resume point
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


def test_case_weights_reach_the_sampler(tiny_bids, tmp_path) -> None:
    with pytest.raises(RtfsynError, match=r"\['nobody\*'\] match no training participant"):
        train([tiny_bids], tiny_config(case_weights={"nobody*": 2.0}), tmp_path / "w",
              progress=False, device="cpu")


def test_sorted_weight_reaches_the_loss(tiny_bids, tmp_path, monkeypatch) -> None:
    seen = []
    orig = trainer_mod.synthesis_loss

    def recording(*args, **kwargs):
        loss, parts = orig(*args, **kwargs)
        seen.append(parts)
        return loss, parts

    monkeypatch.setattr(trainer_mod, "synthesis_loss", recording)
    train([tiny_bids], tiny_config(sorted_weight=0.5, max_steps=2, val_every=100),
          tmp_path / "run", progress=False, device="cpu")
    assert len(seen) == 2 and all(p["sorted"] > 0 for p in seen)
    with pytest.raises(ValueError, match="sorted_weight"):
        tiny_config(sorted_weight=-1.0)


def _ddp_command(data: Path, tmp_path: Path, script: list[str], port: int, out: str
                 ) -> list[str]:
    cfg = tmp_path / "cfg.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(tiny_config(max_steps=4, val_every=100).model_dump(
        mode="json")))
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(port), *script, "train", "--data", str(data),
            "--config", str(cfg), "--out", str(tmp_path / out), "--device", "cpu",
            "--no-progress"]


#: run by torchrun: rank 1 gets a NaN loss at its 2nd step, then the normal CLI runs
NAN_ON_RANK_1 = """
import os
import rtfsyn.training.trainer as T
orig, calls = T.synthesis_loss, [0]
def nan_on_rank_1(*args, **kwargs):
    loss, parts = orig(*args, **kwargs)
    calls[0] += 1
    if os.environ["RANK"] == "1" and calls[0] == 2:
        loss, parts = loss * float("nan"), {**parts, "loss": float("nan")}
    return loss, parts
T.synthesis_loss = nan_on_rank_1
from rtfsyn.cli import main
main()
"""


def test_ddp_two_cpu_processes_end_identical(tiny_bids, tmp_path) -> None:
    # this checkout's package (not whichever rtfsyn the interpreter has installed)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    cmd = _ddp_command(tiny_bids, tmp_path, ["-m", "rtfsyn"], 29533, "ddp")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = json.loads((tmp_path / "ddp" / "ddp_ranks.json").read_text())["digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert "world size 2" in proc.stderr
    # a NaN on one rank stops every rank at the same step, each with the one-line error
    script = tmp_path / "nan_rank1.py"
    script.write_text(NAN_ON_RANK_1)
    cmd = _ddp_command(tiny_bids, tmp_path, [str(script)], 29534, "ddp-nan")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240,
                          check=False)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "loss became" in ln]
    assert len(lines) == 2, proc.stderr[-3000:]  # one per rank, no hang
    for line in lines:
        assert "error: loss became" in line and "at step 2 on rank 1: lower --lr" in line
    assert "exitcode  : 2" in proc.stderr  # rtfsyn's clean user-error exit, not a crash
    assert "rtfsyn/training" not in proc.stderr  # no traceback from the ranks themselves

#: per-step losses of the trainer before the DataLoader / out_grids rewrite (main @ 845de79,
#: tiny_config(max_steps=20, val_every=100, ckpt_every=100)); out_grids off must reproduce them
LOSSES_BEFORE = [
    1.82118821144104, 1.7197421789169312, 1.6893436908721924, 1.499727487564087,
    1.0613315105438232, 0.7824208736419678, 0.6212416887283325, 0.8117138743400574,
    0.7080802917480469, 0.9154441356658936, 0.88397216796875, 0.6941860318183899,
    0.7173963189125061, 0.7844111323356628, 0.5423493385314941, 0.5233798027038574,
    0.5054269433021545, 0.6222046613693237, 0.5263040065765381, 0.554877758026123,
]


def _record_losses(monkeypatch) -> list[float]:
    losses: list[float] = []
    orig = trainer_mod.synthesis_loss

    def recording(*args, **kwargs):
        loss, parts = orig(*args, **kwargs)
        losses.append(parts["loss"])
        return loss, parts

    monkeypatch.setattr(trainer_mod, "synthesis_loss", recording)
    return losses


def test_first_steps_match_the_trainer_before_the_rewrite(tiny_bids, tmp_path,
                                                           monkeypatch) -> None:
    losses = _record_losses(monkeypatch)
    # the whole run after setup must not read a file: volumes are cached in memory
    real_load = rtfsyn.io.load_nifti
    reading = {"allowed": True}

    def guarded(*args, **kwargs):
        assert reading["allowed"], f"file I/O during training steps: {args[0]}"
        return real_load(*args, **kwargs)

    real_make_loader = trainer_mod.make_loader

    def make_loader(run):
        reading["allowed"] = False
        return real_make_loader(run)

    monkeypatch.setattr(rtfsyn.io, "load_nifti", guarded)
    monkeypatch.setattr(trainer_mod, "make_loader", make_loader)
    cfg = tiny_config(max_steps=20, val_every=100, ckpt_every=100, num_workers=0,
                      fill_target_metadata=False)  # the tiny sidecars lack some fields
    assert not cfg.out_grids
    train([tiny_bids], cfg, tmp_path / "run", progress=False, device="cpu")
    assert not reading["allowed"]
    np.testing.assert_allclose(losses, LOSSES_BEFORE, rtol=1e-4, atol=1e-6)


def test_out_grids_put_inference_conditioning_in_the_training_range(tiny_bids, tmp_path
                                                                    ) -> None:
    """A 1 mm input to a 2 mm model: target 1 mm, work grid 2 mm, output grid factor 2."""
    from rtfsyn.inference import conditioning_outside, load_model, synthesize_image

    def inference_conditioning(ckpt):
        lm = load_model(ckpt, "cpu")
        seen = []
        forward = lm.model.forward

        def spy(image, source_meta, target_meta, out_shape=None):
            seen.append((source_meta[0].voxel_size, target_meta[0].voxel_size,
                         [o / i for i, o in zip(image.shape[2:], out_shape, strict=True)]))
            return forward(image, source_meta, target_meta, out_shape=out_shape)

        lm.model.forward = spy
        src = tiny_bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
        res = synthesize_image(src, "T2w", "TR=4000,TE=90", model=lm)
        assert seen and res.provenance["work_factors"] == [2, 2, 2]
        return lm, seen, res

    runs = {}
    for on in (True, False):
        cfg = tiny_config(max_steps=8, val_every=100, out_grids=on, max_out_factor=2)
        runs[on] = train([tiny_bids], cfg, tmp_path / f"run{on}", progress=False,
                         device="cpu")
    info = read_checkpoint_info(runs[True].final_checkpoint).info
    trained = info["conditioning_range"]
    assert trained["target_voxel_mm"][0] == 1.0 and trained["out_factor"][1] >= 2.0
    lm, seen, res = inference_conditioning(runs[True].final_checkpoint)
    for src_vox, tgt_vox, factor in seen:
        for key, values in (("source_voxel_mm", src_vox), ("target_voxel_mm", tgt_vox),
                            ("out_factor", factor)):
            lo, hi = trained[key]
            assert all(lo - 1e-6 <= v <= hi + 1e-6 for v in values), (key, values, lo, hi)
    assert res.provenance["conditioning_outside_training"] == []
    assert conditioning_outside(lm, *seen[0]) == []
    # without output grids (the old trainer) the 1 mm target was never seen in training
    old = read_checkpoint_info(runs[False].final_checkpoint).info["conditioning_range"]
    assert old["target_voxel_mm"] == [2.0, 2.0]
    lm, seen, res = inference_conditioning(runs[False].final_checkpoint)
    assert any("target_voxel_mm" in m for m in res.provenance["conditioning_outside_training"])
    assert any("not trained on this geometry: target_voxel_mm [1.0, 1.0, 1.0] outside the "
               "training range [2, 2]" in w for w in res.provenance["warnings"])


def test_nan_loss_stops_before_the_optimizer_step(tiny_bids, tmp_path, monkeypatch) -> None:
    orig = trainer_mod.synthesis_loss
    calls = {"loss": 0, "step": 0}

    def nan_at_step_2(*args, **kwargs):
        loss, parts = orig(*args, **kwargs)
        calls["loss"] += 1
        if calls["loss"] == 2:
            loss, parts = loss * float("nan"), {**parts, "loss": float("nan")}
        return loss, parts

    real_step = torch.optim.AdamW.step

    def counting_step(self, *args, **kwargs):
        calls["step"] += 1
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(trainer_mod, "synthesis_loss", nan_at_step_2)
    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    with pytest.raises(NonFiniteLossError, match=r"^loss became nan at step 2: lower --lr"):
        train([tiny_bids], tiny_config(val_every=100), tmp_path / "run", progress=False,
              device="cpu")
    assert calls == {"loss": 2, "step": 1}


def test_cuda_rng_states_are_saved_and_restored(tiny_bids, tmp_path, monkeypatch) -> None:
    """Without a GPU: fake the CUDA RNG API and check the state round trip."""
    fake = [torch.arange(4, dtype=torch.uint8), torch.arange(4, 8, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: fake)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    cfg = tiny_config(max_steps=2, val_every=100, ckpt_every=1)
    train([tiny_bids], cfg, tmp_path / "run", progress=False, device="cpu",
          stop_after_steps=1)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.state.pt", weights_only=False)
    assert [t.tolist() for t in state["cuda_rng"]] == [t.tolist() for t in fake]
    train([tiny_bids], cfg, tmp_path / "run", progress=False, device="cpu", resume=True)
    assert len(restored) == 1 and [t.tolist() for t in restored[0]] == [[0, 1, 2, 3],
                                                                        [4, 5, 6, 7]]


def test_test_participants_are_stored_and_never_loaded(tmp_path, monkeypatch) -> None:
    from _tiny import write_tiny_bids
    from rtfsyn.training import trainer as trainer_mod

    data = write_tiny_bids(tmp_path / "five", n_subjects=5)
    loaded: list[str] = []
    for name in ("load_subjects", "load_subject_pyramid"):  # validation, training volumes
        real = getattr(trainer_mod, name)

        def spy(cases, *a, _real=real, **k):
            loaded.extend(c.subject for c in cases)
            return _real(cases, *a, **k)

        monkeypatch.setattr(trainer_mod, name, spy)
    res = train([data], tiny_config(max_steps=2, val_every=2, ckpt_every=2,
                                    test_fraction=0.34, val_cases=5),
                tmp_path / "run", progress=False, device="cpu")
    info = read_checkpoint_info(res.final_checkpoint).info
    test = info["test_participants"]
    assert len(test) == 1 and len(info["test_cases"]) == 1
    assert test[0] not in loaded and set(loaded) == set(info["train_participants"]) | set(
        info["val_participants"])
