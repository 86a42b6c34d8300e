"""Typical acquisition protocols per target contrast and field strength, and plausibility ranges.

Most real data comes without sidecars (BraTS folders have none), so the most common request is
"T2w from this T1w" with nothing else. Instead of letting the model guess what a protocol-less
T2w looks like (its learned per-field null tokens, which were measured to be neither the typical
protocol nor stable, see ``benchmarks/missing_metadata.py``), :func:`fill_missing` fills every
missing acquisition field of the target from a **typical protocol** of this table and records
which fields were *assumed*. A contrast-only request is therefore the same request as the typical
protocol spelled out.

Table (:data:`PROTOCOLS`; times in ms, flip angle in degrees; the default protocol per contrast
and field strength comes first):

============================  =========  =====  ======  =====  ====
name                          family     TR     TE      TI     FA
============================  =========  =====  ======  =====  ====
3T-T1w-MPRAGE                 MPRAGE     2300   2.98    900    9
3T-T1w-SE                     SE         600    10      -      90
1.5T-T1w-MPRAGE               MPRAGE     2400   3.5     1000   8
1.5T-T1w-SE                   SE         550    12      -      90
3T-T1Gd-MPRAGE                MPRAGE     2100   3       1100   10
3T-T1Gd-SE                    SE         600    10      -      90
1.5T-T1Gd-MPRAGE              MPRAGE     2100   3.5     1100   15
1.5T-T1Gd-SE                  SE         550    12      -      90
3T-T2w-TSE                    TSE        5000   100     -      90
1.5T-T2w-TSE                  TSE        4500   100     -      90
3T-FLAIR                      IR         9000   100     2500   90
1.5T-FLAIR                    IR         9000   110     2400   90
3T-PDw-TSE                    TSE        5000   12      -      90
1.5T-PDw-TSE                  TSE        4500   12      -      90
============================  =========  =====  ======  =====  ====

These are **typical values, rounded**, not one vendor's exam card. Sources:

* T1w MPRAGE: the ADNI protocols (Jack et al., "The Alzheimer's Disease Neuroimaging
  Initiative (ADNI): MRI methods", J Magn Reson Imaging 27:685-691, 2008): 3 T Siemens MPRAGE
  TR 2300 / TE 2.98 / TI 900 ms, FA 9 deg; 1.5 T TR 2400 / TI 1000 ms, FA 8 deg, minimum TE.
  The real Siemens XA30 sidecar in ``shared/data/real/sidecar-example`` has TR 1800 / TE 2.41 /
  TI 900, FA 9; the Philips one reports the 6.5 ms TFE shot interval as TR (TI 900, FA 9).
* T1Gd, T2w, FLAIR: the consensus brain tumour imaging protocol (BTIP; Ellingson et al.,
  Neuro-Oncology 17:1188-1198, 2015): 3-D IR-GRE pre/post contrast (MPRAGE TR about 2100 ms,
  TI about 1100 ms, FA 10-15 deg, minimum TE), 2-D T2 TSE (TR > 2500 ms, TE 80-120 ms) and 2-D
  FLAIR (TR > 6000 ms, TE 100-140 ms, TI 2000-2500 ms). The values are picks inside those ranges.
* T2w / PDw TSE: dual-echo PD/T2 fast spin echo as in ADNI-1 and IXI (IXI lists Philips
  1.5 T TR 8178 ms and 3 T TR 5725 ms with TE 100 ms for T2 and 8 ms for PD; brain-development.org
  /ixi-dataset); PD TE 10-15 ms and T1 spin echo TR 400-700 / TE 8-15 ms are the textbook values
  (Bernstein, King & Zhou, *Handbook of MRI Pulse Sequences*, Elsevier 2004;
  McRobbie et al., *MRI from Picture to Proton*, CUP 2017).
* Spin-echo flip angles are the 90 deg excitation, as the phantom writes them (dcm2niix often
  reports the refocusing angle, 120-180 deg, for Siemens TSE; both are plausible here).

The values also lie inside what the bundled model saw in training (phantom sites A-C in
:mod:`rtfsyn.phantom.scanner`: T2w TSE 5000-6000 / 90-102 ms, FLAIR 9000-11000 / 89-140 /
2480-2580 ms, PDw 5000-6000 / 8-20 ms), so filling does not ask the model to extrapolate.
T1Gd never had acquisition values in training (BraTS has no sidecars): its values are new to
the bundled model.

:data:`PLAUSIBLE` gives, per contrast, the range of TR / TE / TI / FA a real protocol of that
contrast has (wide on purpose: 3-D SPACE / CUBE T2w has TE up to ~600 ms, Philips reports a
TFE shot TR of ~6 ms for an MPRAGE, MP2RAGE has TR 5000 ms). :func:`check_plausible` refuses
values outside it with the likely unit slip (``TE=0.09 ms is implausible for T2w ...; did you
mean 90 ms (TE=90 or TE=0.09s)?``); ``--force-metadata`` (``force_metadata=True``) skips it for
exotic protocols. The check runs on user-given metadata at synthesis time only; training data
is never refused for it (``rtfsyn inspect`` flags odd sidecars).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from rtfsyn.errors import MetadataError
from rtfsyn.metadata import CONTRASTS, Metadata

__all__ = [
    "DEFAULT_FIELD",
    "PLAUSIBLE",
    "PROTOCOLS",
    "Filled",
    "ImplausibleMetadataError",
    "TypicalProtocol",
    "check_plausible",
    "field_status",
    "fill_missing",
    "get_protocol",
    "plausibility_problems",
    "protocol_names",
    "typical_protocol",
]

#: Field strength (T) assumed when neither the target nor the source metadata gives one.
DEFAULT_FIELD = 3.0


@dataclass(frozen=True)
class TypicalProtocol:
    """One typical protocol: times in **ms**, flip angle in degrees, field in tesla."""

    name: str
    contrast: str
    field_strength: float
    sequence: str
    tr_ms: float
    te_ms: float
    ti_ms: float | None
    flip_angle: float
    source: str

    @property
    def description(self) -> str:
        """``3 T T2w TSE`` (for messages)."""
        seq = "" if self.contrast == "FLAIR" else f" {self.sequence}"
        return f"{self.field_strength:g} T {self.contrast}{seq}"

    def values(self) -> dict[str, Any]:
        """Metadata field → value in stored units (seconds), for the fields this protocol sets."""
        out: dict[str, Any] = {
            "sequence": self.sequence,
            "repetition_time": self.tr_ms / 1000.0,
            "echo_time": self.te_ms / 1000.0,
            "flip_angle": self.flip_angle,
            "field_strength": self.field_strength,
        }
        if self.ti_ms is not None:
            out["inversion_time"] = self.ti_ms / 1000.0
        return out

    def meta_string(self) -> str:
        """The same protocol as a ``--meta`` string (``TR=5000,TE=100,FA=90,field=3,...``)."""
        parts = [f"TR={self.tr_ms:g}", f"TE={self.te_ms:g}"]
        if self.ti_ms is not None:
            parts.append(f"TI={self.ti_ms:g}")
        parts += [f"FA={self.flip_angle:g}", f"field={self.field_strength:g}",
                  f"sequence={self.sequence}"]
        return ",".join(parts)


def _p(name: str, contrast: str, field: float, seq: str, tr: float, te: float,
       ti: float | None, fa: float, source: str) -> TypicalProtocol:
    return TypicalProtocol(name, contrast, field, seq, tr, te, ti, fa, source)


_ADNI = "ADNI (Jack et al. 2008)"
_BTIP = "BTIP (Ellingson et al. 2015)"
_TEXT = "textbook spin echo (Bernstein et al. 2004)"
_DUAL = "dual-echo PD/T2 TSE (ADNI-1, IXI)"

#: name → protocol; for each (contrast, field) the first entry is the default.
PROTOCOLS: dict[str, TypicalProtocol] = {p.name: p for p in (
    _p("3T-T1w-MPRAGE", "T1w", 3.0, "MPRAGE", 2300, 2.98, 900, 9, _ADNI),
    _p("3T-T1w-SE", "T1w", 3.0, "SE", 600, 10, None, 90, _TEXT),
    _p("1.5T-T1w-MPRAGE", "T1w", 1.5, "MPRAGE", 2400, 3.5, 1000, 8, _ADNI),
    _p("1.5T-T1w-SE", "T1w", 1.5, "SE", 550, 12, None, 90, _TEXT),
    _p("3T-T1Gd-MPRAGE", "T1Gd", 3.0, "MPRAGE", 2100, 3, 1100, 10, _BTIP),
    _p("3T-T1Gd-SE", "T1Gd", 3.0, "SE", 600, 10, None, 90, _TEXT),
    _p("1.5T-T1Gd-MPRAGE", "T1Gd", 1.5, "MPRAGE", 2100, 3.5, 1100, 15, _BTIP),
    _p("1.5T-T1Gd-SE", "T1Gd", 1.5, "SE", 550, 12, None, 90, _TEXT),
    _p("3T-T2w-TSE", "T2w", 3.0, "TSE", 5000, 100, None, 90, _BTIP),
    _p("1.5T-T2w-TSE", "T2w", 1.5, "TSE", 4500, 100, None, 90, _DUAL),
    _p("3T-FLAIR", "FLAIR", 3.0, "IR", 9000, 100, 2500, 90, _BTIP),
    _p("1.5T-FLAIR", "FLAIR", 1.5, "IR", 9000, 110, 2400, 90, _BTIP),
    _p("3T-PDw-TSE", "PDw", 3.0, "TSE", 5000, 12, None, 90, _DUAL),
    _p("1.5T-PDw-TSE", "PDw", 1.5, "TSE", 4500, 12, None, 90, _DUAL),
)}

#: contrast → field → (low, high) inclusive; times in ms, FA in degrees. ``TI`` absent = not
#: checked (a T2w / PDw has no inversion; STIR variants exist).
PLAUSIBLE: dict[str, dict[str, tuple[float, float]]] = {
    "T1w": {"TR": (3, 6000), "TE": (1, 30), "TI": (100, 3000), "FA": (2, 180)},
    "T1Gd": {"TR": (3, 6000), "TE": (1, 30), "TI": (100, 3000), "FA": (2, 180)},
    "T2w": {"TR": (1000, 20000), "TE": (40, 700), "FA": (60, 180)},
    "FLAIR": {"TR": (4000, 20000), "TE": (50, 600), "TI": (1200, 3500), "FA": (60, 180)},
    "PDw": {"TR": (1000, 15000), "TE": (4, 50), "FA": (60, 180)},
}

#: short key → (Metadata field, unit of the short key)
_SHORT: dict[str, tuple[str, str]] = {
    "TR": ("repetition_time", "ms"), "TE": ("echo_time", "ms"),
    "TI": ("inversion_time", "ms"), "FA": ("flip_angle", "deg"),
}
#: Metadata fields a typical protocol fills, with their short labels.
FILLED_FIELDS: dict[str, str] = {
    "repetition_time": "TR", "echo_time": "TE", "inversion_time": "TI", "flip_angle": "FA",
    "field_strength": "field", "sequence": "sequence",
}


class ImplausibleMetadataError(MetadataError):
    """Metadata values that are physically possible but implausible for the stated contrast."""


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower().replace("1.5", "15"))


def protocol_names() -> tuple[str, ...]:
    """Names accepted by :func:`get_protocol` (and ``--protocol``)."""
    return tuple(PROTOCOLS)


def get_protocol(name: str | TypicalProtocol) -> TypicalProtocol:
    """A protocol by name, case- and punctuation-insensitive (``3t-t2w-tse``, ``1.5T FLAIR``).

    A name without the sequence (``3T-T2w``, ``1.5T-T1w``) gives that contrast's default.
    """
    if isinstance(name, TypicalProtocol):
        return name
    wanted = _key(str(name))
    for p in PROTOCOLS.values():
        if _key(p.name) == wanted:
            return p
    for p in PROTOCOLS.values():  # the first (default) protocol of a contrast + field
        if _key(f"{p.field_strength:g}T-{p.contrast}") == wanted:
            return p
    raise MetadataError(
        f"unknown protocol {name!r}: use one of {', '.join(PROTOCOLS)}"
    )


def _table_field(field: float | None) -> float:
    """The table's field strength nearest to ``field`` (1.5 or 3 T)."""
    if field is None:
        return DEFAULT_FIELD
    return 1.5 if field < 2.25 else 3.0


