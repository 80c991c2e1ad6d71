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

import json
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from kaapana_fhir.core.codes import CS_DCM, ENDPOINT_CONNECTION_TYPE, SYSTEM_DICOM_UID, TAG_SOURCE, V2_0203
from kaapana_fhir.core.dicom import codes as dc
from kaapana_fhir.core.dicom import dose as dd
from kaapana_fhir.core.dicom import mii
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
#: DICOM LO (PatientID (0010,0020)) holds at most 64 characters (PS3.5 6.2).
MAX_LO = 64
_PATIENT_ELEMENTS = (("name", "00100010"), ("gender", "00100040"), ("birthDate", "00100030"))


class Profile(StrEnum):
    """Which profiles the output claims: ``core`` FHIR R4 only, or ``mii`` (MII KDS Modul Bildgebung:
    ``meta.profile`` plus the extensions the DICOM header can fill, see ``docs/mii-bildgebung.md``)."""

    CORE = "core"
    MII = "mii"


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
    profile: :class:`Profile`; ``mii`` (default) adds the MII KDS Bildgebung profiles and extensions. It only adds
        elements, so consumers that ignore the profiles see the same resources.
    dose_reports: map X-Ray Radiation Dose SRs (TID 10011) to Observations (CTDIvol, DLP).
    """

    patient_system: str = DEFAULT_PATIENT_SYSTEM
    issuer_systems: dict[str, str] = field(default_factory=dict)
    timezone: str | None = None
    endpoint_address: str | None = None
    include_instances: bool = False
    include_device: bool = True
    accession_system: str | None = None
    profile: Profile = Profile.MII
    dose_reports: bool = True

    def __post_init__(self) -> None:
        self.profile = Profile(self.profile)  # ConfigError-like ValueError on unknown names, before any mapping
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
    #: Observations derived from the study (dose reports), written after the ImagingStudy.
    observations: list[dict[str, Any]] = field(default_factory=list)
    #: Patient element → canonical value → sources (series UIDs) that carry it; see :func:`reconcile_patients`.
    demographics: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def resources(self) -> list[dict[str, Any]]:
        """Referenced resources first: Endpoint, Devices, Patient, ImagingStudy, Observations."""
        out = ([self.endpoint] if self.endpoint else []) + list(self.devices)
        return out + [self.patient, self.imaging_study] + list(self.observations)


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
    """The ``dicom-wado-rs`` Endpoint of a DICOMweb service (``address`` = WADO-RS base, never with userinfo)."""
    parts = urlsplit(address.strip())
    if parts.username or parts.password:  # credentials in the URL never go into a resource
        parts = parts._replace(netloc=(parts.hostname or "") + (f":{parts.port}" if parts.port else ""))
    addr = parts.geturl().rstrip("/")
    return {
        "resourceType": "Endpoint", "id": stable_id("Endpoint", addr), "meta": _meta(), "status": "active",
        "connectionType": {"system": ENDPOINT_CONNECTION_TYPE, "code": "dicom-wado-rs"},
        "name": "DICOMweb WADO-RS", "payloadType": [{"text": "DICOM WADO-RS"}],
        "payloadMimeType": ["application/dicom"], "address": addr,
    }


def device_resource(attrs: dict[str, Any], profile: Profile = Profile.CORE) -> dict[str, Any] | None:
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
    if profile is Profile.MII:
        mii.add_profile(dev, mii.PROFILE_DEVICE)
    return dev


def patient_key(value: str | None, where: str) -> str:
    """PatientID (0010,0020) as the Patient key, the same rule for PACS and files.

    DICOM padding (spaces, trailing NUL) is removed; an empty value or one with control characters inside
    (e.g. an embedded NUL) is refused with :class:`MappingError` naming the tag and the rule.
    """
    v = (value or "").strip().strip("\x00").strip()
    if not v:
        raise MappingError(f"{where}: PatientID (0010,0020) is missing or empty "
                           "(rule: the Patient key is required); study skipped")
    if any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise MappingError(f"{where}: PatientID (0010,0020) {v!r} contains control characters "
                           "(rule: LO must not contain control characters, PS3.5 6.2); study refused")
    return v


def _demographic_value(element: str, attrs: dict[str, Any], issues: _Issues, series: str) -> str | None:
    """One series' value of a Patient element as canonical JSON (None when empty or invalid)."""
    if element == "name":
        name = dv.human_name(dv.first(attrs, "00100010"))
        return json.dumps(name, sort_keys=True) if name else None
    if element == "gender":
        sex = dv.first_str(attrs, "00100040")
        if not sex:
            return None
        g = GENDER.get(sex.strip().upper())
        if g is None:
            issues.add("00100040", sex, "PatientSex must be M, F or O; mapped to 'unknown'", series)
            g = "unknown"
        return json.dumps(g)
    raw = dv.first_str(attrs, "00100030")
    bd, problem = dv.parse_da(raw)
    if problem:
        issues.add("00100030", raw, problem, series)
    return json.dumps(bd.isoformat()) if bd else None


