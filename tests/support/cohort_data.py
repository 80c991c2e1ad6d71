"""Synthetic resources that follow core/codes.py conventions (clinical table, DICOM, radiomics flows).

Used by the cohort/report tests and the cohort bench, so they do not wait for the other flows.
Values are random but seeded; nothing here is real patient data.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from kaapana_fhir.core import codes
from kaapana_fhir.core.ids import patient_id, stable_id

STAGES = ["I", "II", "IIIa", "IIIb"]
HISTOLOGY = [("35917007", "adenocarcinoma"), ("28899001", "squamous cell carcinoma"), ("22687000", "large cell")]
HISTOLOGY_EXT = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior"
FEATURE_CLASSES = ["firstorder", "shape", "glcm", "glrlm", "glszm", "gldm", "ngtdm"]


def feature_names(n: int) -> list[str]:
    base = ["firstorder_Mean", "firstorder_Entropy", "shape_MeshVolume", "shape_Sphericity", "glcm_JointEntropy"]
    out = list(base[:n])
    i = 0
    while len(out) < n:
        out.append(f"{FEATURE_CLASSES[i % len(FEATURE_CLASSES)]}_Feature{i}")
        i += 1
    return out


def _tag(code: str) -> dict[str, Any]:
    return {"tag": [{"system": codes.TAG_SOURCE, "code": code}]}


def patient_resources(system: str, pid_value: str, *, seed: int = 0, n_clinical: int = 5, n_features: int = 5,
                      n_segments: int = 1, with_imaging: bool = True, text_overrides: dict[str, str] | None = None,
                      ) -> list[dict[str, Any]]:
    """All resources of one synthetic patient (Patient first, then BodyStructure/ImagingStudy, Observations)."""
    rnd = random.Random(f"{seed}-{pid_value}")
    ov = text_overrides or {}
    pid = patient_id(system, pid_value)
    pref = {"reference": f"Patient/{pid}"}
    dead = rnd.random() < 0.6
    out: list[dict[str, Any]] = [{
        "resourceType": "Patient", "id": pid, "meta": _tag("clinical-table"),
        "identifier": [{"system": system, "value": pid_value}],
        "gender": rnd.choice(["male", "female"]), "birthDate": f"{rnd.randint(1930, 1970)}-01-01",
        **({"deceasedBoolean": True} if dead else {})}]
    stage = ov.get("stage") or rnd.choice(STAGES)
    hist = rnd.choice(HISTOLOGY)
    if ov.get("histology"):
        known = {d: c for c, d in HISTOLOGY}
        hist = (known.get(ov["histology"], "255052006"), ov["histology"])

    def obs(var: str, value: dict[str, Any], coding: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {"resourceType": "Observation", "id": stable_id("Observation", pid, var), "meta": _tag("clinical-table"),
                "status": "final", "subject": pref,
                "category": [{"coding": [{"system": codes.OBSERVATION_CATEGORY, "code": "survey"}]}],
                "code": {"text": var, **({"coding": coding} if coding else {})}, **value}

    clin = [
        obs("age", {"valueQuantity": {"value": rnd.randint(40, 85), "unit": "a", "system": codes.UCUM, "code": "a"}},
            [{"system": codes.LOINC, "code": "30525-0"}]),
        obs("Overall.Stage", {"valueCodeableConcept": {"text": stage}},
            [{"system": codes.SNOMED, "code": "399537006"}]),
        obs("Survival.time", {"valueQuantity": {"value": rnd.randint(30, 3000), "unit": "d", "system": codes.UCUM,
                                                "code": "d"}}),
        obs("clinical.T.Stage", {"valueInteger": rnd.randint(1, 4)}, [{"system": codes.SNOMED, "code": "399504009"}]),
        obs("Clinical.N.Stage", {"valueInteger": rnd.randint(0, 3)}, [{"system": codes.SNOMED, "code": "399534004"}]),
    ]
    for i in range(max(0, n_clinical - len(clin))):
        clin.append(obs(f"lab.{i}", {"valueQuantity": {"value": round(rnd.gauss(10, 3), 2), "unit": "1",
                                                          "system": codes.UCUM, "code": "1"}}))
    out.extend(clin[:n_clinical])
    # as the table flow writes it: NSCLC diagnosis, histology in the mCODE histology-morphology-behavior extension
    out.append({"resourceType": "Condition", "id": stable_id("Condition", pid, "Histology"),
                "meta": _tag("clinical-table"), "subject": pref,
                "extension": [{"url": HISTOLOGY_EXT, "valueCodeableConcept": {
                    "coding": [{"system": codes.SNOMED, "code": hist[0], "display": hist[1].capitalize()}],
                    "text": hist[1]}}],
                "clinicalStatus": {"coding": [{"system": codes.CONDITION_CLINICAL, "code": "active"}]},
                "code": {"text": "Histology", "coding": [{"system": codes.SNOMED, "code": "254637007",
                                                          "display": "Non-small cell lung cancer"}]}})
    if not with_imaging:
        return out
    digest = int(hashlib.sha256(f"{system}|{pid_value}".encode()).hexdigest()[:12], 16)
    study_uid = f"1.2.826.0.1.3680043.8.498.{digest}"
    ct_uid, seg_uid = study_uid + ".1", study_uid + ".2"
    study_id = stable_id("ImagingStudy", study_uid)
    out.append({"resourceType": "ImagingStudy", "id": study_id, "meta": _tag("dicom"), "status": "available",
                "identifier": [{"system": codes.SYSTEM_DICOM_UID, "value": f"urn:oid:{study_uid}"}],
                "subject": pref, "started": "2019-03-04T10:11:12+01:00" if rnd.random() < 0.7 else "2019-03-04",
                "description": ov.get("study_description", "CT THORAX"),
                "modality": [{"system": codes.CS_DCM, "code": "CT"}, {"system": codes.CS_DCM, "code": "SEG"}],
                "numberOfSeries": 2, "numberOfInstances": 101,
                "series": [
                    {"uid": ct_uid, "number": 1, "modality": {"system": codes.CS_DCM, "code": "CT"},
                     "description": ov.get("series_description", "Lung 1.0"), "numberOfInstances": 100,
                     **({"bodySite": {"system": codes.SNOMED, "code": "39607008", "display": "Lung"}}
                        if rnd.random() < 0.8 else {})},
                    {"uid": seg_uid, "number": 2, "modality": {"system": codes.CS_DCM, "code": "SEG"},
                     "numberOfInstances": 1}]})
    for s in range(n_segments):
        label = ov.get("segment_label") or ["GTV-1", "Lung-Left", "Lung-Right", "Heart"][s % 4]
        seg_key = f"{seg_uid}.1/{s + 1}"
        bs_id = stable_id("BodyStructure", seg_key)
        out.append({"resourceType": "BodyStructure", "id": bs_id, "meta": _tag("radiomics"), "patient": pref,
                    "identifier": [{"system": codes.CS_SEGMENT, "value": seg_key}], "description": label})
        group_id = stable_id("Observation", seg_key, "original")
        feats = []
        for j, fname in enumerate(feature_names(n_features)):
            base = 100 * (1 + (STAGES.index(stage) if stage in STAGES else 0)) if fname == "shape_MeshVolume" else 1 + j
            feats.append({
                "resourceType": "Observation", "id": stable_id("Observation", group_id, fname),
                "meta": _tag("radiomics"),
                "status": "final", "subject": pref, "focus": [{"reference": f"BodyStructure/{bs_id}"}],
                "derivedFrom": [{"reference": f"ImagingStudy/{study_id}"}],
                "partOf": [{"reference": f"ImagingStudy/{study_id}"}],
                "category": [{"coding": [{"system": codes.OBSERVATION_CATEGORY, "code": "imaging"}]}],
                "code": {"coding": [{"system": codes.CS_PYRADIOMICS, "code": fname}]},
                "method": {"coding": [{"system": codes.CS_IMAGE_TYPE, "code": "original"}]},
                "valueQuantity": {"value": round(base * (1 + rnd.random()), 4), "unit": "1", "system": codes.UCUM,
                                  "code": "1"}})
        out.extend(feats)  # features before the group that references them (hasMember)
        out.append({"resourceType": "Observation", "id": group_id, "meta": _tag("radiomics"), "status": "final",
                    "subject": pref, "focus": [{"reference": f"BodyStructure/{bs_id}"}],
                    "derivedFrom": [{"reference": f"ImagingStudy/{study_id}"}],
                    "code": {"coding": [{"system": codes.CS_KAAPANA, "code": "radiomics-feature-set"}]},
                    "hasMember": [{"reference": f"Observation/{f['id']}"} for f in feats]})
    return out


def cohort_resources(system: str, n: int, *, seed: int = 0, **kw: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        out.extend(patient_resources(system, f"P{i:04d}", seed=seed, **kw))
    return out
