from __future__ import annotations

import json

import numpy as np
import pytest

from rtfsyn.errors import MetadataError
from rtfsyn.inference import synthesize_image
from rtfsyn.metadata import CONTRASTS, Metadata
from rtfsyn.phantom.scanner import DEFAULT_SITES
from rtfsyn.protocols import (
    PLAUSIBLE,
    PROTOCOLS,
    ImplausibleMetadataError,
    check_plausible,
    field_status,
    fill_missing,
    get_protocol,
    plausibility_problems,
    typical_protocol,
)
from test_cli import run_cli
from test_inference import _head


# --------------------------------------------------------------------------- the table
def test_table_covers_every_contrast_at_both_fields() -> None:
    for contrast in CONTRASTS:
        for field in (1.5, 3.0):
            p = typical_protocol(contrast, field)
            assert p.contrast == contrast and p.field_strength == field
    assert typical_protocol("T2w").name == "3T-T2w-TSE"  # no field given: 3 T
    assert typical_protocol("T1w", 1.5, "SE").name == "1.5T-T1w-SE"
    assert typical_protocol("t2", 7.0).field_strength == 3.0  # nearest tabulated field


def test_table_values_pass_the_plausibility_check() -> None:
    for p in PROTOCOLS.values():
        m = Metadata.from_string(f"contrast={p.contrast},{p.meta_string()}")
        assert plausibility_problems(m) == [], p.name


def test_phantom_site_protocols_are_plausible() -> None:
    for site in DEFAULT_SITES:
        for p in site.protocols.values():
            m = Metadata.from_dict({"contrast": p.contrast, "repetition_time": p.tr,
                                    "echo_time": p.te, "inversion_time": p.ti,
                                    "flip_angle": p.flip_angle})
            assert plausibility_problems(m) == [], (site.name, p.contrast)


def test_real_sidecars_are_plausible(real_data) -> None:
    for path in sorted((real_data / "sidecar-example").glob("*.json")):
        assert plausibility_problems(Metadata.from_sidecar(path, contrast="T1w")) == []


def test_get_protocol_by_name() -> None:
    assert get_protocol("3t-t2w-tse").name == "3T-T2w-TSE"
    assert get_protocol("1.5T FLAIR").name == "1.5T-FLAIR"
    assert get_protocol("1.5T-T1w").name == "1.5T-T1w-MPRAGE"  # contrast default
    with pytest.raises(MetadataError, match="unknown protocol 'T2-fancy': use one of 3T-T1w"):
        get_protocol("T2-fancy")


# --------------------------------------------------------------------------- filling
def test_contrast_only_is_the_typical_protocol_spelled_out() -> None:
    for p in PROTOCOLS.values():
        if p is not typical_protocol(p.contrast, p.field_strength):
            continue
        bare = Metadata.from_dict({"contrast": p.contrast, "field": p.field_strength})
        spelled = Metadata.from_string(f"contrast={p.contrast},{p.meta_string()}")
        assert fill_missing(bare).metadata == spelled, p.name
    filled = fill_missing(Metadata.from_dict({"contrast": "T2w"}))
    assert filled.metadata.prompt().endswith("(5000, 100, None, 90)")
    assert filled.message() == (
        "TR/TE/FA/field/sequence not given: assuming a typical 3 T T2w TSE, TR 5000 ms, "
        "TE 100 ms, FA 90 deg; pass --meta or --protocol to override")
    assert filled.provenance()["fields"]["repetition_time"] == 5.0


def test_given_fields_are_kept_and_pick_the_protocol() -> None:
    m = Metadata.from_string("contrast=FLAIR,TE=120,field=1.5")
    filled = fill_missing(m)
    assert filled.protocol.name == "1.5T-FLAIR"
    assert filled.metadata.echo_time == pytest.approx(0.12)  # the user's value wins
    assert set(filled.assumed) == {"repetition_time", "inversion_time", "flip_angle",
                                   "sequence"}
    # the source's field strength (same scanner) picks the table when the target has none
    assert fill_missing(Metadata.from_dict({"contrast": "T2w"}),
                        fallback_field=1.5).protocol.name == "1.5T-T2w-TSE"
    # nothing missing: nothing assumed, no message
    full = Metadata.from_string("contrast=T2w,TR=4000,TE=90,FA=90,field=3,sequence=TSE")
    assert fill_missing(full).assumed == {} and fill_missing(full).message() is None
    # a family without a typical protocol (GRE T1w): only the field is assumed
    gre = fill_missing(Metadata.from_string("contrast=T1w,sequence=GRE,TR=8,TE=3"))
    assert set(gre.assumed) == {"field_strength"} and gre.metadata.inversion_time is None


