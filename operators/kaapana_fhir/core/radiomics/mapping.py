"""Radiomics features → FHIR R4 (``fhir-mappings.md`` §3): group + feature Observations, BodyStructure, Device.

Per (segment × image type × settings) one group Observation (``code`` = ``CS_KAAPANA#radiomics-feature-set``,
``category`` DCM 125007 + imaging) with ``hasMember`` → one feature Observation per feature (or, with
``layout="components"``, the features as ``Observation.component``). Every Observation has ``subject`` →
Patient (``identifiers.patient_id`` of the image's PatientID (0010,0020)), ``partOf`` and ``derivedFrom`` →
ImagingStudy (``stable_id("ImagingStudy", StudyInstanceUID)``), ``focus`` → BodyStructure of the segment
(identifier ``CS_SEGMENT`` ``<SEG SOPInstanceUID>/<SegmentNumber>``), ``device`` → Device pyradiomics
(version + settings). Feature ``code.coding[0]`` = ``CS_PYRADIOMICS#<class>_<name>``, ``coding[1]`` =
curated IBSI code (``data/radiomics/features.csv``); ``method.coding[0]`` = ``CS_IMAGE_TYPE#<image type>``;
``valueQuantity`` in UCUM by feature and modality; NaN/inf, empty masks and all-zero failures get
``dataAbsentReason`` instead of a value. Ids: ``stable_id`` of SEG SOP UID + segment number + image type +
settings hash, so a re-run upserts and other settings create new groups. No Airflow, no network.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from typing import Any

from kaapana_fhir.core import codes
from kaapana_fhir.core.dicom import mii
from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM, patient_id, stable_id, uid_urn
from kaapana_fhir.exceptions import MappingError

#: Package CodeSystem for IBSI feature codes (no official FHIR URI exists; content = fragment).
CS_IBSI = "urn:kaapana-fhir:CodeSystem:ibsi"
#: Identifier system of radiomics Observations (value = group / feature key).
SYSTEM_RADIOMICS_KEY = "urn:kaapana-fhir:radiomics"
MII_SERIES_UID = mii.EXT_SERIES_UID
MII_SOP_UID = mii.EXT_SOP_UID
#: LOINC 18782-3 "Radiology Study observation (narrative)": category of the MII radiological observation profile
LOINC_RADIOLOGY = {"system": codes.LOINC, "code": "18782-3", "display": "Radiology Study observation (narrative)"}
#: SNOMED CT 122869004 "Measurement procedure": category of the MII radiological measurement profile
SCT_MEASUREMENT = {"system": codes.SNOMED, "code": "122869004", "display": "Measurement procedure (procedure)"}
TAG = {"system": codes.TAG_SOURCE, "code": "radiomics"}

#: UCUM code + display per unit kind and modality family ("CT" = HU-calibrated, "other" = arbitrary units).
UNITS: dict[str, dict[str, tuple[str, str]]] = {
    "volume": {"*": ("mm3", "mm³")},
    "area": {"*": ("mm2", "mm²")},
    "per_length": {"*": ("/mm", "1/mm")},
    "length": {"*": ("mm", "mm")},
    "1": {"*": ("1", "1")},
    "intensity": {"CT": ("[hnsf'U]", "HU"), "other": ("1", "arbitrary intensity unit")},
    "intensity2": {"CT": ("[hnsf'U]2", "HU²"), "other": ("1", "arbitrary intensity unit²")},
    "total_energy": {"CT": ("[hnsf'U]2.mm3", "HU²·mm³"), "other": ("mm3", "arbitrary intensity unit²·mm³")},
}


@dataclass(frozen=True)
class FeatureDef:
    feature_class: str
    feature_name: str
    unit_kind: str
    ibsi_code: str
    ibsi_name: str
    note: str


@lru_cache(maxsize=1)
def feature_table() -> dict[str, FeatureDef]:
    """``"<class>_<name>"`` → :class:`FeatureDef` from the shipped ``data/radiomics/features.csv``."""
    path = files("kaapana_fhir") / "data" / "radiomics" / "features.csv"
    out = {}
    with path.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            d = FeatureDef(**row)
            out[f"{d.feature_class}_{d.feature_name}"] = d
    return out


def split_feature_key(key: str) -> tuple[str, str, str]:
    """``original_firstorder_Mean`` → (``original``, ``firstorder``, ``Mean``); Kaapana's 2-part keys → ``original``.

    Image types may contain ``-`` (``wavelet-LLH``, ``log-sigma-3-0-mm-3D``) but never ``_``.
    """
    parts = key.split("_")
    if len(parts) == 2:
        return "original", parts[0], parts[1]
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    raise MappingError(f"feature name {key!r} is not '<imageType>_<class>_<feature>' or '<class>_<feature>'")


def unit_for(feature_class: str, feature_name: str, modality: str) -> tuple[str, str, bool]:
    """(UCUM code, display, calibrated) for a feature; ``calibrated`` is False for arbitrary intensity units."""
    d = feature_table().get(f"{feature_class}_{feature_name}")
    return unit_of_kind(d.unit_kind if d else "1", modality)


def unit_of_kind(kind: str, modality: str) -> tuple[str, str, bool]:
    """(UCUM code, display, calibrated) for a :data:`UNITS` kind and the image modality."""
    table = UNITS[kind]
    if "*" in table:
        return (*table["*"], True)
    fam = "CT" if (modality or "").upper() == "CT" else "other"
    return (*table[fam], fam == "CT")


def settings_hash(settings: dict[str, Any]) -> str:
    """12 hex chars of SHA-256 over the canonical JSON of the effective settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class CodedFeature:
    """A feature coded in another CodeSystem than ``CS_PYRADIOMICS`` (``code.coding[0]`` = system#code).

    ``key`` names it inside its segment (Observation identifier / id); ``unit_kind`` is a key of :data:`UNITS`,
    ``None`` when the unit is not known (``valueQuantity`` then has no unit).
    """

    key: str
    system: str
    code: str
    display: str
    value: Any
    unit_kind: str | None = None
    image_type: str = "original"


