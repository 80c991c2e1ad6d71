"""DICOM JSON (QIDO-RS / WADO-RS metadata) → FHIR R4 Patient, ImagingStudy, Endpoint, Device.

Pure mapping (no Airflow, no network), following fhir-mappings.md §1 (MII KDS Bildgebung element choice):

* ``ImagingStudy.id = stable_id("ImagingStudy", StudyInstanceUID)``; ``identifier`` = ``urn:dicom:uid`` /
  ``urn:oid:<(0020,000D)>`` and the accession number (0008,0050) typed ``ACSN``;
* ``Patient.id = identifiers.patient_id(system, PatientID (0010,0020))`` with ``system`` from
  IssuerOfPatientID (0010,0021) via ``MappingOptions.issuer_systems``, else the configured system;
* ``started`` from DA/TM + TimezoneOffsetFromUTC (0008,0201), else the configured zone, else date only;
* ``series[].bodySite`` from AnatomicRegionSequence (0008,2218) first, then BodyPartExamined (0018,0015)
  via PS3.16 Annex L; ``laterality`` from (0020,0060) / (0020,0062) as SNOMED;
* ``Endpoint`` (``dicom-wado-rs``) for the PACS, ``Device`` from Manufacturer (0008,0070),
  ManufacturerModelName (0008,1090), DeviceSerialNumber (0018,1000).

Bad header values degrade one element and are recorded as issues ``{tag, value, rule, study, series}``;
only a missing StudyInstanceUID (0020,000D) or PatientID (0010,0020) fails the study (:class:`MappingError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kaapana_fhir.core.codes import ENDPOINT_CONNECTION_TYPE, SYSTEM_DICOM_UID, TAG_SOURCE, V2_0203
from kaapana_fhir.core.dicom import codes as dc
from kaapana_fhir.core.dicom import values as dv
from kaapana_fhir.core.ids import (
    DEFAULT_PATIENT_SYSTEM,
    normalize_uid,
    patient_id,
    stable_id,
    uid_urn,
)
from kaapana_fhir.exceptions import MappingError

SOURCE_TAG = {"system": TAG_SOURCE, "code": "dicom"}
GENDER = {"M": "male", "F": "female", "O": "other"}


@dataclass
class MappingOptions:
    """Settings of the DICOM mapping.

    patient_system: identifier system of PatientID (0010,0020) when no issuer mapping applies.
    issuer_systems: IssuerOfPatientID (0010,0021) value → identifier system URI.
    timezone: IANA zone for DA/TM without TimezoneOffsetFromUTC (0008,0201); None → date only.
    endpoint_address: WADO-RS base for ``Endpoint.address`` (None → no Endpoint).
    include_instances: write ``series[].instance[]`` (off by default: MB-size resources).
    include_device: write a Device per (manufacturer, model, serial) and ``series[].performer``.
    accession_system: ``identifier.system`` of the accession number (0008,0050).
    """

    patient_system: str = DEFAULT_PATIENT_SYSTEM
    issuer_systems: dict[str, str] = field(default_factory=dict)
    timezone: str | None = None
    endpoint_address: str | None = None
    include_instances: bool = False
    include_device: bool = True
    accession_system: str | None = None

    def __post_init__(self) -> None:
        if self.timezone:
            dv.zone(self.timezone)  # ConfigError on unknown zone names, before any mapping


@dataclass
class SeriesInput:
    """One series: its DICOM JSON attributes (QIDO series record, merged with one instance's WADO
    metadata when fetched) and optionally its instances' DICOM JSON."""

    attrs: dict[str, Any]
    instances: list[dict[str, Any]] = field(default_factory=list)
    instance_count: int | None = None
    source: str = ""


@dataclass
class StudyMapping:
    study_uid: str
    patient: dict[str, Any]
    imaging_study: dict[str, Any]
    endpoint: dict[str, Any] | None
    devices: list[dict[str, Any]]
    issues: list[dict[str, Any]]

    def resources(self) -> list[dict[str, Any]]:
        """Referenced resources first: Endpoint, Devices, Patient, ImagingStudy."""
        out = ([self.endpoint] if self.endpoint else []) + list(self.devices)
        return out + [self.patient, self.imaging_study]


class _Issues:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.study = ""

    def add(self, key: str, value: Any, rule: str, series: str = "") -> None:
        item = {"tag": dv.tag_label(key), "value": value if isinstance(value, (str, int, float)) or value is None
                else str(value), "rule": rule, "study": self.study}
        if series:
            item["series"] = series
        self.items.append(item)