def typical_protocol(contrast: str, field_strength: float | None = None,
                     sequence: str | None = None) -> TypicalProtocol:
    """The typical protocol of a contrast at the nearest tabulated field (default 3 T).

    ``sequence`` picks among the contrast's families (``SE`` for a spin-echo T1w); an unknown
    family for that contrast falls back to the default.
    """
    contrast = Metadata.from_dict({"contrast": contrast}).contrast.value
    field = _table_field(field_strength)
    cands = [p for p in PROTOCOLS.values()
             if p.contrast == contrast and p.field_strength == field]
    if sequence is not None:
        seq = getattr(sequence, "value", sequence)
        for p in cands:
            if p.sequence == seq:
                return p
    return cands[0]


@dataclass(frozen=True)
class Filled:
    """What :func:`fill_missing` did.

    Attributes:
        metadata: the metadata with missing protocol fields filled.
        assumed: field name → assumed value (stored units), empty if nothing was missing.
        protocol: the table protocol used (``None`` when nothing was assumed).
    """

    metadata: Metadata
    assumed: dict[str, Any]
    protocol: TypicalProtocol | None

    def message(self) -> str | None:
        """One line for the terminal, or ``None`` if nothing was assumed.

        ``TR/TE not given: assuming a typical 3 T T2w TSE, TR 5000 ms, TE 100 ms; pass --meta
        to override``
        """
        if not self.assumed or self.protocol is None:
            return None
        if set(self.assumed) == {"field_strength"}:
            return (f"field strength not given: assuming {self.assumed['field_strength']:g} T; "
                    "pass --meta to override")
        labels = [FILLED_FIELDS[f] for f in FILLED_FIELDS if f in self.assumed]
        values = []
        for name, label in (("repetition_time", "TR"), ("echo_time", "TE"),
                            ("inversion_time", "TI")):
            if name in self.assumed:
                values.append(f"{label} {self.assumed[name] * 1000:g} ms")
        if "flip_angle" in self.assumed:
            values.append(f"FA {self.assumed['flip_angle']:g} deg")
        what = ", ".join([f"a typical {self.protocol.description}", *values])
        return (f"{'/'.join(labels)} not given: assuming {what}; "
                "pass --meta or --protocol to override")

    def provenance(self) -> dict[str, Any]:
        """The provenance entry: which protocol, which fields, and the values assumed."""
        return {
            "protocol": None if self.protocol is None else self.protocol.name,
            "source": None if self.protocol is None else self.protocol.source,
            "fields": {k: (v.value if hasattr(v, "value") else v)
                       for k, v in self.assumed.items()},
        }


