"""Acquisition metadata: schema, parsing, normalisation and prompt rendering.

Times are stored in **seconds** (BIDS units) and rendered in milliseconds in the prompt.
A :class:`Metadata` is built from a BIDS / dcm2niix JSON sidecar
(:meth:`Metadata.from_sidecar`), from a ``"TR=2000,TE=90,contrast=T2w"`` string
(:meth:`Metadata.from_string`, short keys TR/TE/TI in ms) or from a dict
(:meth:`Metadata.from_dict`). Missing values are allowed and rendered as ``None``.

>>> m = Metadata.from_string("contrast=t2,TR=3200,TE=90,field=3,vendor=SIEMENS")
>>> m.prompt()
'Age: None; Sex: None; Scanner: 3.0T Siemens; Contrast: T2w; Voxel size: None; TR/TE/TI (ms), FA (deg): (3200, 90, None, None)'
"""

from __future__ import annotations

import json
import math
import re
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from rtfsyn.errors import MetadataError

__all__ = [
    "CONTRASTS",
    "Contrast",
    "Metadata",
    "Sequence",
    "normalize_contrast",
    "normalize_manufacturer",
]


class Contrast(str, Enum):
    """Target / source contrasts rtfsyn knows."""

    T1w = "T1w"
    T1Gd = "T1Gd"
    T2w = "T2w"
    FLAIR = "FLAIR"
    PDw = "PDw"


CONTRASTS: tuple[str, ...] = tuple(c.value for c in Contrast)


class Sequence(str, Enum):
    """Sequence families (DESIGN.md)."""

    SE = "SE"
    TSE = "TSE"
    GRE = "GRE"
    MPRAGE = "MPRAGE"
    IR = "IR"


_CONTRAST_ALIASES: dict[str, str] = {
    # T1-weighted
    "t1": "T1w", "t1w": "T1w", "t1n": "T1w", "mprage": "T1w", "t1native": "T1w",
    "t1mprage": "T1w", "spgr": "T1w", "tfl": "T1w", "t1tfe": "T1w", "bravo": "T1w",
    # post-contrast T1
    "t1gd": "T1Gd", "t1c": "T1Gd", "t1ce": "T1Gd", "t1post": "T1Gd", "t1contrast": "T1Gd",
    "t1wgd": "T1Gd", "t1wce": "T1Gd",
    # T2-weighted
    "t2": "T2w", "t2w": "T2w", "t2tse": "T2w", "t2fse": "T2w",
    # FLAIR
    "flair": "FLAIR", "t2f": "FLAIR", "fla": "FLAIR", "t2flair": "FLAIR",
    "t2wflair": "FLAIR",
    # proton density
    "pd": "PDw", "pdw": "PDw", "pdweighted": "PDw",
}

_MANUFACTURERS: dict[str, str] = {
    "siemens": "Siemens",
    "ge": "GE",
    "gemedicalsystems": "GE",
    "generalelectric": "GE",
    "philips": "Philips",
    "philipsmedicalsystems": "Philips",
    "philipshealthcare": "Philips",
    "canon": "Canon",
    "toshiba": "Canon",
    "hitachi": "Hitachi",
    "fujifilm": "Hitachi",
    "uih": "UIH",
    "unitedimaging": "UIH",
}

MANUFACTURERS: tuple[str, ...] = ("Siemens", "GE", "Philips", "Canon", "Hitachi", "UIH")


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def normalize_contrast(name: str | Contrast) -> str:
    """Map a contrast name or alias (``t1n``, ``MPRAGE``, ``t2f``, ``t1ce``…) to its canonical name.

    Raises :class:`MetadataError` naming the bad value and the accepted names.
    """
    if isinstance(name, Contrast):
        return name.value
    key = _key(str(name))
    if key in _CONTRAST_ALIASES:
        return _CONTRAST_ALIASES[key]
    raise MetadataError(
        f"unknown contrast {name!r}: use one of {', '.join(CONTRASTS)} "
        "(aliases such as t1n, t1c, t2f, MPRAGE, pd are accepted)"
    )


def normalize_manufacturer(name: str) -> str:
    """Map a vendor string (``SIEMENS``, ``GE MEDICAL SYSTEMS``…) to a short canonical name.

    Unknown vendors are kept as given (stripped); they map to the 'other' category in encoders.
    """
    key = _key(name)
    for prefix, canonical in sorted(_MANUFACTURERS.items(), key=lambda kv: -len(kv[0])):
        if key.startswith(prefix):
            return canonical
    return name.strip()