def _meta() -> dict[str, Any]:
    return {"tag": [dict(SOURCE_TAG)]}


def endpoint_resource(address: str) -> dict[str, Any]:
    """The ``dicom-wado-rs`` Endpoint of a DICOMweb service (``address`` = WADO-RS base)."""
    addr = address.strip().rstrip("/")
    return {
        "resourceType": "Endpoint", "id": stable_id("Endpoint", addr), "meta": _meta(), "status": "active",
        "connectionType": {"system": ENDPOINT_CONNECTION_TYPE, "code": "dicom-wado-rs"},
        "name": "DICOMweb WADO-RS", "payloadType": [{"text": "DICOM WADO-RS"}],
        "payloadMimeType": ["application/dicom"], "address": addr,
    }


def device_resource(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """Device from Manufacturer (0008,0070), ManufacturerModelName (0008,1090), DeviceSerialNumber (0018,1000)."""
    manu = dv.first_str(attrs, "00080070")
    model = dv.first_str(attrs, "00081090")
    serial = dv.first_str(attrs, "00181000")
    if not manu and not model:
        return None
    dev: dict[str, Any] = {"resourceType": "Device", "id": stable_id("Device", manu or "", model or "", serial or ""),
                           "meta": _meta()}
    if manu:
        dev["manufacturer"] = manu
    if serial:
        dev["serialNumber"] = serial
    if model:
        dev["deviceName"] = [{"name": model, "type": "model-name"}]
    return dev


def patient_resource(attrs: dict[str, Any], options: MappingOptions, issues: _Issues) -> dict[str, Any]:
    """Patient from PatientID (0010,0020), IssuerOfPatientID (0010,0021), PatientName (0010,0010),
    PatientSex (0010,0040), PatientBirthDate (0010,0030)."""
    pid = dv.first_str(attrs, "00100020")
    if not pid:
        raise MappingError(f"study {issues.study}: PatientID (0010,0020) is missing or empty "
                           "(rule: the Patient key is required); study skipped")
    issuer = dv.first_str(attrs, "00100021")
    system = (options.issuer_systems.get(issuer) if issuer else None) or options.patient_system
    ident: dict[str, Any] = {"system": system, "value": pid.strip()}
    if issuer and issuer not in options.issuer_systems:
        ident["assigner"] = {"display": issuer}
    pat: dict[str, Any] = {"resourceType": "Patient", "id": patient_id(system, pid), "meta": _meta(),
                           "identifier": [ident]}
    name = dv.human_name(dv.first(attrs, "00100010"))
    if name:
        pat["name"] = [name]
    sex = dv.first_str(attrs, "00100040")
    if sex:
        g = GENDER.get(sex.strip().upper())
        if g is None:
            issues.add("00100040", sex, "PatientSex must be M, F or O; mapped to 'unknown'")
            g = "unknown"
        pat["gender"] = g
    bd_raw = dv.first_str(attrs, "00100030")
    bd, problem = dv.parse_da(bd_raw)
    if problem:
        issues.add("00100030", bd_raw, problem)
    if bd:
        pat["birthDate"] = bd.isoformat()
    return pat


def _started(attrs: dict[str, Any], da_key: str, tm_key: str, options: MappingOptions, issues: _Issues,
             series: str = "") -> str | None:
    da, tm, tz = dv.first(attrs, da_key), dv.first(attrs, tm_key), dv.first(attrs, "00080201")
    value, problems = dv.fhir_datetime(da, tm, tz, options.timezone)
    keys = {"date": da_key, "time": tm_key, "tz": "00080201"}
    for which, raw, rule in problems:
        issues.add(keys[which], raw, rule, series)
    return value


def _body_site(attrs: dict[str, Any], issues: _Issues, series: str) -> dict[str, Any] | None:
    for item in dc.sequence_items(attrs, "00082218"):  # AnatomicRegionSequence first
        cc, problem = dc.coded_concept(item)
        if cc:
            if problem:
                issues.add("00082218", dv.first_str(item, "00080100"), problem, series)
            return cc["coding"][0] if cc.get("coding") else {"display": cc["text"]}
    raw = dv.first_str(attrs, "00180015")
    coding, problem = dc.body_part_coding(raw)
    if problem:
        issues.add("00180015", raw, problem, series)
    return coding


def _laterality(attrs: dict[str, Any], issues: _Issues, series: str) -> dict[str, Any] | None:
    for key in ("00200060", "00200062"):
        raw = dv.first_str(attrs, key)
        if raw:
            coding, problem = dc.laterality_coding(raw)
            if problem:
                issues.add(key, raw, problem, series)
            return coding
    return None


def _instances(s: SeriesInput, issues: _Issues, series_uid: str) -> list[dict[str, Any]]:
    out = []
    for inst in s.instances:
        try:
            uid = normalize_uid(dv.first_str(inst, "00080018"), tag="SOPInstanceUID (0008,0018)")
            cls = normalize_uid(dv.first_str(inst, "00080016"), tag="SOPClassUID (0008,0016)")
        except MappingError as exc:
            issues.add("00080018", dv.first_str(inst, "00080018"), f"{exc}; instance omitted", series_uid)
            continue
        item: dict[str, Any] = {"uid": uid, "sopClass": {"system": dc.SYSTEM_URN_IETF, "code": uid_urn(cls)}}
        raw = dv.first(inst, "00200013")
        n, problem = dv.parse_is(raw)
        if problem:
            issues.add("00200013", raw, problem, series_uid)
        if n is not None:
            item["number"] = n
        out.append(item)
    out.sort(key=lambda i: (i.get("number", 1 << 31), i["uid"]))
    return out


def _series(s: SeriesInput, options: MappingOptions, issues: _Issues,
            devices: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    a = s.attrs
    raw_uid = dv.first_str(a, "0020000E")
    try:
        uid = normalize_uid(raw_uid, tag="SeriesInstanceUID (0020,000E)")
    except MappingError as exc:
        issues.add("0020000E", raw_uid, f"{exc}; series omitted")
        return None
    out: dict[str, Any] = {"uid": uid}
    raw = dv.first(a, "00200011")
    n, problem = dv.parse_is(raw)
    if problem:
        issues.add("00200011", raw, problem, uid)
    if n is not None:
        out["number"] = n
    raw_mod = dv.first_str(a, "00080060")
    mod, problem = dc.modality_coding(raw_mod)
    if mod is None:
        issues.add("00080060", raw_mod, problem or "Modality (0008,0060) missing; coded as OT (other)", uid)
        mod = {"system": dc.CS_DCM, "code": "OT"}
    out["modality"] = mod
    desc = dv.first_str(a, "0008103E")
    if desc:
        out["description"] = desc
    count = dv.first(a, "00201209")
    nc, problem = dv.parse_is(count)
    if problem:
        issues.add("00201209", count, problem, uid)
    if nc is None:
        nc = s.instance_count if s.instance_count is not None else (len(s.instances) or None)
    if nc is not None:
        out["numberOfInstances"] = nc
    body = _body_site(a, issues, uid)
    if body:
        out["bodySite"] = body
    lat = _laterality(a, issues, uid)
    if lat:
        out["laterality"] = lat
    started = _started(a, "00080021", "00080031", options, issues, uid)
    if started:
        out["started"] = started
    if options.include_device:
        dev = device_resource(a)
        if dev:
            devices[dev["id"]] = dev
            out["performer"] = [{"actor": {"reference": f"Device/{dev['id']}"}}]
    if options.include_instances and s.instances:
        out["instance"] = _instances(s, issues, uid)
    return out


def study_uid_of(s: SeriesInput) -> str:
    """The StudyInstanceUID (0020,000D) of a series; :class:`MappingError` naming the tag if missing/invalid."""
    raw = dv.first_str(s.attrs, "0020000D")
    where = dv.first_str(s.attrs, "0020000E") or s.source or "?"
    if not raw:
        raise MappingError(f"series {where}: StudyInstanceUID (0020,000D) is missing "
                           "(rule: every series needs its study UID); this study is skipped")
    try:
        return normalize_uid(raw, tag="StudyInstanceUID (0020,000D)")
    except MappingError as exc:
        raise MappingError(f"series {where}: {exc}; this study is skipped") from None


def _study_first(series: list[SeriesInput], key: str) -> Any:
    for s in series:
        v = dv.first(s.attrs, key)
        if v is not None:
            return v
    return None


def map_study(series: list[SeriesInput], options: MappingOptions | None = None) -> StudyMapping:
    """Map all series of one study to Patient + ImagingStudy (+ Endpoint, Devices) and the issue list.

    ``series`` must share one StudyInstanceUID (0020,000D); study/patient attributes are read from the first
    series that carries them (QIDO-RS series records include them via ``includefield``).
    """
    options = options or MappingOptions()
    if not series:
        raise MappingError("no series given for the study")
    uids = {study_uid_of(s) for s in series}
    if len(uids) != 1:
        raise MappingError(f"series of different studies passed together: {sorted(uids)} "
                           "(rule: one StudyInstanceUID (0020,000D) per mapping)")
    study_uid = uids.pop()
    issues = _Issues()
    issues.study = study_uid
    pat_attrs = next((s.attrs for s in series if dv.first_str(s.attrs, "00100020")), series[0].attrs)
    patient = patient_resource(pat_attrs, options, issues)

    devices: dict[str, dict[str, Any]] = {}
    mapped = [m for m in (_series(s, options, issues, devices) for s in series) if m]
    if not mapped:
        raise MappingError(f"study {study_uid}: no series with a valid SeriesInstanceUID (0020,000E)")
    by_uid: dict[str, dict[str, Any]] = {}
    for m in mapped:
        by_uid.setdefault(m["uid"], m)
    study: dict[str, Any] = {
        "resourceType": "ImagingStudy", "id": stable_id("ImagingStudy", study_uid), "meta": _meta(),
        "identifier": [{"system": SYSTEM_DICOM_UID, "value": uid_urn(study_uid)}], "status": "available",
        "subject": {"reference": f"Patient/{patient['id']}"},
    }
    acc = _study_first(series, "00080050")
    if acc is not None and str(acc).strip():
        ident: dict[str, Any] = {"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, "value": str(acc).strip()}
        if options.accession_system:
            ident["system"] = options.accession_system
        study["identifier"].append(ident)
    first_attrs = next((s.attrs for s in series if dv.first(s.attrs, "00080020") is not None), series[0].attrs)
    started = _started(first_attrs, "00080020", "00080030", options, issues)
    if started:
        study["started"] = started
    endpoint = None
    if options.endpoint_address:
        endpoint = endpoint_resource(options.endpoint_address)
        study["endpoint"] = [{"reference": f"Endpoint/{endpoint['id']}"}]
    referrer = dv.human_name(_study_first(series, "00080090"))
    if referrer:
        study["referrer"] = {"display": referrer["text"]}
    for item in dc.sequence_items(next((s.attrs for s in series if dc.sequence_items(s.attrs, "00081032")),
                                       series[0].attrs), "00081032"):
        cc, problem = dc.coded_concept(item)
        if problem:
            issues.add("00081032", dv.first_str(item, "00080100"), problem)
        if cc:
            study.setdefault("procedureCode", []).append(cc)
    reason = _study_first(series, "00401002")
    if reason is not None and str(reason).strip():
        study["reasonCode"] = [{"text": str(reason).strip()}]
    desc = _study_first(series, "00081030")
    if desc is not None and str(desc).strip():
        study["description"] = str(desc).strip()
    study["series"] = sort_series(list(by_uid.values()))
    fallback_modalities = [m for s in series for m in dv.strings(s.attrs, "00080061")]
    finish_study(study, fallback_modalities)
    return StudyMapping(study_uid, patient, study, endpoint, sorted(devices.values(), key=lambda d: d["id"]),
                        issues.items)


def sort_series(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Deterministic order (SeriesNumber, then UID) so re-runs produce identical resources."""
    return sorted(series, key=lambda s: (s.get("number", 1 << 31), s["uid"]))


def finish_study(study: dict[str, Any], fallback_modalities: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """(Re)compute ``modality``, ``numberOfSeries`` and ``numberOfInstances`` from ``series``."""
    codes: list[str] = []
    for s in study.get("series", []):
        c = s.get("modality", {}).get("code")
        if c and c not in codes:
            codes.append(c)
    if not codes:
        for m in fallback_modalities:
            coding, _ = dc.modality_coding(m)
            if coding and coding["code"] not in codes:
                codes.append(coding["code"])
    if codes:
        study["modality"] = [{"system": dc.CS_DCM, "code": c} for c in sorted(codes)]
    study["numberOfSeries"] = len(study.get("series", []))
    counts = [s.get("numberOfInstances") for s in study.get("series", [])]
    if counts and all(c is not None for c in counts):
        study["numberOfInstances"] = sum(counts)  # type: ignore[arg-type]
    else:
        study.pop("numberOfInstances", None)
    return study
