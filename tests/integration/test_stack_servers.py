"""Foundation: the clients against the real HAPI FHIR, Orthanc DICOMweb and S3 servers."""

from __future__ import annotations

import uuid

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from kaapana_fhir.clients.fhir import FhirClient, RetryPolicy
from kaapana_fhir.core import bundle
from kaapana_fhir.core.ids import patient_id
from kaapana_fhir.exceptions import FhirConnectionError, FhirServerError

pytestmark = pytest.mark.integration


def test_fhir_create_read_update(fhir: FhirClient) -> None:
    created = fhir.create({"resourceType": "Patient", "gender": "female", "birthDate": "1970-01-02"})
    assert created["id"]
    got = fhir.read("Patient", created["id"])
    assert got["birthDate"] == "1970-01-02"
    pid = patient_id("urn:test", f"P-{uuid.uuid4()}")
    res = fhir.update({"resourceType": "Patient", "id": pid, "gender": "male"})
    assert res["id"] == pid and res["meta"]["versionId"] == "1"
    again = fhir.update({"resourceType": "Patient", "id": pid, "gender": "male"})
    assert again["meta"]["versionId"] == "1", "an unchanged PUT must not create a new version"


def test_fhir_search_paging_over_three_pages(fhir: FhirClient) -> None:
    tag = f"paging-{uuid.uuid4().hex[:8]}"
    entries = [bundle.put_entry({"resourceType": "Patient", "id": patient_id("urn:paging", f"{tag}-{i}"),
                                 "identifier": [{"system": "urn:paging", "value": f"{tag}-{i}"}],
                                 "meta": {"tag": [{"system": "urn:test", "code": tag}]}}) for i in range(25)]
    fhir.write_entries(entries, chunk_size=10)
    pages = list(fhir.search_pages("Patient", {"_tag": f"urn:test|{tag}", "_count": 10}))
    assert len(pages) == 3
    ids = [r["id"] for r in fhir.search("Patient", {"_tag": f"urn:test|{tag}", "_count": 10})]
    assert len(ids) == 25 and len(set(ids)) == 25
    assert fhir.count("Patient", {"_tag": f"urn:test|{tag}"}) == 25


def test_fhir_conditional_create(fhir: FhirClient) -> None:
    value = f"cc-{uuid.uuid4()}"
    res = {"resourceType": "Patient", "identifier": [{"system": "urn:cc", "value": value}]}
    first, created1 = fhir.conditional_create(res, {"identifier": f"urn:cc|{value}"})
    second, created2 = fhir.conditional_create(res, {"identifier": f"urn:cc|{value}"})
    assert created1 is True and created2 is False
    assert first["id"] == second["id"]
    assert fhir.count("Patient", {"identifier": f"urn:cc|{value}"}) == 1


def test_fhir_transaction_with_urn_uuid_references(fhir: FhirClient) -> None:
    value = f"tx-{uuid.uuid4()}"
    pat = bundle.post_entry({"resourceType": "Patient", "identifier": [{"system": "urn:tx", "value": value}]})
    obs = bundle.post_entry({"resourceType": "Observation", "status": "final",
                             "code": {"text": "test"}, "valueString": "x",
                             "subject": {"reference": pat["fullUrl"]}})
    result = fhir.transaction(bundle.transaction([obs, pat]))
    assert result["type"] == "transaction-response"
    assert all(e["response"]["status"].startswith("201") for e in result["entry"])
    p = next(fhir.search("Patient", {"identifier": f"urn:tx|{value}"}))
    o = list(fhir.search("Observation", {"subject": f"Patient/{p['id']}"}))
    assert len(o) == 1


def test_fhir_transaction_is_atomic(fhir: FhirClient) -> None:
    pid = patient_id("urn:atomic", str(uuid.uuid4()))
    good = bundle.put_entry({"resourceType": "Patient", "id": pid})
    bad = bundle.put_entry({"resourceType": "Observation", "id": "obs-bad-" + pid[-8:], "status": "final",
                            "code": {"text": "x"}, "subject": {"reference": "Patient/does-not-exist-xyz"}})
    with pytest.raises(FhirServerError) as exc:
        fhir.transaction(bundle.transaction([good, bad]))
    assert exc.value.status_code in (400, 404, 409, 422)
    assert exc.value.outcome is not None
    with pytest.raises(FhirServerError):
        fhir.read("Patient", pid)


def test_fhir_400_carries_operation_outcome(fhir: FhirClient) -> None:
    with pytest.raises(FhirServerError) as exc:
        fhir.create({"resourceType": "Patient", "gender": "bogus"})
    assert exc.value.status_code in (400, 422)
    assert "bogus" in str(exc.value)
    assert exc.value.outcome and exc.value.outcome["resourceType"] == "OperationOutcome"


def test_fhir_validate_operation(fhir: FhirClient) -> None:
    ok = fhir.validate({"resourceType": "Patient", "gender": "male"})
    assert not [i for i in ok["issue"] if i["severity"] in ("error", "fatal")]
    bad = fhir.validate({"resourceType": "Observation", "code": {"text": "x"}})  # status missing
    assert [i for i in bad["issue"] if i["severity"] in ("error", "fatal")]


def test_fhir_server_down_names_url_quickly() -> None:
    from kaapana_fhir.dev.stack import free_port

    url = f"http://127.0.0.1:{free_port()}/fhir"
    client = FhirClient(url, timeout=(2, 5), retry=RetryPolicy(max_attempts=2, initial_wait=0.01))
    with pytest.raises(FhirConnectionError) as exc:
        client.read("Patient", "x")
    assert url in str(exc.value)


def test_fhir_wrong_base_url(fhir_url: str) -> None:
    client = FhirClient(fhir_url.replace("/fhir", "/not-fhir"), timeout=(2, 10))
    with pytest.raises(FhirServerError) as exc:
        client.read("Patient", "x")
    assert "/not-fhir" in str(exc.value)


def test_orthanc_store_search_metadata(dicomweb) -> None:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    dicomweb.store([ds])
    studies = dicomweb.search_studies({"PatientID": ds.PatientID})
    assert any(s["0020000D"]["Value"][0] == ds.StudyInstanceUID for s in studies)
    series = dicomweb.search_series(ds.StudyInstanceUID)
    assert series[0]["0020000E"]["Value"][0] == ds.SeriesInstanceUID
    meta = dicomweb.series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert meta and meta[0]["00080060"]["Value"] == ["CT"]


def test_s3_put_list_get(s3) -> None:
    bucket = "kaapana-fhir-test"
    s3.ensure_bucket(bucket)
    etag = s3.put_bytes(bucket, "fhir-import/a.csv", b"PatientID\nP1\n")
    s3.put_bytes(bucket, "other/b.csv", b"x")
    listed = list(s3.list(bucket, "fhir-import/"))
    assert [o.key for o in listed] == ["fhir-import/a.csv"] and listed[0].etag == etag
    assert s3.get_bytes(bucket, "fhir-import/a.csv") == b"PatientID\nP1\n"