def _normalize_sequence(name: str) -> str:
    key = _key(name)
    table = {
        "se": "SE", "spinecho": "SE",
        "tse": "TSE", "fse": "TSE", "turbospinecho": "TSE", "fastspinecho": "TSE",
        "gre": "GRE", "gr": "GRE", "spgr": "GRE", "ffe": "GRE", "flash": "GRE",
        "gradientecho": "GRE",
        "mprage": "MPRAGE", "tfe": "MPRAGE", "tfl": "MPRAGE", "bravo": "MPRAGE",
        "ir": "IR", "inversionrecovery": "IR", "flair": "IR",
    }
    if key in table:
        return table[key]
    raise MetadataError(
        f"unknown sequence family {name!r}: use one of {', '.join(s.value for s in Sequence)}"
    )


# Valid ranges: (low exclusive, high inclusive), in stored units.
_RANGES: dict[str, tuple[float, float, str]] = {
    "repetition_time": (0.0, 30.0, "s"),
    "echo_time": (0.0, 1.0, "s"),
    "inversion_time": (0.0, 10.0, "s"),
    "flip_angle": (0.0, 180.0, "deg"),
    "field_strength": (0.0, 12.0, "T"),
    "slice_thickness": (0.0, 20.0, "mm"),
    "age": (-1e-9, 130.0, "years"),
}


