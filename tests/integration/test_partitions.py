"""Issue 16: per-project FHIR data in HAPI partitions (URL tenants ``<base>/<project>/...``), against the real
HAPI JPA server of operators/kaapana_fhir/dev/servers/hapi.

Two projects import tables with one PatientID in common through the real table-import flow; their data stay
apart (searches, reads, the cohort flow), the same PatientID gives two Patients with the same deterministic id,
and the plain base URL (the default partition) sees neither.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from kaapana_fhir.clients.fhir import FhirClient, partition_name
from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM, patient_id
from kaapana_fhir.core.tables import open_table
from kaapana_fhir.core.tables.mapping import load_preset
from kaapana_fhir.dev.synthetic_tables import synthetic_lung1_csv
from kaapana_fhir.exceptions import ResourceNotFound
from kaapana_fhir.flows.cohort.flow import build_cohort
from kaapana_fhir.flows.tables.flow import import_table

pytestmark = pytest.mark.integration
DAGS = Path(__file__).resolve().parents[2] / "dags"


def _import(client: FhirClient, ids: list[str], name: str) -> dict[str, int]:
    rep = import_table(open_table(synthetic_lung1_csv(ids).encode(), name=name), load_preset("lung1"), client=client)
    return dict(rep.resources_written)


def _identifiers(client: FhirClient, tag: str) -> set[str]:
    found = set()
    for p in client.search("Patient", {"identifier": f"{DEFAULT_PATIENT_SYSTEM}|", "_count": "200"}):
        for ident in p.get("identifier", []):
            if tag in str(ident.get("value")):
                found.add(ident["value"])
    return found


def test_two_projects_stay_apart_and_share_deterministic_ids(fhir: FhirClient) -> None:
    tag = uuid.uuid4().hex[:6].upper()
    shared, only_a, only_b = f"PART{tag}-1", f"PART{tag}-2", f"PART{tag}-3"
    a, b = fhir.for_project(f"it-a-{tag.lower()}"), fhir.for_project(f"it-b-{tag.lower()}")
    assert a.base_url.endswith(f"/it-a-{tag.lower()}") and b.base_url != a.base_url

    wrote_a = _import(a, [shared, only_a], "a.csv")
    wrote_b = _import(b, [shared, only_b], "b.csv")
    assert wrote_a["Patient"] == 2 and wrote_b["Patient"] == 2

    # searches in one project never return the other project's Patients
    assert _identifiers(a, tag) == {shared, only_a}
    assert _identifiers(b, tag) == {shared, only_b}
    assert list(a.search("Patient", {"identifier": f"{DEFAULT_PATIENT_SYSTEM}|{only_b}"})) == []
    with pytest.raises(ResourceNotFound):
        a.read("Patient", patient_id(None, only_b))

    # the same PatientID: one deterministic id, two Patients (one per partition), each with its own data
    pid = patient_id(None, shared)
    pa, pb = a.read("Patient", pid), b.read("Patient", pid)
    assert pa["id"] == pb["id"] == pid
    everywhere = list(FhirClient(f"{fhir.base_url}/_ALL").search(
        "Patient", {"identifier": f"{DEFAULT_PATIENT_SYSTEM}|{shared}"}))
    assert [p["id"] for p in everywhere] == [pid, pid]  # HAPI's all-partitions read: two Patients
    obs_a = list(a.search("Observation", {"subject": f"Patient/{pid}", "_count": "200"}))
    obs_b = list(b.search("Observation", {"subject": f"Patient/{pid}", "_count": "200"}))
    assert obs_a and {o["id"] for o in obs_a} == {o["id"] for o in obs_b}  # deterministic ids in each partition
    changed = dict(obs_a[0], note=[{"text": f"only in A {tag}"}])
    a.update(changed)
    assert "note" not in b.read("Observation", changed["id"])  # two resources, not one seen twice

    # the default partition (plain base URL) holds none of it
    assert _identifiers(fhir, tag) == set()

    # re-importing into A is idempotent inside A and leaves B untouched
    _import(a, [shared, only_a], "a.csv")
    assert a.count("Patient", {"identifier": f"{DEFAULT_PATIENT_SYSTEM}|{shared}"}) == 1
    assert b.count("Observation", {"subject": f"Patient/{pid}"}) == len(obs_b)


def test_cohort_of_a_project_never_contains_another_projects_patients(fhir: FhirClient) -> None:
    tag = uuid.uuid4().hex[:6].upper()
    a, b = fhir.for_project(f"co-a-{tag.lower()}"), fhir.for_project(f"co-b-{tag.lower()}")
    _import(a, [f"COH{tag}-1", f"COH{tag}-2"], "a.csv")
    _import(b, [f"COH{tag}-3"], "b.csv")
    built = build_cohort(a)
    ids = set(built.cohort.patients["patient_id"])  # the cohort's PatientIDs
    assert ids == {f"COH{tag}-1", f"COH{tag}-2"}  # a fresh partition: exactly project A's Patients, not B's


def test_plain_base_url_is_the_default_partition_and_names_are_checked(fhir: FhirClient) -> None:
    tag = uuid.uuid4().hex[:8]
    pid = f"dflt-{tag}"
    fhir.update({"resourceType": "Patient", "id": pid})
    assert FhirClient(f"{fhir.base_url}/DEFAULT").read("Patient", pid)["id"] == pid
    proj = fhir.for_project(f"Patient {tag}")  # a name that is not a valid partition is mapped, not rejected
    assert proj.base_url.endswith("/" + partition_name(f"Patient {tag}"))
    proj.update({"resourceType": "Patient", "id": pid})  # the same id in a project partition is allowed
    assert proj.read("Patient", pid)["id"] == pid
    with pytest.raises(ResourceNotFound, match="not valid"):
        FhirClient(f"{fhir.base_url}/never-created-{tag}").read("Patient", pid)


@pytest.mark.airflow
def test_table_import_dag_writes_into_the_runs_project(airflow_home: Path, stack_env: dict[str, str], s3: Any,
                                                       fhir: FhirClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain Airflow: the real fhir-table-import DAG with ``conf.project`` writes into that project's partition."""
    for k, v in stack_env.items():
        monkeypatch.setenv(k, v)
    from airflow.models import DagBag
    from airflow.utils.state import DagRunState

    dag = DagBag(dag_folder=str(DAGS), include_examples=False).get_dag("fhir-table-import")
    tag = uuid.uuid4().hex[:6].upper()
    bucket = f"kf-part-{tag.lower()}"
    s3.ensure_bucket(bucket)
    pid_value = f"DAG{tag}-1"
    projects = [f"dag-a-{tag.lower()}", f"dag-b-{tag.lower()}"]
    for i, project in enumerate(projects):
        key = f"fhir-import/p{i}.csv"
        s3.put_bytes(bucket, key, synthetic_lung1_csv([pid_value]).encode())
        dr = dag.test(run_conf={"bucket": bucket, "object_key": key, "preset": "lung1", "project": project})
        assert dr.state == DagRunState.SUCCESS
    pid = patient_id(None, pid_value)
    for project in projects:
        assert fhir.for_project(project).read("Patient", pid)["identifier"][0]["value"] == pid_value
    with pytest.raises(ResourceNotFound):
        fhir.read("Patient", pid)  # nothing in the default partition
