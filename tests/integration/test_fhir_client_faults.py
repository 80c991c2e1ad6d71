"""FHIR client retry policy against real HAPI behind a fault-injecting loopback proxy."""

from __future__ import annotations

import logging
import uuid

import pytest

from kaapana_fhir.clients.fhir import FhirClient, RetryPolicy
from kaapana_fhir.core.ids import patient_id
from kaapana_fhir.exceptions import FhirServerError
from tests.support.fault_proxy import FaultPlan, FaultProxy

pytestmark = pytest.mark.integration


def test_retries_503_then_succeeds(fhir_url: str, caplog: pytest.LogCaptureFixture) -> None:
    plan = FaultPlan(statuses=[503, 503, 429])
    with FaultProxy(fhir_url, plan) as proxy:
        client = FhirClient(proxy.url, retry=RetryPolicy(max_attempts=5, initial_wait=0.05, max_wait=0.2))
        pid = patient_id("urn:retry", str(uuid.uuid4()))
        with caplog.at_level(logging.WARNING, logger="kaapana_fhir.clients.fhir"):
            res = client.update({"resourceType": "Patient", "id": pid, "gender": "other"})
    assert res["id"] == pid
    assert plan.injected == 3 and client.stats.retries == 3
    assert sum("retry" in r.getMessage() for r in caplog.records) == 3
    assert FhirClient(fhir_url).read("Patient", pid)["gender"] == "other"


def test_retries_are_bounded(fhir_url: str) -> None:
    plan = FaultPlan(statuses=[503] * 10)
    with FaultProxy(fhir_url, plan) as proxy:
        client = FhirClient(proxy.url, retry=RetryPolicy(max_attempts=3, initial_wait=0.01, max_wait=0.05))
        with pytest.raises(FhirServerError) as exc:
            client.read("Patient", "x")
    assert exc.value.status_code == 503
    assert "after 3 attempts" in str(exc.value)
    assert plan.injected == 3


def test_no_retry_on_400(fhir_url: str) -> None:
    plan = FaultPlan()
    with FaultProxy(fhir_url, plan) as proxy:
        client = FhirClient(proxy.url, retry=RetryPolicy(max_attempts=5, initial_wait=0.01))
        with pytest.raises(FhirServerError) as exc:
            client.create({"resourceType": "Observation", "status": "not-a-status", "code": {"text": "x"}})
    assert exc.value.status_code in (400, 422)
    assert plan.seen == 1, "a 400 must not be retried"
    assert "not-a-status" in exc.value.diagnostics
