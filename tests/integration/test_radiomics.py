"""Radiomics end to end: demo CT + SEG in Orthanc → the real ``radiomics-to-fhir`` DAG (dag.test) → HAPI."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from kaapana_fhir.core import codes
from kaapana_fhir.core.ids import patient_id, stable_id
from kaapana_fhir.dev.demo_data import demo_case, make_demo_dataset
from kaapana_fhir.flows.radiomics.compute import read_dicom_dir
from kaapana_fhir.flows.radiomics.flow import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

#: demo patients used: 1 multi-segment, 2 partial-slice second segment, 4 slice normal -z / shuffled files
CASES = (1, 2, 4)


def _direct(index: int, seed: int, prefix: str) -> dict[int, dict]:
    from radiomics import featureextractor

    case = demo_case(index, seed, prefix)
    ex = featureextractor.RadiomicsFeatureExtractor(load_settings())
    return {n: ex.execute(case.image, m, label=1) for n, m in case.masks.items()}


def test_radiomics_dag_end_to_end(tmp_path: Path, stack_env: dict, airflow_home: Path, dicomweb, fhir,  # noqa: ANN001
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in stack_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("KAAPANA_FHIR_RUNTIME", "airflow")
    prefix = "RADIT" + uuid.uuid4().hex[:6].upper()
    seed = uuid.uuid4().int % 100000
    manifest = make_demo_dataset(tmp_path, n_patients=5, seed=seed, patient_prefix=prefix)
    pats = [manifest["patients"][i] for i in CASES]
    for p in pats:
        dicomweb.store(read_dicom_dir(p["ct_dir"]) + read_dicom_dir(p["seg_file"]))

    from kaapana_fhir.dev.airflow_runner import run_dag

    conf = {"data_form": {"identifiers": [p["seg_series_uid"] for p in pats]}}
    first = run_dag("radiomics-to-fhir", conf)
    out = first.xcoms["radiomics-to-fhir"]
    n_segments = sum(len(p["segments"]) for p in pats)
    assert out["segs"] == 3 and out["groups"] == n_segments and out["features"] == 107 * n_segments
    assert out["computed_image_types"] == ["original"] and out["skipped_image_types"] == []
    assert out["absent"] == 0

    worst = 0.0
    versions: dict[str, str] = {}
    for index, p in zip(CASES, pats, strict=False):
        pid = patient_id(None, p["patient_id"])
        study_id = stable_id("ImagingStudy", p["study_uid"])
        study = fhir.read("ImagingStudy", study_id)  # the link resolves
        assert study["identifier"][0]["value"] == f"urn:oid:{p['study_uid']}"
        obs = list(fhir.search("Observation", {"subject": f"Patient/{pid}", "_count": 500}))
        groups = [o for o in obs if o["code"]["coding"][0]["code"] == "radiomics-feature-set"]
        feats = [o for o in obs if o["code"]["coding"][0]["system"] == codes.CS_PYRADIOMICS]
        assert len(groups) == len(p["segments"]) and len(feats) == 107 * len(p["segments"])
        assert all(len(g["hasMember"]) == 107 and g["derivedFrom"][0]["reference"] == f"ImagingStudy/{study_id}"
                   for g in groups)
        for seg in p["segments"]:
            bs = fhir.read("BodyStructure", stable_id("BodyStructure", p["seg_sop_uid"], str(seg["number"])))
            assert bs["description"] == seg["label"]
            assert bs["identifier"][0]["value"] == f"{p['seg_sop_uid']}/{seg['number']}"
        device_ref = feats[0]["device"]["reference"]
        device = fhir.read("Device", device_ref.split("/")[1])
        assert device["deviceName"][0]["name"] == "pyradiomics" and device["version"][0]["value"] == "3.0.1"
        direct = _direct(index, seed, prefix)
        bs_to_seg = {f"BodyStructure/{stable_id('BodyStructure', p['seg_sop_uid'], str(s['number']))}": s["number"]
                     for s in p["segments"]}
        for f in feats:
            seg_no = bs_to_seg[f["focus"][0]["reference"]]
            key = "original_" + f["code"]["coding"][0]["code"]
            expected = float(direct[seg_no][key])
            worst = max(worst, abs(f["valueQuantity"]["value"] - expected) / max(abs(expected), 1e-12))
            versions[f["id"]] = f["meta"]["versionId"]
        mean = next(f for f in feats if f["code"]["coding"][0]["code"] == "firstorder_Mean")
        assert mean["valueQuantity"]["code"] == "[hnsf'U]"
    assert worst <= 1e-6, f"worst relative difference {worst}"

    # re-run: same ids, same content → nothing new, no new versions
    second = run_dag("radiomics-to-fhir", conf)
    assert second.xcoms["radiomics-to-fhir"]["features"] == out["features"]
    for p in pats:
        pid = patient_id(None, p["patient_id"])
        n = fhir.count("Observation", {"subject": f"Patient/{pid}"})
        assert n == 108 * len(p["segments"])
    sample = list(versions)[:: max(1, len(versions) // 10)]
    for fid in sample:
        assert fhir.read("Observation", fid)["meta"]["versionId"] == versions[fid]

    # other settings → new groups next to the old ones
    conf2 = dict(conf, data_form={"identifiers": [pats[0]["seg_series_uid"]]},
                 workflow_form={"settings": "setting: {binWidth: 10}"})
    run_dag("radiomics-to-fhir", conf2)
    pid0 = patient_id(None, pats[0]["patient_id"])
    assert fhir.count("Observation", {"subject": f"Patient/{pid0}"}) == 2 * 108 * len(pats[0]["segments"])
