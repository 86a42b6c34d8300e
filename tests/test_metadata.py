from __future__ import annotations

import json

import pytest

from rtfsyn.errors import MetadataError
from rtfsyn.metadata import Metadata, normalize_contrast, normalize_manufacturer


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("t1", "T1w"), ("T1w", "T1w"), ("t1n", "T1w"), ("MPRAGE", "T1w"),
        ("t2", "T2w"), ("t2w", "T2w"), ("T2W", "T2w"),
        ("flair", "FLAIR"), ("t2f", "FLAIR"), ("fla", "FLAIR"), ("T2-FLAIR", "FLAIR"),
        ("t1c", "T1Gd"), ("t1ce", "T1Gd"), ("t1gd", "T1Gd"), ("T1-Gd", "T1Gd"),
        ("pd", "PDw"), ("pdw", "PDw"), ("PD", "PDw"),
    ],
)
def test_contrast_aliases(alias: str, canonical: str) -> None:
    assert normalize_contrast(alias) == canonical


def test_unknown_contrast_names_value_and_choices() -> None:
    with pytest.raises(MetadataError, match=r"unknown contrast 'DWI'.*T1w, T1Gd, T2w, FLAIR, PDw"):
        normalize_contrast("DWI")


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [("SIEMENS", "Siemens"), ("GE MEDICAL SYSTEMS", "GE"), ("Philips Medical Systems", "Philips"),
     ("Toshiba", "Canon"), ("Acme MRI", "Acme MRI")],
)
def test_manufacturer_normalisation(raw: str, canonical: str) -> None:
    assert normalize_manufacturer(raw) == canonical


def test_from_string_ms_units_and_prompt() -> None:
    m = Metadata.from_string("TR=2000,TE=90,contrast=T2w")
    assert m.repetition_time == pytest.approx(2.0)
    assert m.echo_time == pytest.approx(0.09)
    assert m.prompt() == (
        "Age: None; Sex: None; Scanner: None; Contrast: T2w; Voxel size: None; "
        "TR/TE/TI (ms), FA (deg): (2000, 90, None, None)"
    )


def test_from_string_explicit_units_and_bare_contrast() -> None:
    m = Metadata.from_string("flair; TR=9s; TE=120ms; TI=2500; field=3T; vendor=SIEMENS")
    assert m.contrast.value == "FLAIR"
    assert m.repetition_time == pytest.approx(9.0)
    assert m.echo_time == pytest.approx(0.12)
    assert m.inversion_time == pytest.approx(2.5)
    assert m.field_strength == 3.0
    assert m.manufacturer == "Siemens"


def test_design_prompt_example() -> None:
    m = Metadata.from_dict({
        "age": 45, "sex": "F", "field": 3.0, "vendor": "Siemens", "contrast": "T2w",
        "voxel_size": (1.0, 1.0, 1.0), "TR": 3200, "TE": 563, "FA": 120,
    })
    assert m.prompt() == (
        "Age: 45; Sex: F; Scanner: 3.0T Siemens; Contrast: T2w; Voxel size: (1, 1, 1); "
        "TR/TE/TI (ms), FA (deg): (3200, 563, None, 120)"
    )


def test_prompt_is_deterministic_and_order_independent() -> None:
    a = Metadata.from_string("contrast=T2w,TR=3000,TE=90,field=1.5")
    b = Metadata.from_string("field=1.5,TE=90,TR=3000,contrast=t2")
    assert a.prompt() == b.prompt()
    assert a == b


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("contrast=T2w,TE=30000", r"echo_time=30 s is out of range"),
        ("contrast=T2w,field=70", r"field_strength=70 T is out of range"),
        ("contrast=T2w,FA=400", r"flip_angle=400 deg is out of range"),
        ("contrast=T2w,TR=-5", r"repetition_time=-0.005 s is out of range"),
        ("contrast=T2w,TR=abc", r"TR='abc' is not a number"),
        ("contrast=T2w,foo=1", r"unknown metadata key 'foo'"),
        ("TR=3000", r"metadata has no contrast"),
        ("contrast=T2w,sex=X", r"sex='X' is not recognised"),
        ("contrast=T2w,TR=1,TR=2", r"given twice"),
        ("", r"empty metadata string"),
    ],
)
def test_bad_values_name_field_and_value(text: str, pattern: str) -> None:
    with pytest.raises(MetadataError, match=pattern) as info:
        Metadata.from_string(text)
    assert "\n" not in str(info.value)


def test_missing_fields_allowed() -> None:
    m = Metadata(contrast="PDw")
    assert m.numeric_values()["echo_time"] is None
    assert m.categorical_indices()["manufacturer"] is None
    assert "TR/TE/TI (ms), FA (deg): (None, None, None, None)" in m.prompt()


