"""MII KDS Modul Bildgebung (2027.0.0-ballot) profiles and extensions filled from the DICOM header (pure).

Element-by-element table: ``docs/mii-bildgebung.md``. Every function takes DICOM JSON (PS3.18 F.2) and an
``issue(key, value, rule)`` callback; bad values are skipped and reported, never raised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kaapana_fhir.core.codes import UCUM
from kaapana_fhir.core.dicom import codes as dc
from kaapana_fhir.core.dicom import values as dv

Issue = Callable[[str, Any, str], None]

BASE = "https://www.medizininformatik-initiative.de/fhir/ext/modul-bildgebung"
SD = f"{BASE}/StructureDefinition/"
CS = f"{BASE}/CodeSystem/"
PROFILE_IMAGING_STUDY = SD + "mii-pr-bildgebung-bildgebungsstudie"
PROFILE_DEVICE = SD + "mii-pr-bildgebung-geraet"
PROFILE_OBSERVATION = SD + "mii-pr-bildgebung-radiologische-beobachtung"
PROFILE_MEASUREMENT = SD + "mii-pr-bildgebung-radiologische-messung"
EXT_REASON = SD + "mii-ex-bildgebung-bildgebungsgrund"
EXT_SLICE_THICKNESS = SD + "mii-ex-bildgebung-serie-schichtdicke"
EXT_CONTRAST = SD + "mii-ex-bildgebung-kontrastmittel"
EXT_INSTANCE = SD + "mii-ex-bildgebung-instanz-details"
EXT_SERIES_UID = SD + "mii-ex-bildgebung-series-uid"
EXT_SOP_UID = SD + "mii-ex-bildgebung-sop-instanz-uid"
EXT_CT = SD + "mii-ex-bildgebung-modalitaet-ct"
EXT_XR = SD + "mii-ex-bildgebung-modalitaet-mg-cr-dx"
EXT_MR = SD + "mii-ex-bildgebung-modalitaet-mr"
EXT_PT = SD + "mii-ex-bildgebung-modalitaet-pt"
EXT_NM = SD + "mii-ex-bildgebung-modalitaet-nm"
EXT_US = SD + "mii-ex-bildgebung-modalitaet-us"
CS_IMAGE_TYPE = CS + "mii-cs-bildgebung-instance-image-type"
CS_SCANNING_SEQUENCE = CS + "mii-cs-bildgebung-scanning-sequence"
CS_SEQUENCE_VARIANT = CS + "mii-cs-bildgebung-scanning-sequence-variant"
CS_SERIES_TYPE = CS + "mii-cs-bildgebung-series-type"
CS_TRANSDUCER_TYPE = CS + "mii-cs-bildgebung-transducer-type"

SCANNING_SEQUENCE = frozenset({"SE", "IR", "GR", "EP", "RM"})
SEQUENCE_VARIANT = frozenset({"SK", "MTC", "SS", "TRSS", "SP", "MP", "OSP", "NONE"})
SERIES_TYPE = frozenset({"STATIC", "DYNAMIC", "GATED", "WHOLEBODY", "IMAGE", "REPROJECTION"})
TRANSDUCER_TYPE = frozenset({
    "SECTOR_PHASED", "SECTOR_MECH", "SECTOR_ANNULAR", "LINEAR", "CURVED_LINEAR", "SINGLE_CRYSTAL",
    "SPLIT_XTAL_CWD", "IV_PHASED", "IV_ROT_XTAL", "IV_ROT_MIRROR", "ENDOCAV_PA", "ENDOCAV_MECH", "ENDOCAV_CLA",
    "ENDOCAV_AA", "ENDOCAV_LINEAR", "VECTOR_PHASED"})
IMAGE_TYPE = frozenset({
    "ORIGINAL", "DERIVED", "PRIMARY", "SECONDARY", "AXIAL", "LOCALIZER", "DENSITYMAP", "DIFFUSIONMAP",
    "IMAGEADDITION", "MODULUSSUBTRACT", "MPR", "OTHER", "PHASEMAP", "PHASESUBTRACT", "PROJECTIONIMAGE", "T1MAP",
    "T2MAP", "VELOCITYMAP", "STATIC", "DYNAMIC", "GATED", "WHOLEBODY", "TOMO", "GATEDTOMO", "RECONTOMO",
    "RECONGATEDTOMO", "ABDOMINAL", "BREAST", "CHEST", "ENDOCAVITARY", "ENDORECTAL", "ENDOVAGINAL", "EPICARDIAL",
    "FETAL_HEART", "GYNECOLOGY", "INTRACARDIAC", "INTRAOPERATIVE", "INTRAVASCULAR", "MUSCULOSKELETAL",
    "NEONATAL_HEAD", "OBSTETRICAL", "OPHTHALMIC", "PEDIATRIC", "PELVIC", "RETROPERITONEAL", "SCROTAL",
    "SMALL_PARTS", "TEE", "THYROID", "TRANSCRANIAL", "TTE", "US_BIOPSY", "VASCULAR", "EMISSION", "TRANSMISSION"})
#: PET/NM Units (0054,1001) → UCUM (DICOM CID 84).
PET_UNITS = {"BQML": ("Bq/mL", "Becquerels/milliliter"), "CNTS": ("{counts}", "Counts"),
             "GML": ("g/mL", "Grams/milliliter"), "PROPCNTS": ("{propcounts}", "Proportional to counts"),
             "CM2": ("cm2", "Centimeter**2"), "PCNT": ("%", "Percent"), "MGMINML": ("mg/min/mL", "mg/min/mL"),
             "UMOLMINML": ("umol/min/mL", "umol/min/mL"), "MLMING": ("mL/min/g", "mL/min/g"),
             "MLG": ("mL/g", "mL/g"), "1CM": ("/cm", "1/cm")}

#: Series-level tags the MII extensions read (QIDO ``includefield`` asks for them).
SERIES_TAGS = (
    "00180050", "00180010", "00189345", "00180060", "00181150", "00181151", "00181152", "00181210", "00185101",
    "00180087", "00180020", "00180021", "00180081", "00180080", "00180082", "00181314", "00540016", "00541001",
    "00541000", "00186031", "00186030", "00186028", "00280014",
)
#: The tags without which a modality's MII series extensions cannot be filled (a PACS that does not return
#: them at series level makes the flow read one instance's WADO-RS metadata).
NEEDED_BY_MODALITY: dict[str, tuple[str, ...]] = {
    "CT": ("00180060",), "MR": ("00180087",), "PT": ("00540016",), "NM": ("00540016",), "US": ("00186031",),
    "MG": ("00180060",), "CR": ("00180060",), "DX": ("00180060",),
}


#: ``Quantity.unit`` texts the MII extensions fix (``patternString``) per UCUM code.
UNIT_NAMES = {"mGy": "milligray", "kV": "kilovolt", "ms": "milliseconds", "mA.s": "milliampere second",
              "mA": "milliampere", "T": "tesla", "deg": "plane angle degree", "s": "Seconds", "MBq": "Megabecquerel",
              "Bq": "Becquerel", "kHz": "kilohertz", "Hz": "hertz", "mm": "millimeter"}


def _quantity(value: float, code: str) -> dict[str, Any]:
    v: float | int = int(value) if float(value).is_integer() and abs(value) < 1e15 else value
    return {"value": v, "unit": UNIT_NAMES.get(code, code), "system": UCUM, "code": code}


def _num(attrs: dict[str, Any], key: str, issue: Issue) -> float | None:
    raw = dv.first(attrs, key)
    if raw is None:
        return None
    val, problem = dv.parse_ds(raw)
    if problem:
        issue(key, raw, problem)
    return val


def _q(attrs: dict[str, Any], key: str, name: str, code: str, issue: Issue, factor: float = 1.0
       ) -> dict[str, Any] | None:
    val = _num(attrs, key, issue)
    if val is None:
        return None
    return {"url": name, "valueQuantity": _quantity(round(val * factor, 9), code)}


def _codes(attrs: dict[str, Any], key: str, allowed: frozenset[str], system: str, issue: Issue) -> list[dict[str, Any]]:
    out = []
    for v in dv.strings(attrs, key):
        code = v.strip().upper()
        if code in allowed:
            out.append({"system": system, "code": code})
        else:
            issue(key, v, f"value not in the MII code system {system.rsplit('/', 1)[-1]}; left out")
    return out


def _complex(url: str, parts: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    sub = [p for p in parts if p]
    return {"url": url, "extension": sub} if sub else None


def _coded_or_text(item: dict[str, Any], seq_key: str, text_key: str | None, issue: Issue) -> dict[str, Any] | None:
    for code_item in dc.sequence_items(item, seq_key):
        cc, problem = dc.coded_concept(code_item)
        if problem:
            issue(seq_key, dv.first_str(code_item, "00080100"), problem)
        if cc:
            return cc
    text = dv.first_str(item, text_key) if text_key else None
    return {"text": text} if text else None


def _ct(a: dict[str, Any], issue: Issue) -> dict[str, Any] | None:
    kernel = dv.strings(a, "00181210")
    return _complex(EXT_CT, [
        _q(a, "00189345", "CTDIvol", "mGy", issue), _q(a, "00180060", "KVP", "kV", issue),
        _q(a, "00181150", "exposureTime", "ms", issue), _q(a, "00181152", "exposure", "mA.s", issue),
        _q(a, "00181151", "xRayTubeCurrent", "mA", issue),
        {"url": "convolutionalKernel", "valueString": "\\".join(kernel)} if kernel else None])


def _xr(a: dict[str, Any], issue: Issue) -> dict[str, Any] | None:
    view = dv.first_str(a, "00185101")
    return _complex(EXT_XR, [
        _q(a, "00180060", "KVP", "kV", issue), _q(a, "00181150", "exposureTime", "ms", issue),
        _q(a, "00181152", "exposure", "mA.s", issue), _q(a, "00181151", "xRayTubeCurrent", "mA", issue),
        {"url": "viewPosition", "valueCodeableConcept": {"text": view}} if view else None])


def _mr(a: dict[str, Any], issue: Issue) -> dict[str, Any] | None:
    parts: list[dict[str, Any] | None] = [_q(a, "00180087", "magneticFieldStrength", "T", issue)]
    parts += [{"url": "scanningSequence", "valueCodeableConcept": {"coding": [c]}}
              for c in _codes(a, "00180020", SCANNING_SEQUENCE, CS_SCANNING_SEQUENCE, issue)]
    parts += [{"url": "scanningSequenceVariant", "valueCodeableConcept": {"coding": [c]}}
              for c in _codes(a, "00180021", SEQUENCE_VARIANT, CS_SEQUENCE_VARIANT, issue)]
    parts += [_q(a, "00180081", "echoTime", "ms", issue), _q(a, "00180080", "repetitionTime", "ms", issue),
              _q(a, "00180082", "inversionTime", "ms", issue), _q(a, "00181314", "flipAngle", "deg", issue)]
    return _complex(EXT_MR, parts)


def _nuclear(a: dict[str, Any], issue: Issue, *, pet: bool) -> dict[str, Any] | None:
    parts: list[dict[str, Any] | None] = []
    for item in dc.sequence_items(a, "00540016")[:1]:
        pharm = _coded_or_text(item, "00540304", "00180031", issue)
        if pharm:
            parts.append({"url": "radiopharmaceutical", "valueCodeableConcept": pharm})
        nuclide = _coded_or_text(item, "00540300", None, issue)
        if nuclide:
            parts.append({"url": "radionuclide", "valueCodeableConcept": nuclide})
    units = dv.first_str(a, "00541001")
    if units:
        known = PET_UNITS.get(units.strip().upper())
        cc: dict[str, Any] = ({"coding": [{"system": UCUM, "code": known[0], "display": known[1]}]} if known
                              else {"text": units})
        parts.append({"url": "units", "valueCodeableConcept": cc})
    for item in dc.sequence_items(a, "00540016")[:1]:
        parts.append(_q(item, "00181074", "radionuclideTotalDose", "Bq" if pet else "MBq", issue,
                        1.0 if pet else 1e-6))
        parts.append(_q(item, "00181075", "radionuclideHalfLife", "s", issue))
    if pet:
        types = _codes(a, "00541000", SERIES_TYPE, CS_SERIES_TYPE, issue)
        if types:
            parts.append({"url": "seriesType", "valueCodeableConcept": {"coding": types}})
    return _complex(EXT_PT if pet else EXT_NM, parts)


def _us(a: dict[str, Any], issue: Issue) -> dict[str, Any] | None:
    parts: list[dict[str, Any] | None] = []
    types = _codes(a, "00186031", TRANSDUCER_TYPE, CS_TRANSDUCER_TYPE, issue)
    if types:
        parts.append({"url": "transducerType", "valueCodeableConcept": {"coding": types[:1]}})
    parts += [_q(a, "00186030", "transducerFrequency", "kHz", issue),
              _q(a, "00186028", "pulseRepetitionFrequency", "Hz", issue)]
    color = dv.first(a, "00280014")
    if color is not None:
        n, problem = dv.parse_is(color)
        if problem or n not in (0, 1):
            issue("00280014", color, problem or "UltrasoundColorDataPresent must be 0 or 1; left out")
        else:
            parts.append({"url": "ultrasoundColor", "valueBoolean": n == 1})
    return _complex(EXT_US, parts)


_BY_MODALITY: dict[str, Callable[[dict[str, Any], Issue], dict[str, Any] | None]] = {
    "CT": _ct, "MR": _mr, "US": _us, "MG": _xr, "CR": _xr, "DX": _xr,
    "PT": lambda a, i: _nuclear(a, i, pet=True), "NM": lambda a, i: _nuclear(a, i, pet=False),
}


def series_extensions(attrs: dict[str, Any], modality: str | None, issue: Issue) -> list[dict[str, Any]]:
    """``ImagingStudy.series.extension`` per the MII profile: the modality extension, contrast, slice thickness."""
    out: list[dict[str, Any]] = []
    fn = _BY_MODALITY.get((modality or "").upper())
    if fn:
        ext = fn(attrs, issue)
        if ext:
            out.append(ext)
    agent = dv.first_str(attrs, "00180010")
    if agent:
        out.append({"url": EXT_CONTRAST, "extension": [{"url": "contrastBolus", "valueBoolean": True}]})
    thick = _num(attrs, "00180050", issue)
    if thick is not None:
        if thick > 0:
            out.append({"url": EXT_SLICE_THICKNESS, "valueQuantity": _quantity(thick, "mm")})
        else:
            issue("00180050", thick, "SliceThickness must be positive; left out")
    return out


def instance_extension(inst: dict[str, Any], issue: Issue) -> dict[str, Any] | None:
    """``series.instance.extension`` InstanceDetails (pixel spacing, slice thickness, image type, burned-in)."""
    parts: list[dict[str, Any] | None] = []
    spacing = dv.values(inst, "00280030")
    if len(spacing) == 2:
        vals = [dv.parse_ds(v)[0] for v in spacing]
        if all(v is not None and v > 0 for v in vals):
            # PixelSpacing is (row spacing = Y, column spacing = X)
            parts.append({"url": "pixelSpacingX", "valueQuantity": _quantity(vals[1], "mm")})  # type: ignore[arg-type]
            parts.append({"url": "pixelSpacingY", "valueQuantity": _quantity(vals[0], "mm")})  # type: ignore[arg-type]
        else:
            issue("00280030", "\\".join(map(str, spacing)), "PixelSpacing must be two positive DS values; left out")
    thick = _num(inst, "00180050", issue)
    if thick is not None and thick > 0:
        parts.append({"url": "sliceThickness", "valueQuantity": _quantity(thick, "mm")})
    types = [{"system": CS_IMAGE_TYPE, "code": t.upper()} for t in dv.strings(inst, "00080008")
             if t.upper() in IMAGE_TYPE]
    if types:
        parts.append({"url": "imageType", "valueCodeableConcept": {"coding": types}})
    burned = dv.first_str(inst, "00280301")
    if burned and burned.upper() in ("YES", "NO"):
        parts.append({"url": "burnedInAnnotation", "valueBoolean": burned.upper() == "YES"})
    return _complex(EXT_INSTANCE, parts)


def reason_extension(reason: str) -> dict[str, Any]:
    return {"url": EXT_REASON, "valueString": reason}


def add_profile(resource: dict[str, Any], profile: str) -> dict[str, Any]:
    meta = resource.setdefault("meta", {})
    profiles = meta.setdefault("profile", [])
    if profile not in profiles:
        profiles.append(profile)
    return resource
