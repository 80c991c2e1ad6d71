"""CT radiation dose SR (DICOM TID 10011, X-Ray Radiation Dose SR) → FHIR R4 Observations (pure).

One summary Observation per dose report (code DCM 113701 "X-Ray Radiation Dose Report", component DCM 113813
"CT Dose Length Product Total") with ``hasMember`` one Observation per irradiation event (code DCM 113852
"Irradiation Event", identifier = Irradiation Event UID (DCM 113769), components DCM 113830 "Mean CTDIvol" and
DCM 113838 "DLP"), all ``partOf`` the ImagingStudy, as Microsoft's DICOM Cast does. A value missing from the report
(e.g. no CTDIvol) becomes a component with ``dataAbsentReason`` and an issue naming the concept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from kaapana_fhir.core.codes import CS_DCM, DATA_ABSENT_REASON, OBSERVATION_CATEGORY, SYSTEM_DICOM_UID, UCUM
from kaapana_fhir.core.dicom import values as dv
from kaapana_fhir.core.ids import stable_id, uid_urn

Issue = Callable[[str, Any, str], None]

DOSE_SR_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR Storage
    "1.2.840.10008.5.1.4.1.1.88.68",  # Radiopharmaceutical Radiation Dose SR (not mapped: no TID 10011 content)
})
XRAY_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
REPORT = ("113701", "X-Ray Radiation Dose Report")
ACCUMULATED = ("113811", "CT Accumulated Dose Data")
DLP_TOTAL = ("113813", "CT Dose Length Product Total")
ACQUISITION = ("113819", "CT Acquisition")
CT_DOSE = ("113829", "CT Dose")
MEAN_CTDIVOL = ("113830", "Mean CTDIvol")
DLP = ("113838", "DLP")
EVENT_UID = ("113769", "Irradiation Event UID")
EVENT = ("113852", "Irradiation Event")
PROTOCOL = ("125203", "Acquisition Protocol")
TARGET_REGION = ("123014", "Target Region")


def _concept(item: dict[str, Any]) -> tuple[str | None, str | None]:
    for c in _items(item, "0040A043"):
        return dv.first_str(c, "00080100"), dv.first_str(c, "00080102")
    return None, None


def _items(ds: dict[str, Any], key: str) -> list[dict[str, Any]]:
    el = ds.get(key)
    if not isinstance(el, dict):
        return []
    return [v for v in el.get("Value", []) or [] if isinstance(v, dict)]


def _children(item: dict[str, Any]) -> list[dict[str, Any]]:
    return _items(item, "0040A730")


def _walk(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for child in _children(item):
        yield child
        yield from _walk(child)


def _find(item: dict[str, Any], code: str, *, deep: bool = False) -> list[dict[str, Any]]:
    pool = _walk(item) if deep else iter(_children(item))
    return [c for c in pool if _concept(c) == (code, "DCM")]


def _num(item: dict[str, Any], issue: Issue, what: str) -> tuple[float | None, str | None]:
    for mv in _items(item, "0040A300"):
        val, problem = dv.parse_ds(dv.first(mv, "0040A30A"))
        if problem:
            issue("0040A30A", dv.first(mv, "0040A30A"), f"{what}: {problem}")
        unit = None
        for u in _items(mv, "004008EA"):
            unit = dv.first_str(u, "00080100")
        return val, unit
    return None, None


def _quantity_component(parent: dict[str, Any], concept: tuple[str, str], unit: str, issue: Issue,
                        where: str) -> dict[str, Any]:
    comp: dict[str, Any] = {"code": {"coding": [{"system": CS_DCM, "code": concept[0], "display": concept[1]}]}}
    found = _find(parent, concept[0], deep=True)
    val, got_unit = _num(found[0], issue, concept[1]) if found else (None, None)
    if val is None:
        issue("0040A730", where, f"dose report has no {concept[1]} (DCM {concept[0]}); component marked "
                                 "dataAbsentReason=unknown")
        comp["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT_REASON, "code": "unknown"}]}
        return comp
    if got_unit and got_unit != unit:
        issue("004008EA", got_unit, f"{concept[1]}: unit {got_unit!r}, expected UCUM {unit!r}; kept with its unit")
        unit = got_unit
    comp["valueQuantity"] = {"value": val, "unit": unit, "system": UCUM, "code": unit}
    return comp


def is_dose_report(attrs: dict[str, Any]) -> bool:
    """True for an X-Ray Radiation Dose SR whose root concept is DCM 113701 (TID 10001/10011)."""
    if dv.first_str(attrs, "00080016") != XRAY_DOSE_SR:
        return False
    code, scheme = _concept(attrs)
    return code is None or (code, scheme) == (REPORT[0], "DCM")


def dose_observations(sr: dict[str, Any], *, patient_ref: str, study_ref: str, effective: str | None,
                      issue: Issue) -> list[dict[str, Any]]:
    """Observations of one X-Ray Radiation Dose SR instance (DICOM JSON with ContentSequence (0040,A730))."""
    sop = dv.first_str(sr, "00080018") or ""
    where = f"dose SR {sop}"
    events = []
    for n, acq in enumerate(_find(sr, ACQUISITION[0]), start=1):
        uid_items = _find(acq, EVENT_UID[0])
        event_uid = dv.first_str(uid_items[0], "0040A124") if uid_items else None
        ev_id = stable_id("Observation", "dose-event", sop, event_uid or str(n))
        ev: dict[str, Any] = {
            "resourceType": "Observation", "id": ev_id, "status": "final",
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging"}]}],
            "code": {"coding": [{"system": CS_DCM, "code": EVENT[0], "display": EVENT[1]}]},
            "subject": {"reference": patient_ref}, "partOf": [{"reference": study_ref}],
        }
        if event_uid:
            ev["identifier"] = [{"system": SYSTEM_DICOM_UID, "value": uid_urn(event_uid)}]
        else:
            issue("0040A124", where, f"CT Acquisition {n} has no Irradiation Event UID (DCM 113769)")
        if effective:
            ev["effectiveDateTime"] = effective
        protocol = _find(acq, PROTOCOL[0])
        text = dv.first_str(protocol[0], "0040A160") if protocol else None
        if text:
            ev["note"] = [{"text": f"Acquisition protocol: {text}"}]
        ev["component"] = [
            _quantity_component(acq, MEAN_CTDIVOL, "mGy", issue, f"{where} event {event_uid or n}"),
            _quantity_component(acq, DLP, "mGy.cm", issue, f"{where} event {event_uid or n}"),
        ]
        events.append(ev)
    summary: dict[str, Any] = {
        "resourceType": "Observation", "id": stable_id("Observation", "dose-report", sop), "status": "final",
        "identifier": [{"system": SYSTEM_DICOM_UID, "value": uid_urn(sop)}] if sop else [],
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging"}]}],
        "code": {"coding": [{"system": CS_DCM, "code": REPORT[0], "display": REPORT[1]}]},
        "subject": {"reference": patient_ref}, "partOf": [{"reference": study_ref}],
    }
    if not summary["identifier"]:
        summary.pop("identifier")
    if effective:
        summary["effectiveDateTime"] = effective
    accumulated = _find(sr, ACCUMULATED[0])
    summary["component"] = [_quantity_component(accumulated[0] if accumulated else sr, DLP_TOTAL, "mGy.cm", issue,
                                                where)]
    if events:
        summary["hasMember"] = [{"reference": f"Observation/{e['id']}"} for e in events]
    else:
        issue("0040A730", where, "dose report has no CT Acquisition (DCM 113819) container; only the total is mapped")
    return [summary, *events]