def _same_order(a: float | None, b: float | None, factor: float = 3.0) -> bool:
    """``a`` and ``b`` within ``factor`` of each other (False if either is missing)."""
    return a is not None and b is not None and a > 0 and b > 0 and max(a, b) / min(a, b) <= factor


def fill_missing(meta: Metadata, protocol: str | TypicalProtocol | None = None, *,
                 fallback_field: float | None = None) -> Filled:
    """Fill the missing TR / TE / TI / FA / field strength / sequence of ``meta`` from a protocol.

    Args:
        meta: target metadata; fields it has are never changed.
        protocol: a protocol name (see :func:`protocol_names`); by default the typical protocol
            of ``meta.contrast`` at ``meta.field_strength``, else ``fallback_field`` (e.g. the
            source's field strength: same scanner), else :data:`DEFAULT_FIELD`.
        fallback_field: field strength used to pick the protocol when ``meta`` has none.

    Raises:
        MetadataError: ``protocol`` is unknown or for another contrast.
    """
    only_field = False  # no typical protocol of the family: assume only the field strength
    if protocol is not None:
        proto = get_protocol(protocol)
        wanted = meta.contrast.value
        if proto.contrast != wanted:
            names = ", ".join(p.name for p in PROTOCOLS.values() if p.contrast == wanted)
            raise MetadataError(
                f"protocol {proto.name} is a {proto.contrast} protocol but {wanted} was "
                f"requested: pick a {wanted} protocol ({names})"
            )
    else:
        field = meta.field_strength if meta.field_strength is not None else fallback_field
        proto = typical_protocol(meta.contrast.value, field, meta.sequence)
        if meta.sequence is None and meta.repetition_time is not None:
            # no family given: take the typical protocol whose TR fits the given one (a T1w
            # with TR 600 ms is a spin echo); none fits (TR 10 ms: a GRE) → no family
            fits = [p for p in PROTOCOLS.values()
                    if p.contrast == proto.contrast and p.field_strength == proto.field_strength
                    and _same_order(p.values().get("repetition_time"), meta.repetition_time)]
            proto = fits[0] if fits else proto
            only_field = not fits
        # a family given that the table lacks (e.g. a GRE T1w)
        only_field = only_field or (meta.sequence is not None
                                    and meta.sequence.value != proto.sequence)
    assumed = {k: v for k, v in proto.values().items() if getattr(meta, k) is None}
    if only_field:
        assumed = {k: v for k, v in assumed.items() if k == "field_strength"}
    if not assumed:
        return Filled(meta, {}, None)
    return Filled(meta.with_updates(**assumed), assumed, proto)