class Metadata(BaseModel):
    """Acquisition metadata of one image (DESIGN.md ``MetadataSchema``).

    All fields are optional except ``contrast``. Times are in seconds, angles in degrees,
    field strength in tesla, sizes in mm.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    contrast: Contrast
    sequence: Sequence | None = None
    repetition_time: float | None = None
    echo_time: float | None = None
    inversion_time: float | None = None
    flip_angle: float | None = None
    field_strength: float | None = None
    manufacturer: str | None = None
    model_name: str | None = None
    site: str | None = None
    voxel_size: tuple[float, float, float] | None = None
    slice_thickness: float | None = None
    age: float | None = None
    sex: str | None = None

    #: Numeric fields in encoder order (``voxel_size`` contributes three values).
    NUMERIC_FIELDS: ClassVar[tuple[str, ...]] = (
        "repetition_time", "echo_time", "inversion_time", "flip_angle", "field_strength",
        "voxel_size_x", "voxel_size_y", "voxel_size_z", "slice_thickness", "age",
    )
    #: Categorical fields and their vocabularies (index 0 of each is 'other').
    CATEGORICAL_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "contrast": ("other", *CONTRASTS),
        "sequence": ("other", *(s.value for s in Sequence)),
        "manufacturer": ("other", *MANUFACTURERS),
        "sex": ("other", "M", "F"),
    }

    # ---------------------------------------------------------------- validation
    @field_validator("contrast", mode="before")
    @classmethod
    def _v_contrast(cls, v: Any) -> str:
        return normalize_contrast(v)

    @field_validator("sequence", mode="before")
    @classmethod
    def _v_sequence(cls, v: Any) -> Any:
        if v is None or isinstance(v, Sequence):  # an enum member (a copy) stays as it is
            return v
        return _normalize_sequence(str(v))

    @field_validator("manufacturer", mode="before")
    @classmethod
    def _v_manufacturer(cls, v: Any) -> Any:
        return None if v is None else normalize_manufacturer(str(v))

    @field_validator("sex", mode="before")
    @classmethod
    def _v_sex(cls, v: Any) -> Any:
        if v is None:
            return None
        key = _key(str(v))
        table = {"m": "M", "male": "M", "f": "F", "female": "F", "o": "O", "other": "O"}
        if key not in table:
            raise MetadataError(f"sex={v!r} is not recognised: use M, F or O")
        return table[key]

    @field_validator("voxel_size", mode="before")
    @classmethod
    def _v_voxel(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, (int, float)):
            v = (float(v),) * 3
        values = tuple(float(x) for x in v)
        if len(values) != 3:
            raise MetadataError(f"voxel_size={v!r} must have 3 values (mm)")
        for x in values:
            if not (0.0 < x <= 20.0) or not math.isfinite(x):
                raise MetadataError(
                    f"voxel_size={v!r} is out of range: each size must be in (0, 20] mm"
                )
        return values

    @field_validator(*_RANGES, mode="after")
    @classmethod
    def _v_range(cls, v: float | None, info: Any) -> float | None:
        if v is None:
            return None
        lo, hi, unit = _RANGES[info.field_name]
        if not math.isfinite(v) or not (lo < v <= hi):
            raise MetadataError(
                f"{info.field_name}={v:g} {unit} is out of range: expected a value in "
                f"({max(lo, 0):g}, {hi:g}] {unit}"
                + (" (times are in seconds, BIDS units)" if unit == "s" else "")
            )
        return float(v)

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metadata:
        """Build from a dict of field names (snake_case, BIDS names or short keys all accepted).

        Short keys ``TR``/``TE``/``TI`` are in **milliseconds**; snake_case and BIDS keys
        (``RepetitionTime``) in seconds; a value given as a string may carry a unit
        (``"2s"``, ``"90ms"``).
        """
        fields: dict[str, Any] = {}
        for raw_key, value in data.items():
            if value is None:
                continue
            name, default_unit = _resolve_key(raw_key)
            if name is None:
                raise MetadataError(
                    f"unknown metadata key {raw_key!r}: use e.g. contrast, TR, TE, TI, FA, "
                    "field, vendor, model, site, voxel_size, slice_thickness, age, sex"
                )
            if name in fields:
                raise MetadataError(f"metadata key {raw_key!r} is given twice")
            fields[name] = _convert_value(name, value, default_unit, raw_key)
        if "contrast" not in fields:
            raise MetadataError(
                "metadata has no contrast: add e.g. contrast=T2w (T1w, T1Gd, T2w, FLAIR, PDw)"
            )
        return cls._build(fields)

    @classmethod
    def from_string(cls, text: str) -> Metadata:
        """Parse ``"contrast=T2w,TR=3000,TE=90"`` (TR/TE/TI in ms unless a unit is given).

        A bare contrast name (``"T2w"``) is accepted as ``contrast=T2w``.
        """
        text = text.strip()
        if not text:
            raise MetadataError("empty metadata string: give e.g. 'contrast=T2w,TR=3000,TE=90'")
        items: dict[str, Any] = {}
        for part in re.split(r"[,;]", text):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                if "contrast" in items:
                    raise MetadataError(
                        f"cannot parse {part!r} in metadata {text!r}: expected key=value"
                    )
                items["contrast"] = part
                continue
            key, value = (s.strip() for s in part.split("=", 1))
            if key in items:
                raise MetadataError(f"metadata key {key!r} is given twice in {text!r}")
            items[key] = value
        return cls.from_dict(items)

    @classmethod
    def from_sidecar(
        cls, sidecar: str | Path | dict[str, Any], contrast: str | None = None
    ) -> Metadata:
        """Build from a BIDS / dcm2niix JSON sidecar (path or already-loaded dict).

        The contrast is taken from ``contrast`` if given, else guessed from the file name
        suffix (``*_T2w.json``), the dcm2niix ``BidsGuess`` or the series description.
        """
        path: Path | None = None
        if isinstance(sidecar, dict):
            data = sidecar
        else:
            path = Path(sidecar)
            try:
                data = json.loads(path.read_text())
            except FileNotFoundError:
                raise MetadataError(f"sidecar {path} does not exist") from None
            except json.JSONDecodeError as exc:
                raise MetadataError(
                    f"sidecar {path} is not valid JSON ({exc.msg} at line {exc.lineno})"
                ) from None
            if not isinstance(data, dict):
                raise MetadataError(f"sidecar {path} must hold a JSON object")
        where = f" in {path}" if path else ""
        if contrast is None:
            contrast = _guess_contrast(data, path)
        if contrast is None:
            raise MetadataError(
                f"cannot tell the contrast of sidecar{where}: name the file *_T2w.json or pass "
                "the contrast explicitly"
            )
        fields: dict[str, Any] = {"contrast": contrast}
        for bids_key, name in _BIDS_KEYS.items():
            if data.get(bids_key) is not None:
                try:
                    fields[name] = _convert_value(name, data[bids_key], "s", bids_key)
                except MetadataError as exc:
                    raise MetadataError(f"{exc}{where}") from None
        if "sequence" not in fields:
            seq = _guess_sequence(data)
            if seq:
                fields["sequence"] = seq
        if "site" not in fields and data.get("StationName"):
            fields["site"] = data["StationName"]
        try:
            return cls._build(fields)
        except MetadataError as exc:
            raise MetadataError(f"{exc}{where}") from None

    @classmethod
    def _build(cls, fields: dict[str, Any]) -> Metadata:
        try:
            return cls(**fields)
        except ValidationError as exc:
            err = exc.errors()[0]
            ctx_err = err.get("ctx", {}).get("error")
            if isinstance(ctx_err, MetadataError):
                raise MetadataError(str(ctx_err)) from None
            loc = ".".join(str(x) for x in err["loc"])
            raise MetadataError(
                f"metadata field {loc}={err.get('input')!r} is invalid: {err['msg']}"
            ) from None

    # ---------------------------------------------------------------- rendering
    def prompt(self) -> str:
        """The deterministic one-line description of DESIGN.md (times in ms)."""
        scanner = _scanner_text(self.field_strength, self.manufacturer)
        vox = "None" if self.voxel_size is None else "(" + ", ".join(
            _num(v) for v in self.voxel_size) + ")"
        acq = ", ".join(
            _num(None if v is None else v * 1000.0)
            for v in (self.repetition_time, self.echo_time, self.inversion_time)
        )
        return (
            f"Age: {_num(self.age)}; Sex: {self.sex}; Scanner: {scanner}; "
            f"Contrast: {self.contrast.value}; Voxel size: {vox}; "
            f"TR/TE/TI (ms), FA (deg): ({acq}, {_num(self.flip_angle)})"
        )

    def numeric_values(self) -> dict[str, float | None]:
        """Numeric fields in :attr:`NUMERIC_FIELDS` order; ``None`` where missing.

        Times are returned in **ms**, the other fields in their stored units.
        """
        vox = self.voxel_size or (None, None, None)
        def ms(v):
            return (None if v is None else v * 1000.0)
        return {
            "repetition_time": ms(self.repetition_time),
            "echo_time": ms(self.echo_time),
            "inversion_time": ms(self.inversion_time),
            "flip_angle": self.flip_angle,
            "field_strength": self.field_strength,
            "voxel_size_x": vox[0],
            "voxel_size_y": vox[1],
            "voxel_size_z": vox[2],
            "slice_thickness": self.slice_thickness,
            "age": self.age,
        }

    def categorical_indices(self) -> dict[str, int | None]:
        """Index of each categorical field in its vocabulary (0 = other); ``None`` if missing."""
        out: dict[str, int | None] = {}
        for name, vocab in self.CATEGORICAL_FIELDS.items():
            value = getattr(self, name)
            if value is None:
                out[name] = None
                continue
            value = value.value if isinstance(value, Enum) else value
            out[name] = vocab.index(value) if value in vocab else 0
        return out

    def to_sidecar(self) -> dict[str, Any]:
        """BIDS sidecar keys (seconds) for the fields that are set."""
        out: dict[str, Any] = {}
        for bids_key, name in _BIDS_KEYS.items():
            value = getattr(self, name)
            if value is not None and bids_key not in out:
                out[bids_key] = value.value if isinstance(value, Enum) else value
        if self.voxel_size is not None:
            out["VoxelSize"] = list(self.voxel_size)
        out["Contrast"] = self.contrast.value
        return out

    def with_updates(self, **changes: Any) -> Metadata:
        """A copy with some fields replaced (validated)."""
        fields = self.model_dump(exclude_none=True)
        fields.update(changes)
        return self._build({k: v for k, v in fields.items() if v is not None})


# BIDS sidecar key → field name (first listed wins when rendering back)
_BIDS_KEYS: dict[str, str] = {
    "RepetitionTime": "repetition_time",
    "EchoTime": "echo_time",
    "InversionTime": "inversion_time",
    "FlipAngle": "flip_angle",
    "MagneticFieldStrength": "field_strength",
    "Manufacturer": "manufacturer",
    "ManufacturersModelName": "model_name",
    "InstitutionName": "site",
    "SliceThickness": "slice_thickness",
    "PatientAge": "age",
    "PatientSex": "sex",
    "SequenceFamily": "sequence",
}

# accepted keys → (field, default unit for bare numbers)
_KEY_ALIASES: dict[str, tuple[str, str | None]] = {
    "contrast": ("contrast", None), "modality": ("contrast", None), "suffix": ("contrast", None),
    "sequence": ("sequence", None), "seq": ("sequence", None),
    "sequencefamily": ("sequence", None),
    "tr": ("repetition_time", "ms"), "te": ("echo_time", "ms"), "ti": ("inversion_time", "ms"),
    "repetitiontime": ("repetition_time", "s"), "echotime": ("echo_time", "s"),
    "inversiontime": ("inversion_time", "s"),
    "fa": ("flip_angle", None), "flip": ("flip_angle", None), "flipangle": ("flip_angle", None),
    "field": ("field_strength", None), "b0": ("field_strength", None),
    "fieldstrength": ("field_strength", None),
    "magneticfieldstrength": ("field_strength", None),
    "vendor": ("manufacturer", None), "manufacturer": ("manufacturer", None),
    "model": ("model_name", None), "modelname": ("model_name", None),
    "manufacturersmodelname": ("model_name", None),
    "site": ("site", None), "institution": ("site", None), "institutionname": ("site", None),
    "voxelsize": ("voxel_size", None), "voxel": ("voxel_size", None),
    "spacing": ("voxel_size", None),
    "slicethickness": ("slice_thickness", None), "thickness": ("slice_thickness", None),
    "age": ("age", None), "patientage": ("age", None),
    "sex": ("sex", None), "patientsex": ("sex", None),
}
_TIME_FIELDS = {"repetition_time", "echo_time", "inversion_time"}


def _resolve_key(key: str) -> tuple[str | None, str | None]:
    k = _key(key)
    if k in _KEY_ALIASES:
        return _KEY_ALIASES[k]
    return None, None


def _convert_value(name: str, value: Any, default_unit: str | None, raw_key: str) -> Any:
    if name in _TIME_FIELDS:
        unit = default_unit or "s"
        if isinstance(value, str):
            m = re.fullmatch(r"\s*([-+0-9.eE]+)\s*(ms|s)?\s*", value)
            if not m:
                raise MetadataError(f"{raw_key}={value!r} is not a number (e.g. {raw_key}=90)")
            number, unit = float(m.group(1)), (m.group(2) or unit)
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise MetadataError(f"{raw_key}={value!r} is not a number") from None
        return number / 1000.0 if unit == "ms" else number
    if name == "age" and isinstance(value, str):
        return _parse_age(value, raw_key)
    if name in {"flip_angle", "field_strength", "slice_thickness", "age"}:
        if isinstance(value, str):
            value = re.sub(r"(deg|mm|T|Y|y)$", "", value.strip())
        try:
            return float(value)
        except (TypeError, ValueError):
            raise MetadataError(f"{raw_key}={value!r} is not a number") from None
    if name == "voxel_size" and isinstance(value, str):
        parts = [p for p in re.split(r"[x×\s/]+", value.strip("()[] ")) if p]
        try:
            return tuple(float(p) for p in parts) if len(parts) > 1 else float(parts[0])
        except (ValueError, IndexError):
            raise MetadataError(
                f"{raw_key}={value!r} is not a voxel size: use e.g. 1x1x1 or 1.0"
            ) from None
    return value


#: DICOM age-string units (AS value representation ``nnnD/W/M/Y``) in years
_AGE_UNITS = {"d": 1 / 365.25, "w": 7 / 365.25, "m": 1 / 12, "y": 1.0}


def _parse_age(value: str, raw_key: str) -> float:
    """``"030Y"`` → 30, ``"006M"`` → 0.5, ``"012W"``, ``"010D"`` → years; plain numbers too."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([dwmyDWMY])?\s*", value)
    if not m:
        raise MetadataError(
            f"{raw_key}={value!r} is not an age: use years (45) or a DICOM age string "
            "(045Y, 006M, 012W, 010D)"
        )
    return float(m.group(1)) * _AGE_UNITS[(m.group(2) or "y").lower()]