def test_named_protocol_must_match_the_contrast() -> None:
    m = Metadata.from_dict({"contrast": "T2w"})
    assert fill_missing(m, "1.5T-T2w-TSE").metadata.repetition_time == pytest.approx(4.5)
    with pytest.raises(MetadataError, match="3T-FLAIR is a FLAIR protocol but T2w"):
        fill_missing(m, "3T-FLAIR")


def test_field_status() -> None:
    status = field_status(Metadata.from_dict({"contrast": "T2w"}))
    assert status["TR"] == status["TE"] == status["field"] == "assumed"
    assert status["TI"] == "n/a" and status["vendor"] == "missing"
    status = field_status(Metadata.from_string("contrast=FLAIR,TR=9000,TE=100,vendor=GE"))
    assert status["TR"] == "known" and status["TI"] == "assumed" and status["vendor"] == "known"


# --------------------------------------------------------------------------- plausibility
def test_unit_slip_is_refused_with_the_likely_fix() -> None:
    m = Metadata.from_string("contrast=T2w,TR=3,TE=0.09")  # seconds typed as ms
    with pytest.raises(ImplausibleMetadataError) as err:
        check_plausible(m)
    msg = str(err.value)
    assert "TE=0.09 ms is implausible for T2w" in msg
    assert "did you mean 90 ms (TE=90 or TE=0.09s)?" in msg
    assert "did you mean 3000 ms (TR=3000 or TR=3s)?" in msg
    assert "--force-metadata" in msg and "\n" not in msg
    # the same values in seconds are fine
    check_plausible(Metadata.from_string("contrast=T2w,TR=3s,TE=0.09s"))
    # radians for degrees; a TE that fits another contrast names it
    fa = plausibility_problems(Metadata.from_string("contrast=T1w,FA=0.157"))
    assert fa and "did you mean 9 deg" in fa[0]
    pd = plausibility_problems(Metadata.from_string("contrast=T2w,TE=15"))
    assert pd and "is the contrast right" in pd[0] and "PDw" in pd[0]


def test_plausible_ranges_are_ordered() -> None:
    for contrast, ranges in PLAUSIBLE.items():
        assert contrast in CONTRASTS
        for lo, hi in ranges.values():
            assert 0 < lo < hi


# --------------------------------------------------------------------------- synthesis
def test_request_without_tr_te_equals_the_assumed_values_spelled_out(
        tmp_path, tiny_checkpoint) -> None:
    src = _head(tmp_path / "a_T1w.nii.gz")
    kw = {"model": tiny_checkpoint, "device": "cpu"}
    bare = synthesize_image(src, "T2w", None, **kw)
    spelled = synthesize_image(src, "T2w", "TR=5000,TE=100,FA=90,field=3,sequence=TSE", **kw)
    null = synthesize_image(src, "T2w", None, protocol="none", **kw)
    a, b = (np.asarray(r.image.dataobj) for r in (bare, spelled))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, np.asarray(null.image.dataobj))  # the null path differs
    prov = bare.provenance
    assert prov["assumed_metadata"]["protocol"] == "3T-T2w-TSE"
    assert prov["assumed_metadata"]["fields"]["echo_time"] == pytest.approx(0.1)
    assert prov["assumption"].startswith("TR/TE/FA/field/sequence not given")
    assert spelled.provenance["assumed_metadata"]["fields"] == {}
    assert null.provenance["assumed_metadata"]["fields"] == {}
    assert prov["target_metadata"]["repetition_time"] == pytest.approx(5.0)
    assert prov["target_fields"]["TE"] == "assumed" and prov["target_fields"]["TI"] == "n/a"
    assert spelled.provenance["target_fields"]["TE"] == "known"
    json.dumps(prov)