# --------------------------------------------------------------------------- plausibility
def _fmt(v: float) -> str:
    return f"{round(v, 6):g}"


def plausibility_problems(meta: Metadata) -> list[str]:
    """One message per TR / TE / TI / FA value implausible for ``meta.contrast`` (empty if fine).

    Each message names the value and the expected range, and the likely unit slip where one
    lands in range (ms typed as s, s typed as ms, radians for degrees), or the contrasts the
    values would fit.
    """
    contrast = meta.contrast.value
    ranges = PLAUSIBLE.get(contrast, {})
    problems = []
    for short, (name, unit) in _SHORT.items():
        value = getattr(meta, name)
        if value is None or short not in ranges:
            continue
        v = value * 1000.0 if unit == "ms" else value
        lo, hi = ranges[short]
        if lo <= v <= hi:
            continue
        msg = (f"{short}={_fmt(v)} {unit} is implausible for {contrast} "
               f"(typical {lo:g}-{hi:g} {unit})")
        hint = _unit_hint(short, v, unit, lo, hi)
        if hint is None:
            others = [c for c in CONTRASTS if c != contrast and _fits(meta, c)]
            hint = f"is the contrast right ({' or '.join(others)}?)" if others else None
        problems.append(f"{msg}; {hint}" if hint else msg)
    return problems