def _guess_contrast(data: dict[str, Any], path: Path | None) -> str | None:
    candidates: list[str] = []
    if path is not None:
        stem = path.name.split(".")[0]
        candidates.append(stem.rsplit("_", 1)[-1])
    guess = data.get("BidsGuess")
    if isinstance(guess, list) and len(guess) == 2:
        candidates.append(str(guess[1]).rsplit("_", 1)[-1])
    for key in ("Contrast", "SeriesDescription", "ProtocolName"):
        if data.get(key):
            candidates.append(str(data[key]))
            candidates.extend(re.split(r"[\s_\-]+", str(data[key])))
    for cand in candidates:
        try:
            return normalize_contrast(cand)
        except MetadataError:
            continue
    return None


def _guess_sequence(data: dict[str, Any]) -> str | None:
    seq = str(data.get("ScanningSequence", "")).upper()
    variant = str(data.get("SequenceVariant", "")).upper()
    parts = set(re.split(r"[\\_/]+", seq))
    if "GR" in parts and "MP" in variant:
        return "MPRAGE"
    if "IR" in parts and "SE" in parts:
        return "IR"
    if "SE" in parts:
        etl = data.get("EchoTrainLength")
        return "TSE" if isinstance(etl, (int, float)) and etl > 1 else "SE"
    if "GR" in parts:
        return "GRE"
    return None


def _num(value: float | None) -> str:
    if value is None:
        return "None"
    value = round(float(value), 3)
    return str(int(value)) if value == int(value) else f"{value:g}"


def _scanner_text(field: float | None, vendor: str | None) -> str:
    if field is None and vendor is None:
        return "None"
    f = "None" if field is None else f"{field:.1f}T"
    return f"{f} {vendor}" if vendor else f