def test_api_protocol_and_force_metadata(tmp_path, tiny_checkpoint) -> None:
    import rtfsyn

    src = _head(tmp_path / "a_T1w.nii.gz")
    kw = {"model": tiny_checkpoint, "device": "cpu"}
    res = synthesize_image(src, "T2w", protocol="1.5T-T2w-TSE", **kw)
    assert res.provenance["target_metadata"]["repetition_time"] == pytest.approx(4.5)
    assert res.provenance["target_metadata"]["field_strength"] == 1.5
    with pytest.raises(ImplausibleMetadataError, match="did you mean 90 ms"):
        rtfsyn.synthesize(src, "T2w", "TR=3,TE=0.09", **kw)
    img = rtfsyn.synthesize(src, "T2w", "TR=3,TE=0.09", force_metadata=True, **kw)
    assert img.shape == (30, 34, 26)


def test_cli_unit_slip_force_and_protocol(capsys, tmp_path, tiny_checkpoint) -> None:
    src = _head(tmp_path / "a_T1w.nii.gz")
    out = tmp_path / "t2.nii.gz"
    base = ("synthesize", "-i", str(src), "-t", "T2w", "--model", str(tiny_checkpoint),
            "-d", "cpu")
    code, _, err = run_cli(capsys, *base, "--meta", "TR=3,TE=0.09", "-o", str(out))
    assert code == 2 and "did you mean 90 ms (TE=90 or TE=0.09s)?" in err
    assert len(err.strip().splitlines()) == 1 and "model" not in err  # before the model
    assert not out.exists()
    code, _, err = run_cli(capsys, *base, "--meta", "TR=3,TE=0.09", "-o", str(out),
                           "--force-metadata")
    assert code == 0, err and out.exists()
    code, _, err = run_cli(capsys, *base, "--protocol", "3T-FLAIR", "-o", str(out),
                           "--overwrite")
    assert code == 2 and "3T-FLAIR is a FLAIR protocol but T2w was requested" in err
    out2 = tmp_path / "flair.nii.gz"
    code, _, err = run_cli(capsys, "synthesize", "-i", str(src), "--protocol", "1.5T-FLAIR",
                           "--model", str(tiny_checkpoint), "-d", "cpu", "-o", str(out2))
    assert code == 0, err
    assert "assuming a typical 1.5 T FLAIR, TR 9000 ms, TE 110 ms, TI 2400 ms" in err
    prov = json.loads(next(tmp_path.glob("flair*.json")).read_text())  # OUT[.rtfsyn].json
    assert prov["target_metadata"]["contrast"] == "FLAIR"
    assert prov["assumed_metadata"]["protocol"] == "1.5T-FLAIR"


def test_training_warns_but_keeps_implausible_sidecars(tmp_path) -> None:
    from _tiny import write_tiny_bids
    from rtfsyn.data import load_cases
    from rtfsyn.training.trainer import _warn_implausible

    root = write_tiny_bids(tmp_path / "bids", n_subjects=1)
    sidecar = root / "sub-01" / "anat" / "sub-01_T2w.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "EchoTime": 0.00009}))
    said: list[str] = []
    cases = load_cases(root)
    assert _warn_implausible(cases, lambda text, **_: said.append(text)) == 1
    assert "TE=0.09 ms is implausible for T2w" in said[0] and "used as given" in said[0]
    assert cases[0].metadata["T2w"].echo_time == pytest.approx(0.00009)  # not refused


def test_a_given_tr_picks_the_fitting_family_or_none() -> None:
    from rtfsyn.metadata import Metadata
    from rtfsyn.protocols import fill_missing

    se = fill_missing(Metadata.from_dict({"contrast": "T1w", "tr": 600}))
    assert se.metadata.sequence.value == "SE" and se.metadata.inversion_time is None
    gre = fill_missing(Metadata.from_dict({"contrast": "T1w", "tr": 10, "te": 4}))
    # TR 10 ms fits no typical T1w protocol (MPRAGE 2300 ms, SE 600 ms): nothing but the field
    assert gre.assumed == {"field_strength": 3.0}
    assert gre.metadata.inversion_time is None and gre.metadata.sequence is None