@dataclass
class SegmentFeatures:
    """Features of one segment: keys ``<imageType>_<class>_<name>`` → value (number, NaN, string, None)."""

    segment_number: int
    label: str
    features: dict[str, Any]
    error: str | None = None
    property_type: dict[str, str] | None = None  # SegmentedPropertyType (0062,000F): system/code/display
    anatomic_region: dict[str, str] | None = None  # AnatomicRegionSequence (0008,2218)
    tracking_uid: str | None = None  # TrackingUID (0062,0021)
    voxel_count: int | None = None
    all_zero_is_failure: bool = False  # Kaapana PyRadiomicsOperator writes 0 for every feature on failure
    #: features that have no pyradiomics code (e.g. MITK CLGlobalImageFeatures names), coded as given
    coded_features: list[CodedFeature] = field(default_factory=list)
    #: extra codings appended to ``code.coding`` of a pyradiomics-coded feature key (e.g. the MITK name it came from)
    extra_codings: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    #: what the result file says about the run: ``software``, ``version``, ``settings`` (all optional)
    source: dict[str, Any] | None = None


@dataclass
class RadiomicsRun:
    """Context of one radiomics result: the SEG, the image it was computed on, and the settings."""

    patient_value: str  # PatientID (0010,0020) of the image
    study_uid: str  # StudyInstanceUID (0020,000D) of the segmented image
    seg_sop_uid: str  # SOPInstanceUID (0008,0018) of the SEG
    segments: list[SegmentFeatures]
    image_series_uid: str | None = None
    seg_series_uid: str | None = None
    modality: str = "CT"
    settings: dict[str, Any] = field(default_factory=dict)
    pyradiomics_version: str = "unknown"
    patient_system: str | None = None
    issued: str | None = None  # run time, ISO 8601 with time zone
    effective: str | None = None  # acquisition/study date (FHIR dateTime)
    seg_study_uid: str | None = None  # when the SEG lives in another study
    software: str = "pyradiomics"  # Device.deviceName (e.g. "MITK CLGlobalImageFeatures")


@dataclass
class MapResult:
    resources: list[dict[str, Any]]
    issues: list[dict[str, Any]]
    groups: int = 0
    features: int = 0
    absent: int = 0


