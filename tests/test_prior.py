"""The training-free physics prior (rtfsyn.prior): tissue order, physical direction, hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtfsyn.metadata import Metadata
from rtfsyn.models import ModelConfig, build_model
from rtfsyn.phantom.ranges import protocol_from_metadata
from rtfsyn.prior import (
    fit_mixture,
    parameter_maps,
    physics_prior,
    source_tissue_order,
    tissue_posteriors,
    wants_prior,
)

T1 = Metadata.from_dict({"contrast": "T1w"})


def _three_tissue(seed: int = 0, shape=(20, 20, 20)):
    """Labels 0/1/2 = CSF/GM/WM and a T1w-like volume (CSF dark, WM bright) with noise."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, int)
    lab[:, 7:14] = 1
    lab[:, 14:] = 2
    t1w = np.array([0.15, 0.55, 0.85])[lab] + rng.normal(0, 0.03, shape)
    return lab, t1w.astype(np.float32), np.ones(shape, bool)


def _class_means(img, lab):
    return [float(img[lab == k].mean()) for k in range(3)]


@pytest.mark.parametrize("contrast, order", [
    ("T1w", ("CSF", "GM", "WM")), ("T1Gd", ("CSF", "GM", "WM")),
    ("T2w", ("WM", "GM", "CSF")), ("FLAIR", ("CSF", "WM", "GM")),
])
def test_source_tissue_order_follows_the_signal_equation(contrast, order):
    assert source_tissue_order(Metadata.from_dict({"contrast": contrast})) == order


def test_protocol_from_metadata_fills_typical_values_and_infers_the_family():
    flair = protocol_from_metadata(Metadata.from_string("contrast=FLAIR,TR=9000"))
    assert flair.family == "IR" and 2.3 < flair.ti < 2.7  # CSF null at 3 T, TR 9 s
    assert protocol_from_metadata(Metadata.from_string("contrast=T1w,TR=20,FA=25")).family \
        == "GRE"
    assert protocol_from_metadata(Metadata.from_string("contrast=T1w,TR=500")).family == "SE"
    assert protocol_from_metadata(Metadata.from_string("contrast=T1w,TI=900")).family \
        == "MPRAGE"
    t2 = protocol_from_metadata(Metadata.from_string("contrast=T2w,TE=120"))
    assert (t2.family, t2.te, t2.tr) == ("TSE", 0.12, 5.0)


def test_fit_mixture_recovers_three_classes():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(m, 0.02, n) for m, n in ((0.1, 300), (0.5, 800),
                                                              (0.8, 900))])
    means, _sds, weights = fit_mixture(x)
    assert np.allclose(means, [0.1, 0.5, 0.8], atol=0.02)
    assert np.allclose(weights, [0.15, 0.4, 0.45], atol=0.03)


@pytest.mark.parametrize("method", ["pv", "gmm"])
def test_posteriors_label_the_tissues_of_a_t1w(method):
    lab, t1w, mask = _three_tissue()
    post = tissue_posteriors(t1w, mask, T1, method=method)
    assert post.shape == (3, *t1w.shape)
    assert np.allclose(post.sum(0), 1.0, atol=1e-5)
    assert (post.argmax(0) == lab).mean() > 0.95
    maps = parameter_maps(post, 3.0)
    assert maps["t1"][lab == 0].mean() > 4.0 and maps["t2"][lab == 2].mean() < 0.09


def test_t2w_csf_to_wm_rises_with_te():
    lab, t1w, mask = _three_tissue()
    ratios = []
    for te in (60, 90, 120):
        p = physics_prior(t1w, mask, T1, Metadata.from_string(f"contrast=T2w,TE={te}"))
        csf, _, wm = _class_means(p, lab)
        ratios.append(csf / wm)
    assert ratios[0] < ratios[1] < ratios[2]
    assert ratios[0] > 1.5  # CSF bright on T2w


def test_flair_nulls_csf_near_the_null_point_and_t1w_keeps_wm_over_gm():
    lab, t1w, mask = _three_tissue()
    null = protocol_from_metadata(Metadata.from_string("contrast=FLAIR,TR=9000")).ti
    at_null = physics_prior(t1w, mask, T1,
                            Metadata.from_string(f"contrast=FLAIR,TR=9000,TI={null * 1e3}"))
    csf, gm, wm = _class_means(at_null, lab)
    assert csf < 0.1 < wm < gm
    off = physics_prior(t1w, mask, T1, Metadata.from_string("contrast=FLAIR,TR=9000,TI=1500"))
    assert _class_means(off, lab)[0] > csf + 0.1
    t1 = physics_prior(t1w, mask, T1, Metadata.from_dict({"contrast": "T1w"}))
    csf, gm, wm = _class_means(t1, lab)
    assert csf < gm < wm


def test_prior_from_a_t2w_source_inverts_the_order():
    lab, t1w, mask = _three_tissue()
    t2w = (1.0 - t1w).astype(np.float32)  # WM dark, CSF bright
    p = physics_prior(t2w, mask, Metadata.from_dict({"contrast": "T2w"}),
                      Metadata.from_dict({"contrast": "T1w"}))
    csf, gm, wm = _class_means(p, lab)
    assert csf < gm < wm