def collect_demographics(series: list[SeriesInput], issues: _Issues) -> dict[str, dict[str, list[str]]]:
    """Patient name, sex and birth date from *every* series: element → value → series UIDs carrying it."""
    out: dict[str, dict[str, list[str]]] = {}
    for s in series:
        src = dv.first_str(s.attrs, "0020000E") or s.source or "?"
        for element, _key in _PATIENT_ELEMENTS:
            val = _demographic_value(element, s.attrs, issues, src)
            if val is not None:
                srcs = out.setdefault(element, {}).setdefault(val, [])
                if src not in srcs:
                    srcs.append(src)
    return out


def apply_demographics(patient: dict[str, Any], demo: dict[str, dict[str, list[str]]], issues: _Issues,
                       scope: str = "series") -> None:
    """Set ``name``/``gender``/``birthDate`` from the collected values; conflicts become issues.

    One distinct value → used. Two or more: ``gender`` and ``birthDate`` are left out (a wrong sex or birth
    date is worse than none); ``name`` keeps the value most sources carry. Every conflict is an issue naming
    the tag, the values and where each came from.
    """
    for element, key in _PATIENT_ELEMENTS:
        values = demo.get(element) or {}
        patient.pop(element, None)
        if not values:
            continue
        if len(values) == 1:
            chosen: str | None = next(iter(values))
        else:
            shown = "; ".join(f"{_show(v)} in {', '.join(srcs[:3])}{' ...' if len(srcs) > 3 else ''}"
                              for v, srcs in sorted(values.items()))
            if element == "name":
                chosen = sorted(values, key=lambda v: (-len(values[v]), v))[0]
                rule = (f"conflicting values across {scope}: {shown}; the name most {scope} carry "
                        f"({_show(chosen)}) is used")
            else:
                chosen = None
                rule = f"conflicting values across {scope}: {shown}; Patient.{element} left out"
            issues.add(key, " | ".join(_show(v) for v in sorted(values)), rule)
        if chosen is not None:
            val = json.loads(chosen)
            patient[element] = [val] if element == "name" else val
    # keep a stable element order
    order = ["resourceType", "id", "meta", "identifier", "name", "gender", "birthDate"]
    items = sorted(patient.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    patient.clear()
    patient.update(items)


def _show(canonical: str) -> str:
    v = json.loads(canonical)
    return v.get("text", str(v)) if isinstance(v, dict) else str(v)


def patient_resource(series: list[SeriesInput], options: MappingOptions, issues: _Issues
                     ) -> tuple[dict[str, Any], dict[str, dict[str, list[str]]]]:
    """Patient from PatientID (0010,0020), IssuerOfPatientID (0010,0021), PatientName (0010,0010),
    PatientSex (0010,0040), PatientBirthDate (0010,0030) of every series of the study."""
    where = f"study {issues.study}"
    ids: Counter[tuple[str, str | None]] = Counter()
    for s in series:
        raw = dv.first_str(s.attrs, "00100020")
        if raw is not None and raw.strip().strip("\x00").strip():
            ids[(patient_key(raw, where), dv.first_str(s.attrs, "00100021"))] += 1
    if not ids:
        patient_key(None, where)  # raises the "missing" MappingError
    (pid, issuer), _n = sorted(ids.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1] or ""))[0]
    if len(ids) > 1:
        issues.add("00100020", " | ".join(sorted(f"{p}{'/' + i if i else ''}" for p, i in ids)),
                   f"series of one study carry different PatientID/IssuerOfPatientID; the study is linked to "
                   f"{pid!r}, the value most series carry")
    if len(pid) > MAX_LO:
        issues.add("00100020", pid[:80], f"PatientID longer than the {MAX_LO} characters of LO (PS3.5 6.2); kept as is")
    system = (options.issuer_systems.get(issuer) if issuer else None) or options.patient_system
    ident: dict[str, Any] = {"system": system, "value": pid}
    if issuer and issuer not in options.issuer_systems:
        ident["assigner"] = {"display": issuer}
    pat: dict[str, Any] = {"resourceType": "Patient", "id": patient_id(system, pid), "meta": _meta(),
                           "identifier": [ident]}
    same = [s for s in series if (dv.first_str(s.attrs, "00100020") or "").strip().strip("\x00").strip() == pid]
    demo = collect_demographics(same, issues)
    apply_demographics(pat, demo, issues)
    return pat, demo


def reconcile_patients(mappings: list[StudyMapping]) -> None:
    """Demographics across all studies of one patient in this run (same Patient id).

    A study whose series lack the sex (e.g. only an RTSTRUCT) gets it from another study of the patient;
    conflicting values between studies become an issue on every study involved, as within a study.
    """
    by_patient: dict[str, list[StudyMapping]] = {}
    for m in mappings:
        by_patient.setdefault(m.patient["id"], []).append(m)
    for group in by_patient.values():
        if len(group) < 2:
            continue
        merged: dict[str, dict[str, list[str]]] = {}
        for m in group:
            for element, values in m.demographics.items():
                for v, srcs in values.items():
                    if srcs:
                        merged.setdefault(element, {}).setdefault(v, []).append(f"study {m.study_uid}")
        for element in merged:
            for v in merged[element]:
                merged[element][v] = sorted(set(merged[element][v]))
        for m in group:
            issues = _Issues()
            issues.study = m.study_uid
            before = {k: m.patient.get(k) for k in ("name", "gender", "birthDate")}
            apply_demographics(m.patient, merged, issues, scope="studies of the patient")
            known = {(i["tag"], i["rule"]) for i in m.issues}
            m.issues.extend(i for i in issues.items if (i["tag"], i["rule"]) not in known)
            if before != {k: m.patient.get(k) for k in ("name", "gender", "birthDate")}:
                m.demographics = merged


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


