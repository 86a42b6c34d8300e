"""Signal equations, tissue tables and scanner effects of the phantom (no images)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from rtfsyn.errors import RtfsynError
from rtfsyn.phantom.physics import (
    TISSUE_PARAMS,
    TISSUES,
    inversion_recovery,
    mprage,
    null_inversion_time,
    sequence_signal,
    spin_echo,
    spoiled_gre,
    tissue_params,
)
from rtfsyn.phantom.scanner import (
    DEFAULT_SITES,
    add_rician_noise,
    bias_field,
    get_sites,
    thick_slice_acquisition,
)

FIELDS = (1.5, 3.0)


def _signals(family: str, field: float, **kw) -> dict[str, float]:
    tissues = tissue_params(field)
    return {name: sequence_signal(family, tissues[name], **kw) for name in TISSUES}


@pytest.mark.parametrize("field", FIELDS)
def test_longer_te_makes_csf_brighter_relative_to_wm(field) -> None:
    t = tissue_params(field)
    ratios = [
        spin_echo(t["CSF"].pd, t["CSF"].t1, t["CSF"].t2, 5.0, te)
        / spin_echo(t["WM"].pd, t["WM"].t1, t["WM"].t2, 5.0, te)
        for te in (0.01, 0.05, 0.09, 0.12)
    ]
    assert all(b > a for a, b in itertools.pairwise(ratios))
    # and a T2w protocol: CSF > GM > WM
    s = _signals("TSE", field, tr=5.0, te=0.1)
    assert s["CSF"] > s["GM"] > s["WM"]


@pytest.mark.parametrize("field", FIELDS)
def test_flair_nulls_csf(field) -> None:
    t = tissue_params(field)
    csf = t["CSF"]
    # long TR: TI = T1 ln 2 nulls CSF
    ti = csf.t1 * math.log(2.0)
    assert null_inversion_time(csf.t1) == pytest.approx(ti)
    s = _signals("IR", field, tr=30.0, te=0.12, ti=ti)
    assert s["CSF"] < 0.01 * s["GM"]
    # finite TR: the exact null is zero
    tr = 9.0
    ti = null_inversion_time(csf.t1, tr)
    assert ti < csf.t1 * math.log(2.0)
    s = _signals("IR", field, tr=tr, te=0.12, ti=ti)
    assert s["CSF"] < 1e-9
    assert s["lesion"] > s["GM"] > s["WM"] > s["CSF"]


@pytest.mark.parametrize("field", FIELDS)
def test_t1_weighting_orders_wm_gm_csf(field) -> None:
    for family, kw in (
        ("SE", {"tr": 0.5, "te": 0.012}),
        ("GRE", {"tr": 0.02, "te": 0.004, "flip_angle": 25.0}),
        ("MPRAGE", {"tr": 2.3, "te": 0.003, "ti": 0.9, "flip_angle": 9.0,
                    "echo_spacing": 0.007, "n_readout": 176}),
    ):
        s = _signals(family, field, **kw)
        assert s["WM"] > s["GM"] > s["CSF"], (family, s)
        assert s["lesion"] < s["GM"], (family, s)  # oedema is T1-hypointense


def test_longer_tr_gives_more_signal() -> None:
    t1 = np.array([0.7, 1.1, 4.0])
    t2 = np.array([0.07, 0.1, 1.5])
    trs = [0.3, 0.6, 1.5, 4.0, 10.0]
    se = np.stack([spin_echo(1.0, t1, t2, tr, 0.01) for tr in trs])
    assert np.all(np.diff(se, axis=0) > 0)
    # IR with TI before every null: more recovery before the inversion → more |Mz| at TI
    ir = np.stack([inversion_recovery(1.0, t1, t2, tr, 0.01, 0.2) for tr in trs[1:]])
    assert np.all(np.diff(ir, axis=0) > 0)
    gre = np.stack([spoiled_gre(1.0, t1, t2, tr, 0.004, 15.0) for tr in (0.005, 0.01, 0.05)])
    assert np.all(np.diff(gre, axis=0) > 0)


def test_equations_broadcast_and_stay_in_range() -> None:
    rng = np.random.default_rng(0)
    t1 = rng.uniform(0.3, 5.0, (4, 5))
    t2 = rng.uniform(0.03, 2.0, (4, 5))
    pd = rng.uniform(0.5, 1.0, (4, 5))
    for s in (spin_echo(pd, t1, t2, 3.0, 0.08), inversion_recovery(pd, t1, t2, 9.0, 0.1, 2.5),
              spoiled_gre(pd, t1, t2, 0.02, 0.004, 20.0),
              mprage(pd, t1, t2, 2.3, 0.003, 0.9, 9.0)):
        assert s.shape == (4, 5)
        assert np.all(s >= 0) and np.all(s <= 1)


def test_mprage_timing_and_unknown_family_errors() -> None:
    with pytest.raises(ValueError, match="MPRAGE timing"):
        mprage(1.0, 1.0, 0.05, 1.0, 0.003, 0.2, 9.0, echo_spacing=0.01, n_readout=176)
    with pytest.raises(ValueError, match="unknown sequence family"):
        sequence_signal("EPI", tissue_params(3.0)["GM"], tr=1.0, te=0.03)


def test_tissue_params_interpolate_between_fields() -> None:
    mid = tissue_params(2.25)["WM"]
    lo, hi = TISSUE_PARAMS[1.5]["WM"], TISSUE_PARAMS[3.0]["WM"]
    assert lo.t1 < mid.t1 < hi.t1
    assert tissue_params(7.0)["GM"] == TISSUE_PARAMS[3.0]["GM"]
    assert tissue_params(1.5)["GM"].scaled(t2=0.5).t2s <= tissue_params(1.5)["GM"].t2 * 0.5


@pytest.mark.parametrize("site", DEFAULT_SITES, ids=lambda s: s.name)
def test_default_site_protocols_give_expected_contrasts(site) -> None:
    t = site.nominal_tissues()
    s = {c: {name: p.signal(t[name]) for name in TISSUES} for c, p in site.protocols.items()}
    assert s["T1w"]["WM"] > s["T1w"]["GM"] > s["T1w"]["CSF"]
    assert s["T2w"]["CSF"] > s["T2w"]["GM"] > s["T2w"]["WM"]
    assert s["FLAIR"]["CSF"] < 0.02 * s["FLAIR"]["WM"]
    assert s["FLAIR"]["lesion"] > s["FLAIR"]["GM"] > s["FLAIR"]["WM"]
    assert s["PDw"]["GM"] > s["PDw"]["WM"] and s["PDw"]["CSF"] > s["PDw"]["WM"]
    assert s["T2w"]["lesion"] > s["T2w"]["GM"]


def test_sites_differ_and_are_selected_in_order() -> None:
    assert [s.name for s in get_sites(2)] == ["SiteA", "SiteB"]
    assert {(s.field_strength, s.manufacturer) for s in DEFAULT_SITES} == {
        (1.5, "Philips"), (3.0, "Siemens"), (3.0, "GE"), (1.5, "Siemens")}
    assert DEFAULT_SITES[3].protocols["T1w"].slice_thickness == 5.0
    for bad in (0, 5, 2.5, True):
        with pytest.raises(RtfsynError, match="sites="):
            get_sites(bad)


def test_rician_noise_statistics() -> None:
    rng = np.random.default_rng(1)
    zero = add_rician_noise(np.zeros(200_000, np.float32), 2.0, rng)
    assert zero.mean() == pytest.approx(2.0 * math.sqrt(math.pi / 2), rel=0.02)
    high = add_rician_noise(np.full(200_000, 100.0, np.float32), 2.0, rng)
    assert high.mean() == pytest.approx(100.0, rel=0.01)
    assert high.std() == pytest.approx(2.0, rel=0.05)
    assert high.dtype == np.float32


def test_bias_field_is_smooth_and_centred() -> None:
    c = np.zeros((4, 4, 4))
    assert np.allclose(bias_field((5, 6, 7), c), 1.0)
    c[1, 0, 0] = 0.2
    field = bias_field((20, 6, 7), c)
    assert field.dtype == np.float32
    assert field[0, 0, 0] == pytest.approx(math.exp(-0.2), rel=1e-5)
    assert field[-1, 0, 0] == pytest.approx(math.exp(0.2), rel=1e-5)
    assert np.all(np.diff(field[:, 3, 3]) > 0)


def test_thick_slices_blur_along_one_axis_only() -> None:
    img = np.zeros((6, 6, 40), np.float32)
    img[:, :, 20] = 1.0  # a thin sheet
    out = thick_slice_acquisition(img, 5.0, axis=2)
    assert out.shape == img.shape and out.dtype == np.float32
    assert out[:, :, 20].max() < 0.5  # spread along z
    assert out.sum() == pytest.approx(img.sum(), rel=0.25)
    const = np.full((4, 30, 5), 7.0, np.float32)
    assert np.allclose(thick_slice_acquisition(const, 3.0, axis=1, offset=0.3)[:, 4:-4], 7.0)
    # in-plane untouched: a sheet along z stays sharp in x
    img2 = np.zeros((10, 4, 30), np.float32)
    img2[5] = 1.0
    out2 = thick_slice_acquisition(img2, 4.0, axis=2)
    assert np.allclose(out2[4], 0.0) and np.allclose(out2[6], 0.0)
