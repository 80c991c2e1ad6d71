"""What the server stored (issue #15): every write checks the answer; 200 + OperationOutcome, HTML, a truncated
body or a dropped connection never pass as success; after an ambiguous answer the client re-reads what was
committed; credentials never leave the configured origin (next links, redirects, URL userinfo); every client
honours its timeout. All against the real HAPI / Orthanc behind the fault proxy."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import pytest

from kaapana_fhir.clients.dicomweb import DicomWeb
from kaapana_fhir.clients.fhir import (
    AmbiguousWrite,
    AnswerLost,
    CrossOriginRefused,
    FhirClient,
    UnexpectedResponse,
)
from kaapana_fhir.core.bundle import put_entry
from kaapana_fhir.exceptions import DicomWebError, FhirServerError, ResourceNotFound
from tests.reliability import outcomes
from tests.support.fault_proxy import FaultPlan, FaultProxy, RecordingServer, RedirectServer

pytestmark = [pytest.mark.reliability, pytest.mark.integration]


def _patients(tag: str, n: int) -> list[dict[str, Any]]:
    return [{"resourceType": "Patient", "id": f"rel-ans-{tag}-{i}",
             "identifier": [{"system": "urn:rel:answers", "value": f"{tag}-{i}"}], "gender": "female"}
            for i in range(n)]


def _absent(fhir: FhirClient, resources: list[dict[str, Any]]) -> bool:
    for r in resources:
        try:
            fhir.read(r["resourceType"], r["id"])
            return False
        except ResourceNotFound:
            continue
    return True


@pytest.mark.parametrize("mode", ["outcome200", "html200"])
def test_gateway_2xx_without_storing_is_an_error(fhir_url: str, fhir: FhirClient, mode: str) -> None:
    """The gateway answers 200 but nothing reached HAPI: a typed error naming the URL and what came back."""
    tag = uuid.uuid4().hex[:8]
    pats = _patients(tag, 3)
    with FaultProxy(fhir_url, FaultPlan(mode=mode, only_methods=("POST", "PUT"))) as proxy:
        client = FhirClient(proxy.url)
        with pytest.raises(FhirServerError) as exc:
            client.write_entries([put_entry(p) for p in pats])
        with pytest.raises(FhirServerError) as exc_put:
            client.update(pats[0])
    for e in (exc.value, exc_put.value):
        text = str(e)
        assert proxy.origin in text, text
        assert ("OperationOutcome" in text and "gateway: upstream unavailable" in text) if mode == "outcome200" \
            else ("text/html" in text), text
        assert "0 of" in text  # re-read found nothing stored
    assert isinstance(exc.value, AmbiguousWrite) and exc.value.committed == 0 and exc.value.total == 3
    assert _absent(fhir, pats)
    outcomes.record("clear_error", 2)


@pytest.mark.parametrize("mode", ["truncate", "truncate_eof", "drop_after_send"])
def test_answer_lost_after_commit_is_resolved_by_re_reading(fhir_url: str, fhir: FhirClient, mode: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """HAPI committed, the answer was cut off / dropped: the client re-reads and finds everything stored."""
    tag = uuid.uuid4().hex[:8]
    pats = _patients(tag, 4)
    with FaultProxy(fhir_url, FaultPlan(mode=mode, only_methods=("POST", "PUT"), times=2)) as proxy, \
            caplog.at_level(logging.WARNING, "kaapana_fhir.clients.fhir"):
        client = FhirClient(proxy.url)
        counts = client.write_entries([put_entry(p) for p in pats[:3]])
        stored = client.update(pats[3])
    assert proxy.plan.mode_applied == 2
    assert counts.types == {"Patient": 3} and counts.statuses == {"200": 3} and counts.chunks == 1
    assert stored["id"] == pats[3]["id"] and stored["meta"]["versionId"] == "1"
    assert sum("re-read shows all" in r.getMessage() for r in caplog.records) == 2
    for p in pats:  # exactly once, version 1: nothing duplicated, nothing lost
        assert fhir.read("Patient", p["id"])["meta"]["versionId"] == "1"
    outcomes.record("recovered", 2)


def test_answer_lost_before_commit_is_an_error(fhir_url: str, fhir: FhirClient) -> None:
    """The answer is cut off and the server did NOT store it (rejected transaction): AmbiguousWrite, 0 of n."""
    tag = uuid.uuid4().hex[:8]
    pats = _patients(tag, 2)
    bad = {"resourceType": "Patient", "id": f"rel-ans-{tag}-bad", "gender": "not-a-gender"}
    with FaultProxy(fhir_url, FaultPlan(mode="truncate", only_methods=("POST",))) as proxy, \
            pytest.raises(AmbiguousWrite) as exc:
        FhirClient(proxy.url).write_entries([put_entry(p) for p in [*pats, bad]])
    assert exc.value.committed == 0 and exc.value.total == 3 and proxy.origin in str(exc.value)
    assert "cut off" in str(exc.value)
    assert _absent(fhir, pats)
    outcomes.record("clear_error")


def test_transaction_response_is_checked_entry_by_entry(fhir_url: str) -> None:
    """A transaction-response with fewer entries or a non-2xx entry is an error (checked on a real answer)."""
    client = FhirClient(fhir_url)
    sent = {"type": "transaction", "entry": [{"request": {"url": "Patient/a"}}, {"request": {"url": "Patient/b"}}]}
    for answer, rule in (
        ({"resourceType": "Bundle", "type": "batch-response", "entry": [{}, {}]}, "not 'transaction-response'"),
        ({"resourceType": "Bundle", "type": "transaction-response", "entry": [{"response": {"status": "201"}}]},
         "1 entries for 2 requests"),
        ({"resourceType": "Bundle", "type": "transaction-response",
          "entry": [{"response": {"status": "201 Created"}}, {"response": {"status": "409 Conflict"}}]},
         "entry 1 (Patient/b): 409 Conflict"),
    ):
        with pytest.raises(UnexpectedResponse) as exc:
            client.check_transaction_response(sent, answer, url=fhir_url)
        assert rule in str(exc.value) and fhir_url in str(exc.value)
        outcomes.record("clear_error")


def test_search_html_and_truncated_answers_name_url_and_content_type(fhir_url: str) -> None:
    for mode, expect in (("html200", "text/html"), ("truncate_eof", "application/fhir+json")):
        with FaultProxy(fhir_url, FaultPlan(mode=mode, only_methods=("GET",))) as proxy, \
                pytest.raises(FhirServerError) as exc:
            list(FhirClient(proxy.url).search("Patient", {"_count": "1"}))
        assert proxy.origin + "/fhir/Patient" in str(exc.value) and expect in str(exc.value), str(exc.value)
        outcomes.record("clear_error")


def test_cross_origin_next_link_gets_no_credentials(fhir_url: str, fhir: FhirClient) -> None:
    tag = uuid.uuid4().hex[:8]
    pats = _patients(tag, 5)
    fhir.write_entries([put_entry(p) for p in pats])
    token = f"SECRET{tag}"
    with RecordingServer() as foreign, FaultProxy(
            fhir_url, FaultPlan(mode="cross_origin_next", only_methods=("GET",), foreign_origin=foreign.origin)
    ) as proxy:
        client = FhirClient(proxy.url, token=token)
        client.session.cookies.set("JSESSIONID", f"COOKIE{tag}")
        with pytest.raises(CrossOriginRefused) as exc:
            list(client.search("Patient", {"identifier": "urn:rel:answers|", "_count": "2",
                                           "_id": ",".join(p["id"] for p in pats)}))
    assert foreign.received == []  # nothing at all was sent to the other origin
    assert foreign.origin.replace("http://", "") in str(exc.value) and token not in str(exc.value)
    assert proxy.plan.received and all(a == f"Bearer {token}" for _, _, a, _ in proxy.plan.received)
    outcomes.record("clear_error")


def test_redirect_to_another_origin_is_refused(fhir_url: str) -> None:
    token = f"SECRET{uuid.uuid4().hex[:8]}"
    with RecordingServer() as foreign, RedirectServer(foreign.origin, 302) as redirect:
        client = FhirClient(redirect.origin + "/fhir", token=token, basic_auth=None)
        with pytest.raises(CrossOriginRefused):
            client.read("Patient", "x")
    assert foreign.received == [] and redirect.received == [f"Bearer {token}"]
    # same-origin redirects are followed (e.g. a trailing-slash redirect of the real server)
    with RedirectServer("") as same:
        same_origin = FhirClient(same.origin + "/fhir", token=token)
        with pytest.raises(UnexpectedResponse, match="more than 5 redirects"):
            same_origin.read("Patient", "x")
    outcomes.record("clear_error", 2)


def test_url_userinfo_never_reaches_errors_or_logs(fhir_url: str, caplog: pytest.LogCaptureFixture) -> None:
    secret = f"pw{uuid.uuid4().hex[:10]}"
    host = fhir_url.split("://", 1)[1]
    with caplog.at_level(logging.DEBUG):
        client = FhirClient(f"http://alice:{secret}@{host}")
        client.capabilities()  # credentials work as basic auth (HAPI ignores them)
        with FaultProxy(fhir_url, FaultPlan(mode="html200")) as proxy:
            bad = FhirClient(f"http://alice:{secret}@{proxy.url.split('://', 1)[1]}")
            with pytest.raises(FhirServerError) as exc:
                bad.capabilities()
        dw = DicomWeb(f"http://bob:{secret}@127.0.0.1:9/dicom-web", timeout=2)
        with pytest.raises(DicomWebError) as dexc:
            dw.search_studies({})
    assert secret not in client.base_url and secret not in dw.url and secret not in dw.wado_rs_base
    texts = [str(exc.value), repr(exc.value), str(dexc.value), caplog.text,
             *(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)]
    assert [t for t in texts if secret in t] == []
    assert len(caplog.records) > 3
    outcomes.record("no_leak", 3)


@pytest.mark.parametrize("timeout", [1.0, 3.0])
def test_every_client_honours_its_timeout(fhir_url: str, dicomweb_url: str, timeout: float) -> None:
    with FaultProxy(dicomweb_url, FaultPlan(mode="stall", stall_s=60)) as dproxy:
        t0 = time.perf_counter()
        with pytest.raises(DicomWebError) as exc:
            DicomWeb(dproxy.url, timeout=timeout).search_studies({"PatientID": "x"})
        took = time.perf_counter() - t0
    assert timeout * 0.9 <= took < timeout * 2 + 1.5, took
    assert f"within {timeout}s" in str(exc.value) and dproxy.origin in str(exc.value)
    with FaultProxy(fhir_url, FaultPlan(mode="stall", stall_s=60)) as fproxy:
        t0 = time.perf_counter()
        with pytest.raises(AnswerLost):
            FhirClient(fproxy.url, timeout=timeout).read("Patient", "x")
        took = time.perf_counter() - t0
    assert timeout * 0.9 <= took < timeout * 2 + 1.5, took
    outcomes.record("clear_error", 2)
    outcomes.record("no_hang", 2)