def _set_is(target: dict[str, Any], key: str, attrs: dict[str, Any], tag: str, issues: _Issues, where: str) -> None:
    """Set ``target[key]`` from an IS element; a malformed value is an issue naming the tag (and left out)."""
    raw = dv.first(attrs, tag)
    n, problem = dv.parse_is(raw)
    if problem:
        issues.add(tag, raw, problem, where)
    if n is not None:
        target[key] = n


def _instances(s: SeriesInput, issues: _Issues, series_uid: str, profile: Profile = Profile.CORE
               ) -> list[dict[str, Any]]:
    out = []
    for inst in s.instances:
        try:
            uid = normalize_uid(dv.first_str(inst, "00080018"), tag="SOPInstanceUID (0008,0018)")
            cls = normalize_uid(dv.first_str(inst, "00080016"), tag="SOPClassUID (0008,0016)")
        except MappingError as exc:
            issues.add("00080018", dv.first_str(inst, "00080018"), f"{exc}; instance omitted", series_uid)
            continue
        item: dict[str, Any] = {"uid": uid, "sopClass": {"system": dc.SYSTEM_URN_IETF, "code": uid_urn(cls)}}
        _set_is(item, "number", inst, "00200013", issues, series_uid)
        if profile is Profile.MII:
            ext = mii.instance_extension(inst, lambda key, value, rule: issues.add(key, value, rule, series_uid))
            if ext:
                item = {"extension": [ext], **item}
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
    _set_is(out, "number", a, "00200011", issues, uid)
    raw_mod = dv.first_str(a, "00080060")
    mod, problem = dc.modality_coding(raw_mod)
    if mod is None:
        issues.add("00080060", raw_mod, problem or "Modality (0008,0060) missing; coded as OT (other)", uid)
        mod = {"system": CS_DCM, "code": "OT"}
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
        dev = device_resource(a, options.profile)
        if dev:
            devices[dev["id"]] = dev
            out["performer"] = [{"actor": {"reference": f"Device/{dev['id']}"}}]
    if options.include_instances and s.instances:
        out["instance"] = _instances(s, issues, uid, options.profile)
    if options.profile is Profile.MII:
        exts = mii.series_extensions(a, mod.get("code"), lambda key, value, rule: issues.add(key, value, rule, uid))
        if exts:
            out = {"extension": exts, **out}
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
    patient, demographics = patient_resource(series, options, issues)

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
        if options.profile is Profile.MII:
            study.setdefault("extension", []).append(mii.reason_extension(str(reason).strip()))
    desc = _study_first(series, "00081030")
    if desc is not None and str(desc).strip():
        study["description"] = str(desc).strip()
    study["series"] = sort_series(list(by_uid.values()))
    fallback_modalities = [m for s in series for m in dv.strings(s.attrs, "00080061")]
    finish_study(study, fallback_modalities)
    if options.profile is Profile.MII:
        mii.add_profile(study, mii.PROFILE_IMAGING_STUDY)
    observations = _dose_observations(series, patient, study, issues) if options.dose_reports else []
    return StudyMapping(study_uid, patient, study, endpoint, sorted(devices.values(), key=lambda d: d["id"]),
                        issues.items, observations, demographics)


def _dose_observations(series: list[SeriesInput], patient: dict[str, Any], study: dict[str, Any],
                       issues: _Issues) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for s in series:
        if dv.first_str(s.attrs, "00080060") not in ("SR", None):
            continue
        for inst in (s.instances or [s.attrs]):
            sop = dv.first_str(inst, "00080018") or ""
            if sop in seen or not dd.is_dose_report(inst) or "0040A730" not in inst:
                continue
            seen.add(sop)
            series_uid = dv.first_str(s.attrs, "0020000E") or ""

            def issue(key: str, value: Any, rule: str, _s: str = series_uid) -> None:
                issues.add(key, value, rule, _s)

            obs = dd.dose_observations(
                inst, patient_ref=f"Patient/{patient['id']}", study_ref=f"ImagingStudy/{study['id']}",
                effective=study.get("started"), issue=issue)
            for o in obs:
                o["meta"] = _meta()
            out.extend(obs)
    return out


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
        study["modality"] = [{"system": CS_DCM, "code": c} for c in sorted(codes)]
    study["numberOfSeries"] = len(study.get("series", []))
    counts = [s.get("numberOfInstances") for s in study.get("series", [])]
    if counts and all(c is not None for c in counts):
        study["numberOfInstances"] = sum(counts)
    else:
        study.pop("numberOfInstances", None)
    return study
