"""Hostile server answers end as typed, named errors: a body nested 100,000 levels deep (error or success
status) or with a 5,000-digit integer never escapes as RecursionError/ValueError."""

from __future__ import annotations

import pytest
import responses

from kaapana_fhir.clients.fhir import FhirClient, RetryPolicy, UnexpectedResponse
from kaapana_fhir.exceptions import FhirServerError

BASE = "http://fhir.test/fhir"
DEEP = ("[" * 100_000 + "]" * 100_000).encode()
BIG_INT = b'{"resourceType": "Patient", "id": "p", "x": ' + b"9" * 5000 + b"}"


@pytest.mark.parametrize("status", [400, 422, 500])
@pytest.mark.parametrize("body", [DEEP, BIG_INT], ids=["deep", "bigint"])
@responses.activate
def test_error_answer_with_hostile_body_is_a_server_error(status: int, body: bytes) -> None:
    responses.add(responses.GET, f"{BASE}/Patient/p", body=body, status=status, content_type="application/fhir+json")
    client = FhirClient(BASE, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(FhirServerError) as exc:
        client.read("Patient", "p")
    assert f"HTTP {status}" in str(exc.value) and "fhir.test" in str(exc.value)


@pytest.mark.parametrize("body", [DEEP, BIG_INT], ids=["deep", "bigint"])
@responses.activate
def test_success_answer_with_hostile_body_is_unexpected_response(body: bytes) -> None:
    responses.add(responses.GET, f"{BASE}/Patient/p", body=body, status=200, content_type="application/fhir+json")
    with pytest.raises(UnexpectedResponse, match="not FHIR JSON"):
        FhirClient(BASE, retry=RetryPolicy(max_attempts=1)).read("Patient", "p")