@pytest.mark.parametrize("normalise", ["physical", "percentile", "matched"])
def test_prior_is_normalised_in_the_brain_and_zero_outside(normalise):
    _lab, t1w, _ = _three_tissue()
    mask = np.zeros(t1w.shape, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    t1w[~mask] = 0
    p = physics_prior(t1w, mask, T1, Metadata.from_dict({"contrast": "T2w"}),
                      normalise=normalise)
    assert p.dtype == np.float32 and p.shape == t1w.shape
    assert p.min() >= 0 and p.max() <= 1 and np.all(p[~mask] == 0)
    assert np.percentile(p[mask], 99.5) > (0.8 if normalise == "matched" else 0.95)
    if normalise == "matched":  # the darkest tissue (WM on T2w) is not pushed to 0
        assert 0.02 < np.percentile(p[mask], 5) < 0.5


def test_model_config_flag_adds_a_channel_and_stays_out_of_old_configs():
    cfg = ModelConfig()
    assert "physics_prior" not in cfg.to_dict()  # old checkpoints' configs compare equal
    on = cfg.updated(physics_prior=True, encoder_channels=[4, 8], d_model=8, attn_dim=8,
                     decoder_hidden=8)
    assert on.to_dict()["physics_prior"] is True and on.input_channels == 2
    assert wants_prior(on.to_dict()) and not wants_prior(cfg.to_dict())
    net = build_model(on).eval()
    with torch.no_grad():
        y = net(torch.rand(1, 2, 8, 8, 8), [T1], [Metadata.from_dict({"contrast": "T2w"})])
    assert y.shape == (1, 1, 8, 8, 8)
    with pytest.raises(RuntimeError):
        net(torch.rand(1, 1, 8, 8, 8), [T1], [T1])
    unet = build_model(on.with_arch("unet3d"))
    assert unet.in_channels == 2


def test_patch_dataset_adds_the_prior_channel(tiny_bids):
    from rtfsyn.data import load_cases
    from rtfsyn.training.dataset import PatchDataset, load_subjects

    subjects = load_subjects(load_cases(tiny_bids), spacing=2.0, progress=False)
    ds = PatchDataset(subjects, patch_size=8, samples_per_epoch=4, seed=0, physics_prior=True)
    spec = ds.sample_spec(0)
    item = ds.extract(spec)
    assert item["source"].shape == (2, 8, 8, 8)
    prior = ds.prior(spec.subject, spec.source, spec.target)
    assert prior.shape == subjects[spec.subject].mask.shape and prior.max() > 0.9
    assert ds.prior(spec.subject, spec.source, spec.target) is prior  # cached


def test_train_and_synthesize_with_the_prior_channel(tiny_bids, tmp_path):
    import nibabel as nib

    import rtfsyn
    from _tiny import TINY_MODEL
    from rtfsyn.checkpoint import read_checkpoint_info
    from rtfsyn.training.config import load_train_config
    from rtfsyn.training.trainer import train

    cfg = load_train_config(dict(
        model={**TINY_MODEL, "physics_prior": True}, spacing=2.0, patch_size=12, batch_size=2,
        max_steps=2, warmup_steps=1, val_every=2, val_cases=1, ckpt_every=2, log_every=1,
        samples_per_epoch=4, val_fraction=0.34, downscale_prob=0.5, seed=1))
    res = train([tiny_bids], cfg, tmp_path / "run", progress=False, device="cpu")
    assert read_checkpoint_info(res.final_checkpoint).config["model"]["physics_prior"] is True
    assert res.val_metrics  # validation ran through predict_volume with the prior
    src = tiny_bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    img = rtfsyn.synthesize(src, target="FLAIR", metadata="TR=9000,TI=2500",
                            model=res.final_checkpoint, device="cpu")
    assert img.shape == nib.load(str(src)).shape


def test_model_channel_keeps_the_physical_ratios():
    from rtfsyn.prior import prior_for_volume

    lab, t1w, mask = _three_tissue()
    ratios = []
    for te in (60, 120):
        p = prior_for_volume(t1w, T1, Metadata.from_string(f"contrast=T2w,TE={te}"), mask=mask)
        csf, _, wm = _class_means(p, lab)
        ratios.append(csf / wm)
    assert ratios[1] > 1.5 * ratios[0]  # CSF/WM on T2w: exp(TE/T2_WM − TE/T2_CSF) grows


def test_histogram_em_matches_voxel_em() -> None:
    from rtfsyn.prior import fit_mixture

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.2, 0.05, 20000), rng.normal(0.55, 0.06, 50000),
                        rng.normal(0.8, 0.04, 30000)])
    m_h, s_h, w_h = fit_mixture(x)
    m_v, s_v, w_v = fit_mixture(x, bins=0, max_samples=x.size)
    assert np.allclose(m_h, m_v, atol=2e-3) and np.allclose(s_h, s_v, atol=2e-3)
    assert np.allclose(w_h, w_v, atol=5e-3)
    assert np.allclose(m_h, [0.2, 0.55, 0.8], atol=0.01)