def _ref(rtype: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{rid}"}


def imaging_study_id(study_uid: str) -> str:
    return stable_id("ImagingStudy", study_uid)


def body_structure(run: RadiomicsRun, seg: SegmentFeatures, pid: str) -> dict[str, Any]:
    key = f"{run.seg_sop_uid}/{seg.segment_number}"
    ident = [{"system": codes.CS_SEGMENT, "value": key}]
    if seg.tracking_uid:
        ident.append({"system": codes.SYSTEM_DICOM_UID, "value": uid_urn(seg.tracking_uid)})
    res: dict[str, Any] = {
        "resourceType": "BodyStructure", "id": stable_id("BodyStructure", run.seg_sop_uid, str(seg.segment_number)),
        "meta": {"tag": [TAG]}, "identifier": ident, "active": True,
        "description": seg.label or f"segment {seg.segment_number}", "patient": _ref("Patient", pid)}
    if seg.property_type:
        res["morphology"] = {"coding": [seg.property_type], "text": seg.property_type.get("display") or seg.label}
    if seg.anatomic_region:
        res["location"] = {"coding": [seg.anatomic_region]}
    return res


def device(run: RadiomicsRun) -> dict[str, Any]:
    h = settings_hash(run.settings)
    return {
        "resourceType": "Device", "id": stable_id("Device", run.software, run.pyradiomics_version, h),
        "meta": {"tag": [TAG]},
        "deviceName": [{"name": run.software, "type": "model-name"}],
        "type": {"coding": [{"system": codes.CS_KAAPANA, "code": "radiomics-software"}],
                 "text": "Radiomics feature extraction software"},
        "version": [{"value": run.pyradiomics_version}],
        "property": [{"type": {"coding": [{"system": codes.CS_KAAPANA, "code": "radiomics-settings"}],
                               "text": f"{run.software} settings (JSON, hash {h})"},
                      "valueCode": [{"text": json.dumps(run.settings, sort_keys=True, default=str)}]}],
    }


def _number(value: Any) -> tuple[float | None, str | None]:
    """(float value, None) or (None, data-absent-reason code)."""
    if value is None:
        return None, "unknown"
    if isinstance(value, bool):
        return float(value), None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None, "error"
    try:
        v = float(value)  # numpy scalars / 0-d arrays
    except (TypeError, ValueError):
        return None, "error"
    if math.isnan(v):
        return None, "not-a-number"
    if math.isinf(v):
        return None, "positive-infinity" if v > 0 else "negative-infinity"
    return v, None


def _absent(code: str, text: str) -> dict[str, Any]:
    return {"coding": [{"system": codes.DATA_ABSENT_REASON, "code": code}], "text": text}


def map_run(run: RadiomicsRun, *, layout: str = "members", profile: str = "mii") -> MapResult:
    """Map one run to FHIR resources (Device, BodyStructures, Observations) and issues (tag, value, rule).

    Provenance on every Observation (group and features): MII extensions with the SEG's SeriesInstanceUID
    (0020,000E) and SOPInstanceUID (0008,0018), ``derivedFrom`` the ImagingStudy holding the SEG series,
    ``partOf`` the segmented image's ImagingStudy, the extraction settings in ``method.text``.

    ``profile="mii"`` (default) claims the MII KDS Bildgebung profiles: the group is a
    ``mii-pr-bildgebung-radiologische-beobachtung`` with ``value[x]`` (the segment's SegmentedPropertyType, else
    its label) and each feature with a value a ``mii-pr-bildgebung-radiologische-messung`` (category SCT
    122869004, UCUM ``valueQuantity``); ``partOf`` is left out because the profile allows only a reporting
    Procedure there (the ImagingStudy stays in ``derivedFrom``). Features without a value or without a unit do
    not claim the measurement profile (it needs both); ``profile="core"`` writes plain R4.
    """
    if layout not in ("members", "components"):
        raise MappingError(f"layout {layout!r} is not 'members' or 'components'")
    if profile not in ("mii", "core"):
        raise MappingError(f"profile {profile!r} is not 'mii' or 'core'")
    use_mii = profile == "mii"
    pid = patient_id(run.patient_system or DEFAULT_PATIENT_SYSTEM, run.patient_value)
    isid = imaging_study_id(run.study_uid)
    derived_study = imaging_study_id(run.seg_study_uid) if run.seg_study_uid else isid
    h = settings_hash(run.settings)
    dev = device(run)
    table = feature_table()
    out = MapResult([dev], [])
    common: dict[str, Any] = {
        "status": "final", "subject": _ref("Patient", pid), "derivedFrom": [_ref("ImagingStudy", derived_study)],
        "device": _ref("Device", dev["id"])}
    if not use_mii:
        common = {**common, "partOf": [_ref("ImagingStudy", isid)]}
    if run.seg_study_uid and run.seg_study_uid != run.study_uid:
        common["derivedFrom"] = [*common["derivedFrom"], _ref("ImagingStudy", isid)]
    if not run.seg_series_uid:
        out.issues.append({"tag": "(0020,000E)", "value": run.seg_sop_uid,
                           "rule": "SEG SeriesInstanceUID unknown; the MII series-uid extension is left out"})
    settings_text = _settings_text(run)
    if run.effective:
        common["effectiveDateTime"] = run.effective
    if run.issued:
        common["issued"] = run.issued
    for seg in run.segments:
        bs = body_structure(run, seg, pid)
        out.resources.append(bs)
        by_type: dict[str, list[tuple[str, str, str, Any]]] = {}
        for key, value in seg.features.items():
            if key.startswith("diagnostics_"):
                continue
            try:
                itype, fclass, fname = split_feature_key(key)
            except MappingError as exc:
                out.issues.append({"tag": f"segment {seg.segment_number}", "value": key, "rule": str(exc)})
                continue
            by_type.setdefault(itype, []).append((key, fclass, fname, value))
        coded_by_type: dict[str, list[CodedFeature]] = {}
        for cf in seg.coded_features:
            coded_by_type.setdefault(cf.image_type, []).append(cf)
            by_type.setdefault(cf.image_type, [])
        failed = seg.error
        if not failed and seg.all_zero_is_failure and seg.features:
            vals = [_number(v)[0] for k, v in seg.features.items() if not k.startswith("diagnostics_")]
            if vals and all(v == 0 for v in vals):
                failed = "all features are 0 (PyRadiomicsOperator failure marker)"
        if failed:
            out.issues.append({"tag": f"segment {seg.segment_number} ({seg.label})", "value": failed,
                               "rule": "features of a failed/empty segment are written as dataAbsentReason"})
        if not by_type:
            by_type = {"original": []}
        for itype in sorted(by_type):
            gid = stable_id("Observation", run.seg_sop_uid, str(seg.segment_number), itype, h)
            gkey = f"{run.seg_sop_uid}/{seg.segment_number}/{itype}/{h}"
            group = {
                "resourceType": "Observation", "id": gid, "meta": {"tag": [TAG]},
                "identifier": [{"system": SYSTEM_RADIOMICS_KEY, "value": gkey}],
                "category": [{"coding": [{"system": codes.CS_DCM, "code": "125007", "display": "Measurement Group"}]},
                             {"coding": [{"system": codes.OBSERVATION_CATEGORY, "code": "imaging"}]},
                             *([{"coding": [dict(LOINC_RADIOLOGY)]}] if use_mii else [])],
                "code": {"coding": [{"system": codes.CS_KAAPANA, "code": "radiomics-feature-set",
                                     "display": "Radiomics feature set"}], "text": "Radiomics feature set"},
                **common, "focus": [_ref("BodyStructure", bs["id"])],
                "method": {"coding": [{"system": codes.CS_IMAGE_TYPE, "code": itype}],
                           "text": settings_text},
                "note": [{"text": f"image type {itype}; segment {seg.segment_number} '{seg.label}'; "
                                  f"settings hash {h}"}],
                "extension": _uid_ext(run),
            }
            members, comps = [], []
            todo: list[tuple[str, list[dict[str, str]], str, Any, str | None]] = []
            for key, fclass, fname, value in sorted(by_type[itype]):
                fdef = table.get(f"{fclass}_{fname}")
                coding = [{"system": codes.CS_PYRADIOMICS, "code": f"{fclass}_{fname}", "display": f"{fclass} {fname}"}]
                if fdef and fdef.ibsi_code:
                    coding.append({"system": CS_IBSI, "code": fdef.ibsi_code, "display": fdef.ibsi_name})
                coding += seg.extra_codings.get(key, [])
                if fdef is None:
                    out.issues.append({"tag": key, "value": str(value), "rule": "feature not in features.csv; "
                                       "coded with the pyradiomics CodeSystem only, unit 1"})
                todo.append((key, coding, f"{itype} {fclass} {fname}", value, fdef.unit_kind if fdef else "1"))
            for cf in sorted(coded_by_type.get(itype, []), key=lambda c: c.key):
                todo.append((cf.key, [{"system": cf.system, "code": cf.code, "display": cf.display}],
                             f"{itype} {cf.display}", cf.value, cf.unit_kind))
            for key, coding, text, value, unit_kind in todo:
                num, reason = (None, "error") if failed else _number(value)
                item: dict[str, Any] = {"code": {"coding": coding, "text": text}}
                calibrated = True
                if num is not None:
                    if unit_kind is None:
                        item["valueQuantity"] = {"value": num}
                    else:
                        ucum, disp, calibrated = unit_of_kind(unit_kind, run.modality)
                        item["valueQuantity"] = {"value": num, "unit": disp, "system": codes.UCUM, "code": ucum}
                else:
                    item["dataAbsentReason"] = _absent(reason or "error", failed or f"value {value!r}")
                    out.absent += 1
                    if not failed and reason == "error":
                        out.issues.append({"tag": key, "value": repr(value), "rule": "value is not a number"})
                out.features += 1
                if layout == "components":
                    comps.append(item)
                    continue
                fid = stable_id("Observation", gid, key)
                measured = "valueQuantity" in item and "code" in item["valueQuantity"]
                obs = {"resourceType": "Observation", "id": fid, "meta": {"tag": [TAG]},
                       "extension": _uid_ext(run),
                       "identifier": [{"system": SYSTEM_RADIOMICS_KEY, "value": f"{gkey}/{key}"}],
                       "category": [{"coding": [{"system": codes.OBSERVATION_CATEGORY, "code": "imaging"}]},
                                    *([{"coding": [dict(SCT_MEASUREMENT)]}] if use_mii and measured else [])],
                       **common, "focus": [_ref("BodyStructure", bs["id"])],
                       "method": {"coding": [{"system": codes.CS_IMAGE_TYPE, "code": itype}], "text": settings_text},
                       **item}
                if use_mii and measured:
                    mii.add_profile(obs, mii.PROFILE_MEASUREMENT)
                if "valueQuantity" in item and not calibrated:
                    obs["note"] = [{"text": f"{run.modality or 'non-CT'} intensities have no calibrated unit"}]
                out.resources.append(obs)
                members.append(_ref("Observation", fid))
            if members:
                group["hasMember"] = members
            if comps:
                group["component"] = comps
            if failed or not (members or comps):
                group["dataAbsentReason"] = _absent("error", failed or "no features computed")
            elif use_mii:
                group.update(_group_value(seg))
                mii.add_profile(group, mii.PROFILE_OBSERVATION)
            out.resources.append(group)
            out.groups += 1
    return out


def _settings_text(run: RadiomicsRun) -> str:
    settings = run.settings
    s = settings.get("setting", {}) or {}
    if not isinstance(s, dict):
        s = {}
    parts = [f"{k}={s[k]}" for k in ("binWidth", "binCount", "resampledPixelSpacing", "normalize", "label")
             if k in s and s[k] is not None]
    imagetype = settings.get("imageType")
    itypes = ",".join(sorted(imagetype.keys())) if isinstance(imagetype, dict) else ""
    return f"{run.software} " + " ".join(parts) + (f" imageTypes={itypes}" if itypes else "")


def _uid_ext(run: RadiomicsRun) -> list[dict[str, Any]]:
    """MII extensions: the SEG's SeriesInstanceUID and SOPInstanceUID (the measured object)."""
    ext = []
    if run.seg_series_uid:
        ext.append({"url": MII_SERIES_UID, "valueId": run.seg_series_uid})
    ext.append({"url": MII_SOP_UID, "valueId": run.seg_sop_uid})
    return ext


def _group_value(seg: SegmentFeatures) -> dict[str, Any]:
    """``value[x]`` of the group (the MII observation profile requires one): the segment's
    SegmentedPropertyType (0062,000F) as a coded finding, else its label."""
    pt = seg.property_type or {}
    if pt.get("system") and pt.get("code"):
        return {"valueCodeableConcept": {"coding": [dict(pt)], "text": pt.get("display") or seg.label}}
    return {"valueString": seg.label or f"segment {seg.segment_number}"}


def patient_stub(run: RadiomicsRun) -> dict[str, Any]:
    """Minimal Patient (identifier only) for when the DICOM flow has not written it yet."""
    system = run.patient_system or DEFAULT_PATIENT_SYSTEM
    return {"resourceType": "Patient", "id": patient_id(system, run.patient_value),
            "meta": {"tag": [TAG]}, "identifier": [{"system": system, "value": run.patient_value.strip()}]}


def imaging_study_stub(run: RadiomicsRun, study_uid: str, series: list[tuple[str, str]]) -> dict[str, Any]:
    """Minimal ImagingStudy (codes.py conventions) for when the DICOM flow has not written it yet.

    ``series``: (SeriesInstanceUID, Modality) pairs.
    """
    pid = patient_id(run.patient_system or DEFAULT_PATIENT_SYSTEM, run.patient_value)
    res: dict[str, Any] = {
        "resourceType": "ImagingStudy", "id": imaging_study_id(study_uid), "meta": {"tag": [TAG]},
        "identifier": [{"system": codes.SYSTEM_DICOM_UID, "value": uid_urn(study_uid)}],
        "status": "available", "subject": _ref("Patient", pid)}
    if series:
        res["series"] = [{"uid": uid, "modality": {"system": codes.CS_DCM, "code": mod}} for uid, mod in series]
    return res