def _unit_hint(short: str, v: float, unit: str, lo: float, hi: float) -> str | None:
    if unit == "deg":
        rad = math.degrees(v)
        return (f"did you mean {_fmt(round(rad, 1))} deg (FA in degrees, not radians)?"
                if lo <= rad <= hi else None)
    if lo <= v * 1000 <= hi:
        return f"did you mean {_fmt(v * 1000)} ms ({short}={_fmt(v * 1000)} or {short}={_fmt(v)}s)?"
    if lo <= v / 1000 <= hi:
        return f"did you mean {_fmt(v / 1000)} ms ({short}={_fmt(v / 1000)})?"
    return None


def _fits(meta: Metadata, contrast: str) -> bool:
    ranges = PLAUSIBLE[contrast]
    for short, (name, unit) in _SHORT.items():
        value = getattr(meta, name)
        if value is None:
            continue
        v = value * 1000.0 if unit == "ms" else value
        if short in ranges and not ranges[short][0] <= v <= ranges[short][1]:
            return False
    return True


def check_plausible(meta: Metadata, what: str = "target") -> None:
    """Raise :class:`ImplausibleMetadataError` if a TR / TE / TI / FA value is implausible.

    The one-line message shows the likely unit slip and how to insist
    (``--force-metadata`` / ``force_metadata=True``).
    """
    problems = plausibility_problems(meta)
    if problems:
        raise ImplausibleMetadataError(
            f"{what} metadata: {'; '.join(problems)} (pass --force-metadata, "
            "force_metadata=True in Python, if the protocol really is exotic)"
        )


# --------------------------------------------------------------------------- field status
#: Fields reported by :func:`field_status`, with their short labels.
STATUS_FIELDS: dict[str, str] = {
    "repetition_time": "TR", "echo_time": "TE", "inversion_time": "TI", "flip_angle": "FA",
    "field_strength": "field", "sequence": "seq", "manufacturer": "vendor", "age": "age",
    "sex": "sex",
}


def field_status(meta: Metadata, assumed: dict[str, Any] | None = None) -> dict[str, str]:
    """``label → 'known' | 'assumed' | 'missing' | 'n/a'`` for the fields the model reads.

    ``assumed`` are the fields :func:`fill_missing` filled (given: those; ``None``: the fields
    it *would* fill if ``meta`` were a synthesis target). ``missing`` fields reach the model as
    its null token; ``n/a`` is a TI for a contrast whose typical protocol has no inversion.
    """
    if assumed is None:
        filled = fill_missing(meta)
        assumed, proto = filled.assumed, filled.protocol
    else:
        proto = None
    has_ti = any(p.ti_ms is not None for p in PROTOCOLS.values()
                 if p.contrast == meta.contrast.value)
    out: dict[str, str] = {}
    for name, label in STATUS_FIELDS.items():
        if name in assumed:
            out[label] = "assumed"
        elif getattr(meta, name) is not None:
            out[label] = "known"
        elif name == "inversion_time" and (not has_ti or (proto is not None
                                                          and proto.ti_ms is None)):
            out[label] = "n/a"
        else:
            out[label] = "missing"
    return out