def test_numeric_and_categorical_encodings() -> None:
    m = Metadata.from_string("contrast=FLAIR,TR=9000,TE=120,TI=2500,FA=90,vendor=GE,voxel=1x1x3")
    num = m.numeric_values()
    assert list(num) == list(Metadata.NUMERIC_FIELDS)
    assert num["repetition_time"] == pytest.approx(9000)
    assert num["voxel_size_z"] == 3.0
    cat = m.categorical_indices()
    assert Metadata.CATEGORICAL_FIELDS["contrast"][cat["contrast"]] == "FLAIR"
    assert Metadata.CATEGORICAL_FIELDS["manufacturer"][cat["manufacturer"]] == "GE"
    assert cat["sex"] is None


def test_unknown_vendor_maps_to_other_category() -> None:
    m = Metadata.from_string("contrast=T1w,vendor=Acme")
    assert m.categorical_indices()["manufacturer"] == 0


def test_sidecar_round_trip(tmp_path) -> None:
    m = Metadata.from_string("contrast=T2w,TR=3200,TE=90,FA=90,field=3,vendor=GE,site=X")
    path = tmp_path / "sub-01_T2w.json"
    path.write_text(json.dumps(m.to_sidecar()))
    back = Metadata.from_sidecar(path)
    assert back.prompt() == m.prompt()
    assert json.loads(path.read_text())["RepetitionTime"] == pytest.approx(3.2)  # seconds


def test_sidecar_errors(tmp_path) -> None:
    bad = tmp_path / "x_T2w.json"
    bad.write_text("{not json")
    with pytest.raises(MetadataError, match="not valid JSON"):
        Metadata.from_sidecar(bad)
    with pytest.raises(MetadataError, match="does not exist"):
        Metadata.from_sidecar(tmp_path / "missing_T2w.json")
    nocontrast = tmp_path / "scan.json"
    nocontrast.write_text(json.dumps({"RepetitionTime": 2.0}))
    with pytest.raises(MetadataError, match="cannot tell the contrast"):
        Metadata.from_sidecar(nocontrast)
    wrong = tmp_path / "y_T2w.json"
    wrong.write_text(json.dumps({"EchoTime": 90}))  # ms by mistake: BIDS wants seconds
    with pytest.raises(MetadataError, match=r"echo_time=90 s is out of range.*y_T2w.json"):
        Metadata.from_sidecar(wrong)


def test_dicom_style_age_string() -> None:
    m = Metadata.from_sidecar({"PatientAge": "045Y", "PatientSex": "F"}, contrast="T1w")
    assert m.age == 45 and m.sex == "F"


def test_real_siemens_sidecar(real_data) -> None:
    m = Metadata.from_sidecar(real_data / "sidecar-example" / "5_anat-T1w_acq-tfl.json")
    assert m.contrast.value == "T1w"
    assert m.manufacturer == "Siemens"
    assert m.field_strength == 3.0
    assert m.repetition_time == pytest.approx(1.8)
    assert m.echo_time == pytest.approx(0.00241)
    assert m.inversion_time == pytest.approx(0.9)
    assert m.flip_angle == 9
    assert m.sequence.value == "MPRAGE"
    assert m.slice_thickness == 2
    assert "TR/TE/TI (ms), FA (deg): (1800, 2.41, 900, 9)" in m.prompt()
    assert "Scanner: 3.0T Siemens" in m.prompt()


def test_real_philips_sidecar(real_data) -> None:
    m = Metadata.from_sidecar(real_data / "sidecar-example" / "1301_WIP_ADNI_Sag3D_MPRAGE_cl.json")
    assert m.contrast.value == "T1w"  # from BidsGuess / series description
    assert m.manufacturer == "Philips"
    assert m.model_name == "Ingenia Elition X"
    assert m.repetition_time == pytest.approx(0.006501)
    assert m.sequence.value == "MPRAGE"


@pytest.mark.parametrize("text, years", [("030Y", 30.0), ("006M", 0.5), ("012W", 12 * 7 / 365.25),
                                         ("010D", 10 / 365.25), ("45", 45.0), ("45.5", 45.5)])
def test_dicom_age_units(text: str, years: float) -> None:
    m = Metadata.from_sidecar({"PatientAge": text}, contrast="T1w")
    assert m.age == pytest.approx(years)
    assert Metadata.from_string(f"T1w,age={text}").age == pytest.approx(years)


def test_bad_age_string() -> None:
    with pytest.raises(MetadataError, match="is not an age"):
        Metadata.from_sidecar({"PatientAge": "30 years"}, contrast="T1w")


def test_copies_keep_the_sequence_family() -> None:
    # every copy (voxel size set by training and synthesis) used to drop the sequence family
    meta = Metadata.from_dict({"contrast": "T1w", "sequence": "GRE", "tr": 10})
    assert meta.with_updates(voxel_size=(1.0, 1.0, 1.0)).sequence.value == "GRE"
    assert Metadata(**meta.model_dump()).sequence.value == "GRE"
