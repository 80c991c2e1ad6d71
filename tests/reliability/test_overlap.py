"""Overlapping runs (issue #11): the same import triggered twice at once, and 20 series of 4 studies arriving
together with one dicom-to-fhir run per series (Kaapana's auto-trigger). The final server state must equal
a single clean run: the same resources (ids, counts) with the same content, ignoring server metadata."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from kaapana_fhir.clients.dicomweb import DicomWeb
from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM, patient_id
from kaapana_fhir.core.tables import open_table
from kaapana_fhir.flows.dicom_to_fhir.flow import sync_studies
from kaapana_fhir.flows.tables.flow import import_table
from tests.reliability.helpers import (
    canonical,
    clean_import_bundle,
    clean_state,
    expected_from_bundle,
    long_csv,
    long_mapping,
    server_state,
    snapshot,
    store_studies,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]


def _concurrently(jobs: list[Callable[[], Any]], timeout: float = 300) -> list[Any]:
    """Run ``jobs`` on threads released together by a barrier; re-raise the first error."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            results[i] = jobs[i]()
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not errors, errors
    return results


def test_same_import_twice_at_once(fhir_url: str, tmp_path: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    mapping = long_mapping()
    data = long_csv(tag, 600)

    def job() -> dict[str, Any]:
        return import_table(open_table(data, name="twice.csv"), mapping, client=FhirClient(fhir_url), chunk_size=100)

    reports = _concurrently([job, job])
    assert [r.resources_written for r in reports] == [{"Patient": 60, "Observation": 600}] * 2

    clean = clean_import_bundle(data, "twice.csv", tmp_path / "clean.json")
    fhir = FhirClient(fhir_url)
    pids = [patient_id(DEFAULT_PATIENT_SYSTEM, f"R{tag}-{i}") for i in range(60)]
    subjects = ",".join(f"Patient/{p}" for p in pids)
    assert server_state(fhir, "Observation", {"subject": subjects}) == clean_state(clean, "Observation")
    assert server_state(fhir, "Patient", {"_id": ",".join(pids)}) == clean_state(clean, "Patient")


def test_20_series_of_4_studies_arriving_together(dicomweb_url: str, fhir_url: str) -> None:
    tag = uuid.uuid4().hex[:8]
    dicomweb = DicomWeb(dicomweb_url)
    # 4 studies × 5 series; two studies per patient, so runs also race on the shared Patient
    studies = store_studies(dicomweb, tag, 4, series_per_study=5, patients=[f"REL-{tag}-A", f"REL-{tag}-B"])
    series = [s for st in studies for s in st["series"]]
    assert len(series) == 20

    def job(series_uid: str) -> Callable[[], dict[str, Any]]:
        return lambda: sync_studies(DicomWeb(dicomweb_url), FhirClient(fhir_url), series_uids=[series_uid])

    results = _concurrently([job(s) for s in series])
    assert all(r.studies == 1 and not r.failed for r in results)

    clean = sync_studies(dicomweb, None, study_uids=[st["study"] for st in studies]).bundle
    fhir = FhirClient(fhir_url)
    pids = sorted({patient_id(DEFAULT_PATIENT_SYSTEM, st["patient"]) for st in studies})
    got_studies = snapshot(fhir, "ImagingStudy", {"subject": ",".join(f"Patient/{p}" for p in pids)})
    assert len(got_studies) == 4
    assert canonical(got_studies) == clean_state(clean, "ImagingStudy")
    assert server_state(fhir, "Patient", {"_id": ",".join(pids)}) == clean_state(clean, "Patient")
    for rtype in ("Endpoint", "Device"):
        for rid, res in expected_from_bundle(clean, rtype).items():
            assert canonical({rid: snapshot(fhir, rtype, {"_id": rid})[rid]}) == canonical({rid: res})
    # a later re-run of one series changes nothing (no new versions)
    versions = {i: fhir.read("ImagingStudy", i)["meta"]["versionId"] for i in got_studies}
    again = sync_studies(dicomweb, fhir, series_uids=[series[0]])
    assert again.resources.created == 0 and again.resources.updated == 0
    assert {i: fhir.read("ImagingStudy", i)["meta"]["versionId"] for i in got_studies} == versions
