"""DICOM codes → FHIR codings: modality, body part (PS3.16 Annex L), laterality (CID 244), coded sequences.

Tables live in ``kaapana_fhir/data/dicom/*.csv`` (see its README). Lookups never raise on header values:
they return ``(coding | None, problem | None)``.
"""

from __future__ import annotations

import csv
import re
from functools import lru_cache
from importlib import resources
from typing import Any

from kaapana_fhir.core.codes import CS_DCM, SNOMED
from kaapana_fhir.core.dicom.values import first_str

#: FHIR system of sopClass codings (R4 ImagingStudy.series.instance.sopClass).
SYSTEM_URN_IETF = "urn:ietf:rfc:3986"
#: Private coding schemes (designators starting with 99) are written under this URN prefix.
PRIVATE_SCHEME_PREFIX = "urn:kaapana-fhir:CodingScheme:"

_NORM_RE = re.compile(r"[\s_\-]+")
_MODALITY_RE = re.compile(r"^[A-Z0-9_]{1,16}$")


def _csv_rows(name: str) -> list[dict[str, str]]:
    text = resources.files("kaapana_fhir").joinpath("data", "dicom", name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


@lru_cache(maxsize=1)
def body_part_table() -> dict[str, tuple[str, str]]:
    """Annex L BodyPartExamined term → (SNOMED code, display)."""
    return {r["body_part_examined"]: (r["snomed_code"], r["display"]) for r in _csv_rows("body_part_snomed.csv")}


@lru_cache(maxsize=1)
def body_part_aliases() -> dict[str, str]:
    return {r["alias"]: r["body_part_examined"] for r in _csv_rows("body_part_aliases.csv")}


@lru_cache(maxsize=1)
def laterality_table() -> dict[str, tuple[str, str]]:
    return {r["dicom_code"]: (r["snomed_code"], r["display"]) for r in _csv_rows("laterality_snomed.csv")}


@lru_cache(maxsize=1)
def coding_schemes() -> dict[str, str]:
    return {r["designator"].upper(): r["fhir_system"] for r in _csv_rows("coding_schemes.csv")}


def normalize_body_part(raw: str) -> str:
    """Upper case without spaces, ``_`` or ``-`` (``"Chest "`` → ``"CHEST"``, ``"whole body"`` → ``"WHOLEBODY"``)."""
    return _NORM_RE.sub("", raw.strip().upper())


def body_part_coding(raw: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """BodyPartExamined (0018,0015) → SNOMED ``Coding``; aliases (THORAX → CHEST) first normalised.

    Unknown text → ``Coding(display=<raw>)`` without a fake code or system, plus a problem text.
    """
    if raw is None or not str(raw).strip():
        return None, None
    key = normalize_body_part(str(raw))
    key = body_part_aliases().get(key, key)
    hit = body_part_table().get(key)
    if hit:
        return {"system": SNOMED, "code": hit[0], "display": hit[1]}, None
    return ({"display": str(raw).strip()},
            "BodyPartExamined is not a PS3.16 Annex L term nor a known alias; kept as display text only")


def laterality_coding(raw: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """Laterality (0020,0060) / ImageLaterality (0020,0062): R/L/B → SNOMED (CID 244); U/empty → omitted."""
    if raw is None:
        return None, None
    s = str(raw).strip().upper()
    if not s or s == "U":
        return None, None
    hit = laterality_table().get(s)
    if hit:
        return {"system": SNOMED, "code": hit[0], "display": hit[1]}, None
    return None, "Laterality must be R, L, B or U (PS3.3 C.7.3.1); omitted"


def modality_coding(raw: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """Modality (0008,0060) → DCM ``Coding`` (upper-cased, stripped)."""
    if raw is None:
        return None, None
    s = str(raw).strip().upper()
    if not s:
        return None, None
    if not _MODALITY_RE.match(s):
        return None, "Modality must be a CS defined term (A-Z, 0-9, _; <=16 chars); omitted"
    return {"system": CS_DCM, "code": s}, None


def designator_system(designator: str | None) -> str | None:
    """CodingSchemeDesignator (0008,0102) → FHIR system URI (fhir-mappings.md 1.4); unknown → None."""
    if not designator:
        return None
    d = designator.strip()
    known = coding_schemes().get(d.upper())
    if known:
        return known
    if d.startswith("99") and re.fullmatch(r"[A-Za-z0-9_\-.]+", d):
        return PRIVATE_SCHEME_PREFIX + d
    return None


def _srt_to_sct(code: str) -> str | None:
    """Legacy SNOMED-RT (SRT) code → SNOMED CT id via pydicom's PS3.16 mapping table, if known."""
    try:
        from pydicom.sr._snomed_dict import mapping  # PS3.16 SNOMED mapping shipped with pydicom
    except ImportError:  # pragma: no cover - pydicom always ships it
        return None
    return mapping.get("SRT", {}).get(code)


def coded_concept(item: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """A Code Sequence item (CodeValue (0008,0100), CodingSchemeDesignator (0008,0102), CodeMeaning (0008,0104))
    → FHIR ``CodeableConcept``. Unknown designators keep only ``text`` (never the designator as system)."""
    code = first_str(item, "00080100") or first_str(item, "00080119") or first_str(item, "00080120")
    scheme = first_str(item, "00080102")
    meaning = first_str(item, "00080104")
    if not code and not meaning:
        return None, None
    problem = None
    if scheme and scheme.upper() == "SRT" and code:
        sct = _srt_to_sct(code)
        if sct:
            scheme, code = "SCT", sct
    system = designator_system(scheme)
    cc: dict[str, Any] = {}
    if code and system:
        coding: dict[str, Any] = {"system": system, "code": code}
        if meaning:
            coding["display"] = meaning
        cc["coding"] = [coding]
    elif code:
        problem = f"CodingSchemeDesignator {scheme!r} has no known FHIR system; kept as text only"
    if meaning or not cc:
        cc["text"] = meaning or code
    return cc, problem


def sequence_items(ds: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """Items of a sequence element (e.g. AnatomicRegionSequence (0008,2218)); [] if absent."""
    el = ds.get(key)
    if not isinstance(el, dict):
        return []
    return [v for v in el.get("Value", []) or [] if isinstance(v, dict)]
