"""Issue 19: FHIR Bulk Data ``$export`` on our HAPI app (system, Patient and Group level, in a project partition)
through clients/fhir_bulk.py: kick-off, polling, NDJSON download; resource counts equal the search counts;
cancelled, unknown and expired jobs give clear errors; a re-run resumes instead of starting again.
``kaapana-fhir cohort --bulk`` builds the same cohort as paging searches; an export whose downloads break off
fails with a clear error and the same folder resumes the same job."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from kaapana_fhir.cli.main import main as cli_main
from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.clients.fhir_bulk import (
    STATE_FILE,
    BulkExportDownloadError,
    BulkExporter,
    BulkExportGone,
    ExportJob,
    ExportPolicy,
    iter_ndjson,
)
from kaapana_fhir.core import bundle
from kaapana_fhir.core.cohort import tables as C
from kaapana_fhir.core.ids import patient_id
from kaapana_fhir.core.tables import open_table
from kaapana_fhir.core.tables.mapping import load_preset
from kaapana_fhir.dev.synthetic_tables import lung1_ids, synthetic_lung1_csv
from kaapana_fhir.flows.cohort.flow import build_cohort
from kaapana_fhir.flows.tables.flow import import_table
from tests.support.cohort_data import cohort_resources
from tests.support.fault_proxy import FaultPlan, FaultProxy

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

POLICY = ExportPolicy(deadline=240, min_poll_interval=0.5, max_poll_interval=2)
N_PATIENTS = 25


@pytest.fixture(scope="module")
def project(fhir_url: str) -> tuple[FhirClient, list[str], dict[str, int]]:
    """A fresh project partition with a synthetic Lung1 table imported through the real flow."""
    tag = uuid.uuid4().hex[:6]
    client = FhirClient(fhir_url).for_project(f"bulk-{tag}")
    ids = lung1_ids(N_PATIENTS, prefix=f"BULK{tag}-")
    rep = import_table(open_table(synthetic_lung1_csv(ids).encode(), name="bulk.csv"), load_preset("lung1"),
                       client=client)
    return client, ids, dict(rep.resources_written)


def test_system_export_counts_equal_search_counts(project: tuple[FhirClient, list[str], dict[str, int]],
                                                  tmp_path: Path) -> None:
    client, _, written = project
    t0 = time.perf_counter()
    res = BulkExporter(client, POLICY).export(tmp_path)
    elapsed = time.perf_counter() - t0
    counts = res.counts()
    expected = {t: client.count(t) for t in counts}
    assert counts == expected
    assert counts["Patient"] == N_PATIENTS and counts["Observation"] == written["Observation"]
    assert set(counts) >= {t for t, n in written.items() if n and t in ("Patient", "Observation", "Condition")}
    for f in res.files:
        assert f.path.is_file() and sum(1 for _ in iter_ndjson(f.path)) == f.resources
        assert {r["resourceType"] for r in iter_ndjson(f.path)} == {f.type}
    log.info("bulk export %d resources: %.1fs job, %.2fs download, %.1fs total", sum(counts.values()),
             res.seconds_waiting, res.seconds_downloading, elapsed)


def test_patient_and_group_level_exports(project: tuple[FhirClient, list[str], dict[str, int]],
                                         tmp_path: Path) -> None:
    client, ids, _ = project
    ex = BulkExporter(client, POLICY)
    res = ex.export(tmp_path / "patient", "patient", types=["Patient", "Observation"])
    assert res.counts() == {"Patient": client.count("Patient"), "Observation": client.count("Observation")}

    members = [patient_id(None, pid) for pid in ids[:2]]
    group = {"resourceType": "Group", "id": f"g-{uuid.uuid4().hex[:8]}", "type": "person", "actual": True,
             "member": [{"entity": {"reference": f"Patient/{m}"}} for m in members]}
    client.update(group)
    res = ex.export(tmp_path / "group", "group", group_id=group["id"], types=["Patient", "Observation"])
    counts = res.counts()
    assert counts["Patient"] == 2
    obs_of_members = sum(client.count("Observation", {"subject": f"Patient/{m}"}) for m in members)
    assert counts["Observation"] == obs_of_members
    exported = {r["id"] for f in res.files if f.type == "Patient" for r in iter_ndjson(f.path)}
    assert exported == set(members)


def test_other_projects_are_not_exported(project: tuple[FhirClient, list[str], dict[str, int]],
                                         fhir_url: str, tmp_path: Path) -> None:
    client, _, _ = project
    other = FhirClient(fhir_url).for_project(f"bulk-other-{uuid.uuid4().hex[:6]}")
    other.update({"resourceType": "Patient", "id": "someone-else"})
    res = BulkExporter(client, POLICY).export(tmp_path, types=["Patient"])
    ids = {r["id"] for f in res.files for r in iter_ndjson(f.path)}
    assert "someone-else" not in ids and len(ids) == N_PATIENTS


def test_cancelled_unknown_and_expired_jobs_give_clear_errors(
        project: tuple[FhirClient, list[str], dict[str, int]], tmp_path: Path) -> None:
    client, _, _ = project
    ex = BulkExporter(client, POLICY)
    job = ex.kick_off(types=["Patient"])
    ex.cancel(job)
    with pytest.raises(BulkExportGone, match=r"no longer exists.*cancelled"):
        ex.wait(job)

    unknown = ExportJob(f"{client.base_url}/$export-poll-status?_jobId=no-such-job-{uuid.uuid4().hex[:6]}")
    with pytest.raises(BulkExportGone, match="no longer exists"):
        ex.wait(unknown)

    manifest = ex.wait(ex.kick_off(types=["Patient"]))
    binary_id = manifest.output[0].url.rstrip("/").rsplit("/", 1)[-1]
    client.delete("Binary", binary_id)  # what the server's retention clean-up does after bulk_export retention
    with pytest.raises(BulkExportGone, match=r"is gone.*start a new export"):
        ex.download(manifest, tmp_path)


def test_rerun_resumes_the_same_job_and_downloads_only_missing_files(
        project: tuple[FhirClient, list[str], dict[str, int]], tmp_path: Path) -> None:
    client, _, _ = project
    ex = BulkExporter(client, POLICY)
    first = ex.export(tmp_path)
    assert len(first.files) >= 2
    lost = first.files[-1]
    lost.path.unlink()  # a run that died after the first files
    state = json.loads((tmp_path / STATE_FILE).read_text())
    second = ex.export(tmp_path)
    assert second.job.status_url == first.job.status_url == state["status_url"]  # no new kick-off
    assert second.counts() == first.counts()
    assert [f.path.name for f in second.files] == [f.path.name for f in first.files]


# ---------------------------------------------------------------------------------------------- cohort --bulk
@pytest.fixture(scope="module")
def cohort_project(fhir_url: str) -> tuple[FhirClient, str, list[dict]]:
    """A fresh project partition with synthetic cohort resources (patients, clinical and radiomics
    Observations, conditions, imaging studies, segments)."""
    project = f"cohort-bulk-{uuid.uuid4().hex[:6]}"
    client = FhirClient(fhir_url).for_project(project)
    res = cohort_resources(f"urn:test:bulk-cohort:{project}", 8, n_clinical=5, n_features=4, n_segments=1)
    client.write_entries([bundle.put_entry(r) for r in res], chunk_size=400)
    return client, project, res


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(list(df.columns[:1])).reset_index(drop=True)


def test_cli_cohort_bulk_equals_the_paging_cohort(cohort_project: tuple[FhirClient, str, list[dict]],
                                                  tmp_path: Path) -> None:
    client, _, res = cohort_project
    paging, bulk = tmp_path / "paging" / "cohort.parquet", tmp_path / "bulk" / "cohort.parquet"
    assert cli_main(["cohort", "--fhir", client.base_url, "--out", str(paging)]) == 0
    assert cli_main(["cohort", "--fhir", client.base_url, "--bulk", str(tmp_path / "export"),
                     "--out", str(bulk)]) == 0
    a, b = _sorted(C.read_table(paging)), _sorted(C.read_table(bulk))
    assert len(a) == 8 and a.shape[1] > 10
    pd.testing.assert_frame_equal(a, b)
    for name in ("series", "data_dictionary"):
        pd.testing.assert_frame_equal(_sorted(C.read_table(paging.with_name(f"{name}.parquet"))),
                                      _sorted(C.read_table(bulk.with_name(f"{name}.parquet"))))
    exported = {f.name for f in (tmp_path / "export").glob("*.ndjson")}
    assert {n.split("-", 1)[1] for n in exported} >= {"Patient.ndjson", "Observation.ndjson", "Condition.ndjson"}
    assert sum(1 for f in (tmp_path / "export").glob("*.ndjson") for _ in iter_ndjson(f)) == len(res)


def test_bulk_cohort_whose_download_fails_midway_fails_clearly_then_resumes(
        cohort_project: tuple[FhirClient, str, list[dict]], tmp_path: Path) -> None:
    client, project, _ = cohort_project
    root = client.root_url or client.base_url
    folder = tmp_path / "export"
    policy = ExportPolicy(deadline=240, min_poll_interval=0.5, max_poll_interval=2, download_attempts=2)
    # every export file download is cut off after the server sent it (Content-Length promised, half the body)
    plan = FaultPlan(mode="truncate", path_contains="/Binary/", only_methods=("GET",))
    with FaultProxy(root, plan) as proxy:
        via_proxy = FhirClient(proxy.url).for_project(project)
        with pytest.raises(BulkExportDownloadError,
                           match=r"could not be downloaded in 2 attempts.*run again with the same folder") as err:
            build_cohort(via_proxy, bulk_folder=folder, bulk_policy=policy)
        assert "/Binary/" in str(err.value) and plan.mode_applied >= 2
        state = json.loads((folder / STATE_FILE).read_text())
        assert state["manifest"]["output"] and not state["files"]  # job done, no file complete
        assert not list(folder.glob("*.ndjson")) and not list(folder.glob("*.part"))
        kickoffs = sum(1 for m, p, _, _ in plan.received if "$export" in p and "poll" not in p)
        # the connection recovers: the same folder resumes the same job (no new kick-off) and builds the cohort
        plan.mode = None
        built = build_cohort(via_proxy, bulk_folder=folder, bulk_policy=policy)
        assert sum(1 for m, p, _, _ in plan.received if "$export" in p and "poll" not in p) == kickoffs == 1
    paging = build_cohort(client)
    assert len(built.cohort.patients) == len(paging.cohort.patients) == 8
    pd.testing.assert_frame_equal(_sorted(built.cohort.table), _sorted(paging.cohort.table))
    assert json.loads((folder / STATE_FILE).read_text())["status_url"] == state["status_url"]
