"""Unit tests of the bulk export client and the project (partition) helper, against HTTP mocks (``responses``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import responses

from kaapana_fhir.clients.fhir import FhirClient, RetryPolicy, partition_name
from kaapana_fhir.clients.fhir_bulk import (
    STATE_FILE,
    BulkExportCrossOrigin,
    BulkExportDownloadError,
    BulkExporter,
    BulkExportError,
    BulkExportFailed,
    BulkExportGone,
    BulkExportTimeout,
    ExportJob,
    ExportManifest,
    ExportPolicy,
    iter_ndjson,
    kickoff_path,
    retry_after_seconds,
)

BASE = "http://fhir.test/fhir"
STATUS = f"{BASE}/$export-poll-status?_jobId=j1"
P1 = {"resourceType": "Patient", "id": "p1"}
P2 = {"resourceType": "Patient", "id": "p2"}
NDJSON = (json.dumps(P1) + "\n" + json.dumps(P2) + "\n").encode()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def exporter(policy: ExportPolicy | None = None) -> tuple[BulkExporter, Clock]:
    clock = Clock()
    client = FhirClient(BASE, retry=RetryPolicy(max_attempts=1))
    return BulkExporter(client, policy or ExportPolicy(max_poll_interval=5), sleep=clock.sleep, clock=clock), clock


def manifest(*urls: str) -> dict[str, object]:
    return {"transactionTime": "2026-01-01T00:00:00Z", "request": f"{BASE}/$export", "requiresAccessToken": True,
            "output": [{"type": "Patient", "url": u} for u in urls], "error": []}


def outcome(text: str) -> dict[str, object]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing",
                                                           "diagnostics": text}]}


def add_kickoff(path: str = "$export") -> None:
    responses.get(f"{BASE}/{path}", status=202, headers={"Content-Location": STATUS})


# ---------------------------------------------------------------------------------------------- partitions
def test_partition_name_keeps_valid_names_and_maps_the_rest_stably() -> None:
    assert partition_name("admin") == "admin"
    assert partition_name(" project-A_1 ") == "project-A_1"
    mapped = partition_name("My Project.1")
    assert mapped.startswith("p-My-Project-1-") and mapped == partition_name("My Project.1")
    assert partition_name("My Project.2") != mapped
    # names HAPI (or the URL) would read as something else
    for reserved in ("Patient", "Group", "DEFAULT", "metadata", "MedicinalProduct"):
        assert partition_name(reserved) != reserved
    with pytest.raises(ValueError, match="must not be empty"):
        partition_name("  ")


@responses.activate
def test_for_project_creates_the_partition_once_and_prefixes_the_base() -> None:
    create = responses.post(f"{BASE}/$partition-management-create-partition",
                            json={"resourceType": "Parameters", "parameter": []})
    responses.get(f"{BASE}/proj-x1/Patient/a", json={"resourceType": "Patient", "id": "a"})
    root = FhirClient(BASE, token="secret")
    a = root.for_project("proj-x1")
    assert a.base_url == f"{BASE}/proj-x1" and a.project == "proj-x1" and a.session is root.session
    assert a.read("Patient", "a")["id"] == "a"
    assert responses.calls[1].request.headers["Authorization"] == "Bearer secret"
    again = a.for_project("proj-x1")  # from a project client: still one level below the root
    assert again.base_url == f"{BASE}/proj-x1"
    assert create.call_count == 1
    body = json.loads(responses.calls[0].request.body)
    assert body["parameter"][0] == {"name": "name", "valueCode": "proj-x1"}
    assert root.for_project(None) is root


@responses.activate
def test_for_project_accepts_an_existing_partition_and_explains_a_server_without_partitions() -> None:
    responses.post(f"{BASE}/$partition-management-create-partition", status=400,
                   json=outcome('HAPI-1309: Partition name "p9" is already defined'))
    assert FhirClient(BASE).for_project("p9").base_url == f"{BASE}/p9"
    other = "http://plain.test/fhir"
    responses.post(f"{other}/$partition-management-create-partition", status=400,
                   json=outcome("HAPI-0389: Invalid request: unknown operation"))
    with pytest.raises(Exception, match="cannot create the FHIR partition 'p9'.*URL-based tenants"):
        FhirClient(other).for_project("p9")


# ---------------------------------------------------------------------------------------------- kick-off / poll
def test_kickoff_path_and_retry_after() -> None:
    assert kickoff_path() == "$export"
    assert kickoff_path("patient") == "Patient/$export"
    assert kickoff_path("group", "g1") == "Group/g1/$export"
    with pytest.raises(ValueError, match="group_id"):
        kickoff_path("group")
    with pytest.raises(ValueError, match="level"):
        kickoff_path("everything")
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@responses.activate
def test_kickoff_sends_prefer_and_parameters() -> None:
    add_kickoff("Group/g1/$export")
    ex, _ = exporter()
    job = ex.kick_off("group", group_id="g1", types=["Patient", "Observation"], since="2026-01-01T00:00:00Z",
                      type_filters=["Observation?code=x"])
    assert job.status_url == STATUS
    req = responses.calls[0].request
    assert req.headers["Prefer"] == "respond-async"
    assert "_type=Patient%2CObservation" in req.url and "_typeFilter=Observation%3Fcode%3Dx" in req.url
    assert "_since=2026-01-01" in req.url


@responses.activate
def test_kickoff_without_content_location_or_to_another_origin_is_refused() -> None:
    responses.get(f"{BASE}/$export", status=202)
    ex, _ = exporter()
    with pytest.raises(BulkExportError, match="without Content-Location"):
        ex.kick_off()
    responses.replace(responses.GET, f"{BASE}/$export", status=202,
                      headers={"Content-Location": "http://evil.test/status"})
    with pytest.raises(BulkExportCrossOrigin):
        ex.kick_off()


@responses.activate
def test_wait_honours_retry_after_within_bounds() -> None:
    responses.get(STATUS, status=202, headers={"Retry-After": "120", "X-Progress": "QUEUED"})
    responses.get(STATUS, status=202, headers={"Retry-After": "0"})
    responses.get(STATUS, status=202)
    responses.get(STATUS, json=manifest(f"{BASE}/Binary/b1"))
    ex, clock = exporter(ExportPolicy(min_poll_interval=0.5, max_poll_interval=5))
    m = ex.wait(ExportJob(STATUS))
    assert clock.sleeps == [5, 0.5, 0.5]  # 120 capped at 5; 0 raised to the minimum; absent: the minimum
    assert [f.url for f in m.output] == [f"{BASE}/Binary/b1"]


@responses.activate
def test_wait_stops_at_the_deadline_with_a_clear_error() -> None:
    responses.get(STATUS, status=202, headers={"Retry-After": "3", "X-Progress": "IN_PROGRESS"})
    ex, clock = exporter(ExportPolicy(deadline=10, max_poll_interval=5))
    with pytest.raises(BulkExportTimeout, match=r"not finished after 10s .*IN_PROGRESS.*resume"):
        ex.wait(ExportJob(STATUS))
    assert clock.now == 10


@responses.activate
def test_failed_cancelled_and_unknown_jobs_raise_named_errors() -> None:
    responses.get(STATUS, status=500, json={"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "processing", "diagnostics": "Too many errors: 4"}]})
    ex, _ = exporter()
    with pytest.raises(BulkExportFailed, match="failed on the server.*Too many errors") as failed:
        ex.wait(ExportJob(STATUS))
    assert failed.value.url == STATUS
    responses.replace(responses.GET, STATUS, status=404, json={"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "not-found", "diagnostics": "Job instance <j1> was cancelled."}]})
    with pytest.raises(BulkExportGone, match="no longer exists.*was cancelled.*start a new export"):
        ex.wait(ExportJob(STATUS))


@responses.activate
def test_completed_answer_must_be_a_manifest() -> None:
    responses.get(STATUS, json={"resourceType": "Bundle"})
    ex, _ = exporter()
    with pytest.raises(BulkExportError, match="not a manifest"):
        ex.wait(ExportJob(STATUS))


# ---------------------------------------------------------------------------------------------- download
@responses.activate
def test_export_downloads_streamed_files_and_counts_resources(tmp_path: Path) -> None:
    add_kickoff()
    responses.get(STATUS, json=manifest(f"{BASE}/Binary/b1", f"{BASE}/Binary/b2"))
    responses.get(f"{BASE}/Binary/b1", body=NDJSON, content_type="application/fhir+ndjson")
    responses.get(f"{BASE}/Binary/b2", body=json.dumps(P1).encode(), content_type="application/fhir+ndjson")
    ex, _ = exporter()
    res = ex.export(tmp_path)
    assert res.counts() == {"Patient": 3}
    assert [f.resources for f in res.files] == [2, 1]  # the last line of b2 has no newline
    assert [r["id"] for r in iter_ndjson(res.files[0].path)] == ["p1", "p2"]
    assert responses.calls[2].request.headers["Accept"] == "application/fhir+ndjson"
    assert not list(tmp_path.glob("*.part"))


@responses.activate
def test_download_retries_a_broken_file_then_gives_a_clear_error_and_resumes(tmp_path: Path) -> None:
    add_kickoff()
    responses.get(STATUS, json=manifest(f"{BASE}/Binary/b1", f"{BASE}/Binary/b2"))
    responses.get(f"{BASE}/Binary/b1", body=NDJSON)
    broken = responses.get(f"{BASE}/Binary/b2", body=requests.exceptions.ChunkedEncodingError("cut off"))
    ex, _ = exporter(ExportPolicy(download_attempts=2))
    with pytest.raises(BulkExportDownloadError, match=r"Binary/b2 \(Patient\) could not be downloaded in 2 "
                                                      r"attempts.*run again with the same folder"):
        ex.export(tmp_path)
    assert broken.call_count == 2
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert list(state["files"]) == [f"{BASE}/Binary/b1"]
    # second run: no new kick-off, no new poll, b1 is not downloaded again
    responses.replace(responses.GET, f"{BASE}/Binary/b2", body=json.dumps(P2) + "\n")
    calls_before = len(responses.calls)
    res = ex.export(tmp_path)
    new_urls = [c.request.url for c in responses.calls[calls_before:]]
    assert new_urls == [f"{BASE}/Binary/b2"]
    assert res.counts() == {"Patient": 3}


@responses.activate
def test_resume_continues_polling_the_same_job(tmp_path: Path) -> None:
    kick = responses.get(f"{BASE}/$export", status=202, headers={"Content-Location": STATUS})
    responses.get(STATUS, status=202, headers={"Retry-After": "1"})
    ex, _ = exporter(ExportPolicy(deadline=0.5, max_poll_interval=1))
    with pytest.raises(BulkExportTimeout):
        ex.export(tmp_path)
    responses.replace(responses.GET, STATUS, json=manifest())
    res = ex.export(tmp_path)
    assert kick.call_count == 1 and res.files == [] and res.job.status_url == STATUS
    with pytest.raises(BulkExportError, match="belongs to another export"):
        ex.export(tmp_path, types=["Observation"])


@responses.activate
def test_expired_file_and_file_on_another_origin(tmp_path: Path) -> None:
    responses.get(f"{BASE}/Binary/gone", status=404)
    ex, _ = exporter()
    gone = ExportManifest.from_json(manifest(f"{BASE}/Binary/gone"), STATUS)
    with pytest.raises(BulkExportGone, match="is gone.*retention period.*start a new export"):
        ex.download(gone, tmp_path)
    elsewhere = ExportManifest.from_json(manifest("http://evil.test/Binary/x"), STATUS)
    with pytest.raises(BulkExportCrossOrigin):
        ex.download(elsewhere, tmp_path)


def test_iter_ndjson_names_the_bad_line(tmp_path: Path) -> None:
    f = tmp_path / "x.ndjson"
    f.write_text(json.dumps(P1) + "\n\n{not json\n")
    with pytest.raises(BulkExportError, match=r"x.ndjson: line 3 is not JSON"):
        list(iter_ndjson(f))


# ---------------------------------------------------------------------------------------------- project plumbing
def test_run_project_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    from kaapana_fhir.hooks.fhir import run_project

    monkeypatch.delenv("KAAPANA_FHIR_PARTITIONING", raising=False)
    assert run_project({"project": " lung "}) == "lung"
    assert run_project({"project_form": {"name": "kp"}}) is None  # partitioning off: the default partition
    monkeypatch.setenv("KAAPANA_FHIR_PARTITIONING", "url")
    assert run_project({"project_form": {"name": "kp"}}) == "kp"
    assert run_project({}) == "admin"  # triggered runs: Kaapana's admin project
    assert run_project({"project": "x", "project_form": {"name": "kp"}}) == "x"


@responses.activate
def test_kaapana_container_client_uses_the_runs_project(tmp_path: Path) -> None:
    from kaapana_fhir.kaapana.env import KaapanaRun
    from kaapana_fhir.kaapana.tasks import fhir_client

    responses.post(f"{BASE}/$partition-management-create-partition", json={"resourceType": "Parameters"})
    env = {"FHIR_BASE_URL": BASE, "KAAPANA_FHIR_PARTITIONING": "url"}
    k = KaapanaRun(tmp_path, conf={"fhir_base_url": BASE, "project_form": {"name": "kp-proj1"}}, env=env)
    assert fhir_client(k).base_url == f"{BASE}/kp-proj1"
    plain = KaapanaRun(tmp_path, conf={"fhir_base_url": BASE, "project_form": {"name": "kp-proj1"}},
                       env={"FHIR_BASE_URL": BASE})
    assert fhir_client(plain).base_url == BASE
