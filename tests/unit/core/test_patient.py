"""core.patient: one merge, explicit precedence, conflicts reported."""

from __future__ import annotations

from kaapana_fhir.core.patient import Precedence, merge_patient

SERVER = {
    "resourceType": "Patient", "id": "p1",
    "meta": {"versionId": "3", "lastUpdated": "2026-01-01T00:00:00Z", "tag": [{"system": "s", "code": "table"}]},
    "identifier": [{"system": "urn:pid", "value": "A"}],
    "name": [{"family": "Doe", "given": ["Jane"]}], "birthDate": "1960-02-03", "gender": "female",
}
DICOM = {
    "resourceType": "Patient", "id": "p1", "meta": {"tag": [{"system": "s", "code": "dicom"}]},
    "identifier": [{"system": "urn:pid", "value": "A"}, {"system": "urn:other", "value": "X"}],
    "gender": "male", "birthDate": "1960-02-03",
}


def test_existing_precedence_keeps_server_values_and_reports_the_conflict() -> None:
    out = merge_patient(SERVER, DICOM, Precedence.EXISTING)
    assert out.resource["gender"] == "female"
    assert out.resource["name"] == SERVER["name"]
    assert [c.element for c in out.conflicts] == ["gender"]
    assert out.conflicts[0].kept == "existing"
    assert "versionId" not in out.resource["meta"] and "lastUpdated" not in out.resource["meta"]
    assert {t["code"] for t in out.resource["meta"]["tag"]} == {"table", "dicom"}
    assert {i["system"] for i in out.resource["identifier"]} == {"urn:pid", "urn:other"}


def test_incoming_precedence_replaces_values_and_reports_the_conflict() -> None:
    out = merge_patient(SERVER, DICOM, Precedence.INCOMING)
    assert out.resource["gender"] == "male"
    assert out.resource["name"] == SERVER["name"]  # absent on the incoming side: kept
    assert out.conflicts[0].message("p1").startswith("Patient/p1: gender differs")


def test_absent_elements_are_filled_and_no_server_patient_means_the_incoming_one() -> None:
    bare = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:pid", "value": "A"}]}
    out = merge_patient(bare, DICOM, Precedence.EXISTING)
    assert out.resource["gender"] == "male" and out.conflicts == []
    assert merge_patient(None, DICOM, Precedence.EXISTING).resource == DICOM
