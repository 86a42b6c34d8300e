"""Real-anatomy simulation with continuous protocols, protocol ranges and phantom jitter."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from rtfsyn.cli import main
from rtfsyn.data.cases import load_cases
from rtfsyn.metadata import Metadata
from rtfsyn.phantom import get_sites, sample_subject
from rtfsyn.phantom.ranges import RANGES, jitter_protocol, sample_protocol
from rtfsyn.phantom.realsim import (
    GD_R1,
    SIM_TISSUES,
    draw_session,
    flair_hyperintensities,
    real_anatomy,
    real_fractions,
    simulate_dataset,
    subject_tissues,
)


def _tiny_labels(shape=(24, 24, 20)) -> np.ndarray:
    """0 background, 1 CSF, 2 GM, 3 WM, 4 lesion (a blob in WM)."""
    lab = np.zeros(shape, np.uint8)
    lab[2:-2, 2:-2, 2:-2] = 1
    lab[4:-4, 4:-4, 3:-3] = 2
    lab[7:-7, 7:-7, 5:-5] = 3
    lab[10:14, 10:14, 8:12] = 4
    return lab


def _tiny_contrasts(lab: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    table = {"t1n": [0, 200, 550, 850, 450], "t2w": [0, 900, 450, 250, 800],
             "t2f": [0, 60, 520, 420, 950], "t1c": [0, 220, 560, 860, 900]}
    return {k: (np.array(v, np.float32)[lab] + rng.normal(0, 15, lab.shape)
                ).clip(0).astype(np.float32) * (lab > 0) for k, v in table.items()}


@pytest.fixture
def tiny_brats(tmp_path):
    """A BraTS-layout folder with one tiny case and its seg (2 = oedema, 3 = enhancing)."""
    lab = _tiny_labels()
    folder = tmp_path / "real" / "BraTS-GLI-99999-000"
    folder.mkdir(parents=True)
    for key, vol in _tiny_contrasts(lab).items():
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(folder / f"{folder.name}-{key}.nii.gz"))
    seg = np.zeros(lab.shape, np.uint8)
    seg[lab == 4] = 2
    seg[11:13, 11:13, 9:11] = 3
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(folder / f"{folder.name}-seg.nii.gz"))
    return tmp_path / "real"


def test_real_fractions_find_tissues_and_flair_lesions():
    lab = _tiny_labels()
    vols = _tiny_contrasts(lab)
    mask = lab > 0
    norm = {c: v / np.percentile(v[mask], 99.5) for c, v in
            (("T1w", vols["t1n"]), ("T2w", vols["t2w"]), ("FLAIR", vols["t2f"]))}
    frac = real_fractions(norm, mask)
    total = sum(frac[t] for t in SIM_TISSUES)
    assert np.allclose(total[mask], 1.0, atol=1e-4) and np.all(total[~mask] == 0)
    stack = np.stack([frac[t] for t in SIM_TISSUES]).argmax(0) + 1
    for k, name in ((1, "CSF"), (2, "GM"), (3, "WM")):
        assert (stack[lab == k] == k).mean() > 0.9, name
    assert frac["lesion"][lab == 4].mean() > 0.8  # FLAIR hyperintensity without labels
    with_gd = real_fractions({**norm, "T1Gd": vols["t1c"] / np.percentile(vols["t1c"][mask],
                                                                          99.5)}, mask)
    assert with_gd["enhancing"][lab == 4].mean() > 0.8  # T1Gd − T1w shows enhancement
    assert with_gd["enhancing"][lab == 3].mean() < 0.01
    given = real_fractions(norm, mask, {"enhancing": lab == 4})
    assert given["enhancing"][lab == 4].min() == 1.0 and given["lesion"].max() == 0.0


def test_flair_lesions_are_found_by_their_ratio_to_white_matter_on_the_raw_flair():
    """A small lesion (2.3 x WM) that the 99.5 % clip flattens to the cortex's level is found
    through the raw FLAIR; specks and the bright rim of a mask are not lesions, and a healthy
    brain has none."""
    from rtfsyn.preprocess import robust_normalize

    lab = _tiny_labels()
    lab[lab == 4] = 3
    lab[11:13, 11:13, 9:11] = 4  # 8 voxels: fewer than the top 0.5 % of the brain
    vols = _tiny_contrasts(lab)
    mask = lab > 0
    raw = vols["t2f"].copy()
    raw[12, 3, 10] = 3000.0  # a one-voxel speck inside the brain
    raw[2, 12, 10] = 3000.0  # on the mask's rim
    norm = {c: robust_normalize(v, mask)[0] for c, v in
            (("T1w", vols["t1n"]), ("T2w", vols["t2w"]), ("FLAIR", raw))}
    frac = real_fractions(norm, mask, flair=raw)
    assert frac["lesion"][lab == 4].mean() > 0.8
    assert frac["lesion"][12, 3, 10] == 0 and frac["lesion"][2, 12, 10] == 0
    assert frac["lesion"][lab == 3].mean() < 0.01
    assert real_fractions(norm, mask)["lesion"][lab == 4].mean() < 0.2  # clipped: lost
    healthy = lab.copy()
    healthy[lab == 4] = 3
    hv = _tiny_contrasts(healthy)
    post = np.stack([healthy == 1, healthy == 2, healthy == 3]).astype(np.float32)
    assert not flair_hyperintensities(hv["t2f"], mask, post).any()


def test_real_glioma_simulation_has_its_oedema_and_a_template_has_none(real_data):
    """Without label maps, the FLAIR of a real glioma shows its oedema (it found none before
    the ratio rule) and the MNI152 template stays lesion-free."""
    glioma = real_anatomy(load_cases(real_data / "BraTS-GLI-00001-000")[0], spacing=4.0)
    assert glioma.fractions["lesion"][glioma.mask].mean() > 0.02
    template = real_anatomy(load_cases(real_data / "MNI152-template")[0], spacing=4.0)
    assert sum(template.fractions[t][template.mask].mean()
               for t in ("lesion", "necrosis", "enhancing")) < 1e-3


def test_sampled_protocols_are_continuous_and_inside_their_ranges():
    rng = np.random.default_rng(0)
    tes = {sample_protocol("T2w", rng).te for _ in range(20)}
    assert len(tes) == 20  # continuous: no site codes
    lo, hi = RANGES["T2w"][0][2]["te"]
    assert all(lo <= te <= hi for te in tes)
    flair = [sample_protocol("FLAIR", rng, 3.0) for _ in range(20)]
    assert all(1.4 < p.ti < 3.2 and p.family == "IR" for p in flair)
    t1 = {sample_protocol("T1w", rng).family for _ in range(40)}
    assert t1 == {"MPRAGE", "GRE", "SE"}
    for p in (sample_protocol("T1w", rng, family="MPRAGE") for _ in range(10)):
        assert p.signal(subject_tissues(3.0, rng)["WM"]) > 0  # MPRAGE timing always fits


def test_sampled_protocols_show_how_te_and_ti_move_csf():
    """The drawn FLAIRs include CSF well above and at its null point, and the drawn T2w TEs
    span the TE sweep of real_scans.py (60-120 ms); with TI held within 8 % of the null point
    the simulated FLAIRs kept CSF near its null (CSF / WM < 0.47), so TI could not be learnt."""
    from rtfsyn.phantom.physics import inversion_recovery, tissue_params

    rng = np.random.default_rng(1)
    tp = tissue_params(3.0)

    def csf_wm(p):
        sig = {t: abs(float(inversion_recovery(tp[t].pd, tp[t].t1, tp[t].t2, p.tr, p.te, p.ti)))
               for t in ("CSF", "WM")}
        return sig["CSF"] / sig["WM"]

    ratios = np.array([csf_wm(sample_protocol("FLAIR", rng, 3.0)) for _ in range(200)])
    assert (ratios > 0.5).mean() > 0.1 and (ratios < 0.1).mean() > 0.1
    tes = np.array([sample_protocol("T2w", rng).te for _ in range(200)])
    assert tes.min() < 0.065 and tes.max() > 0.12


def test_lesion_severity_covers_the_contrast_of_real_lesions_and_no_more():
    from rtfsyn.phantom.physics import inversion_recovery, spin_echo

    def flair(t):  # 3 T, TR 7.5 s, TE 107 ms, TI 2.25 s (a BraTS-anatomy simulation's)
        return abs(float(inversion_recovery(t.pd, t.t1, t.t2, 7.5, 0.107, 2.25)))

    def t2w(t):  # TR 5 s, TE 100 ms
        return float(spin_echo(t.pd, t.t1, t.t2, 5.0, 0.100))

    ratios = {"FLAIR": [], "T2w": []}
    for seed in range(200):
        tissues = subject_tissues(3.0, np.random.default_rng(seed))
        ratios["FLAIR"].append(flair(tissues["lesion"]) / flair(tissues["WM"]))
        ratios["T2w"].append(t2w(tissues["lesion"]) / t2w(tissues["WM"]))
        assert tissues["necrosis"].t2 > tissues["lesion"].t2 > tissues["WM"].t2
        assert tissues["lesion"].t1 > tissues["WM"].t1
        assert tissues["lesion"].t2s <= tissues["lesion"].t2
    # the real tumour cases' lesion class (results/sim_lesions_v3.md): FLAIR 1.6-2.1x WM,
    # T2w 1.7-2.0x; LESION_SPREAD of stage 9 reached 3.5x here
    assert min(ratios["FLAIR"]) < 1.6 and max(ratios["FLAIR"]) > 2.0
    assert min(ratios["T2w"]) < 1.7 and 2.0 < max(ratios["T2w"]) < 3.0


def test_lesion_at_severity_runs_from_white_matter_to_the_nominal_lesion():
    from rtfsyn.phantom.physics import tissue_params
    from rtfsyn.phantom.realsim import lesion_at_severity

    wm, lesion = tissue_params(3.0)["WM"], tissue_params(3.0)["lesion"]
    assert lesion_at_severity(wm, lesion, 0.0, 0.0) == pytest.approx(wm)
    assert lesion_at_severity(wm, lesion, 1.0, 1.0) == pytest.approx(lesion)
    mild_t1 = lesion_at_severity(wm, lesion, 0.0, 0.5)
    assert mild_t1.t1 == pytest.approx(wm.t1)
    assert mild_t1.t2 == pytest.approx((wm.t2 * lesion.t2) ** 0.5)
    assert mild_t1.pd == pytest.approx((wm.pd + lesion.pd) / 2)
    with pytest.raises(ValueError, match="s_t2 = 1.5"):
        lesion_at_severity(wm, lesion, 0.5, 1.5)


def test_session_and_tissues_vary_per_draw_and_gd_shortens_enhancing_t1():
    a, b = draw_session(np.random.default_rng(1)), draw_session(np.random.default_rng(2))
    assert a.protocols["T2w"].te != b.protocols["T2w"].te
    tissues = subject_tissues(3.0, np.random.default_rng(0))
    assert tissues["necrosis"].t2 > tissues["lesion"].t2 > tissues["WM"].t2
    assert 1.0 / (1.0 / tissues["enhancing"].t1 + GD_R1) < tissues["WM"].t1


def test_simulate_cli_writes_bids_that_training_reads(tiny_brats, tmp_path, capsys):
    out = tmp_path / "sim"
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--from", str(tiny_brats), "--out", str(out), "--pairs", "3",
              "--seed", "5"])
    assert exc.value.code == 0
    cases = load_cases(out)
    assert [c.subject for c in cases] == ["sub-0001", "sub-0002", "sub-0003"]
    tes = set()
    for case in cases:
        assert set(case.contrasts) == {"T1w", "T1Gd", "T2w", "FLAIR", "PDw"}
        assert case.mask is not None and case.labels is not None
        side = json.loads(case.images["T2w"].with_name(
            case.images["T2w"].name.replace(".nii.gz", ".json")).read_text())
        meta = case.metadata["T2w"]
        assert meta.echo_time == side["EchoTime"] and meta.field_strength in (1.5, 3.0)
        assert side["SimulatedFrom"] == "BraTS-GLI-99999-000"
        tes.add(meta.echo_time)
        assert case.metadata["FLAIR"].inversion_time is not None
    assert len(tes) == 3  # every subject has its own protocol
    img = np.asarray(nib.load(str(cases[0].images["FLAIR"])).dataobj)
    labels = np.asarray(nib.load(str(cases[0].labels)).dataobj)
    oedema = labels == SIM_TISSUES.index("lesion") + 1
    wm = labels == SIM_TISSUES.index("WM") + 1
    assert oedema.any() and img[oedema].mean() > img[wm].mean()  # oedema bright on FLAIR
    # deterministic: the same seed gives the same images; an existing output needs --force
    again = tmp_path / "sim2"
    simulate_dataset(again, [tiny_brats], n_subjects=1, seed=5)
    first = np.asarray(nib.load(str(again / "sub-0001/anat/sub-0001_T2w.nii.gz")).dataobj)
    assert np.array_equal(first, np.asarray(nib.load(str(cases[0].images["T2w"])).dataobj))
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--from", str(tiny_brats), "--out", str(out), "-n", "1"])
    assert exc.value.code == 2
    assert "--force" in capsys.readouterr().err


def test_simulate_needs_something_to_simulate_from(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "--from" in capsys.readouterr().err


def test_phantom_protocol_jitter_draws_around_the_site_protocol():
    site = get_sites(1)[0]
    fixed = sample_subject(3, 0, site)
    assert fixed.site.protocols == site.protocols  # default: today's nominal protocol
    jit = sample_subject(3, 0, site, protocol_jitter=0.1)
    other = sample_subject(3, 1, site, protocol_jitter=0.1)
    for c, p in site.protocols.items():
        q = jit.site.protocols[c]
        assert q.family == p.family and 0.9 <= q.tr / p.tr <= 1.1 and 0.9 <= q.te / p.te <= 1.1
        assert q.te != p.te and q.te != other.site.protocols[c].te
    # nothing else about the subject changes
    assert (jit.age, jit.sex, jit.noise_seed, jit.tissue_factors) == \
        (fixed.age, fixed.sex, fixed.noise_seed, fixed.tissue_factors)
    assert jitter_protocol(site.protocols["T2w"], np.random.default_rng(0), 0.0) is \
        site.protocols["T2w"]
    meta = Metadata.from_sidecar(
        __import__("rtfsyn.phantom.cohort", fromlist=["sidecar"]).sidecar(
            jit.site, jit.site.protocols["FLAIR"], 2.0), contrast="FLAIR")
    assert meta.inversion_time == jit.site.protocols["FLAIR"].ti


def test_a_binary_label_map_is_a_lesion_mask(tmp_path):
    """open-ms GOLD_STANDARD read as the case's labels: lesions, not BraTS necrosis."""
    from rtfsyn.data.cases import Case
    from rtfsyn.phantom.realsim import real_anatomy

    lab = _tiny_labels()
    vols = _tiny_contrasts(lab)
    paths = {}
    for key, contrast in (("t1n", "T1w"), ("t2w", "T2w"), ("t2f", "FLAIR")):
        paths[contrast] = tmp_path / f"{key}.nii.gz"
        nib.save(nib.Nifti1Image(vols[key], np.eye(4)), str(paths[contrast]))
    gold = tmp_path / "GOLD_STANDARD.nii.gz"
    nib.save(nib.Nifti1Image((lab == 4).astype(np.uint8), np.eye(4)), str(gold))
    case = Case("p1", paths, {c: Metadata.from_dict({"contrast": c}) for c in paths},
                labels=gold)
    anat = real_anatomy(case)
    assert anat.fractions["lesion"][lab == 4].min() == 1.0
    assert anat.fractions["necrosis"].max() == 0.0
