"""FHIR → cohort against the real stack: the fhir-cohort DAG, HL7 R4 examples, the analysis notebook."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.clients.s3 import ObjectStore
from kaapana_fhir.core import bundle
from kaapana_fhir.core.cohort import report as R
from kaapana_fhir.core.cohort import tables as C
from kaapana_fhir.core.validate import validate_resource
from kaapana_fhir.flows.cohort.flow import fetch_and_flatten, load_views, run_cohort
from tests.support.cohort_data import patient_resources

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES_TGZ = "hl7.fhir.r4.examples-4.0.1.tgz"
EXAMPLE_TYPES = ("Patient", "Observation", "Condition", "ImagingStudy", "BodyStructure")


@pytest.fixture(scope="module")
def lung_cohort(stack: Any) -> dict[str, Any]:
    """12 synthetic patients following core/codes.py; 3 forced to adenocarcinoma + IIIa."""
    fhir = FhirClient(stack.fhir_url)
    system = f"urn:test:cohort:{uuid.uuid4().hex[:10]}"
    res: list[dict[str, Any]] = []
    for i in range(12):
        ov = {"histology": "adenocarcinoma", "stage": "IIIa"} if i < 3 else \
            ({"histology": "squamous cell carcinoma"} if i < 8 else {"stage": "I"})
        res.extend(patient_resources(system, f"L{i:03d}", n_clinical=6, n_features=8, n_segments=2,
                                     text_overrides=ov))
    for r in res[:40]:
        validate_resource(r)
    fhir.write_entries([bundle.put_entry(r) for r in res], chunk_size=400)
    adeno_iiia = {r["id"] for r in res if r["resourceType"] == "Patient"
                  and int(r["identifier"][0]["value"][1:]) < 3}
    ct_series = sorted(s["uid"] for r in res if r["resourceType"] == "ImagingStudy"
                       and r["subject"]["reference"].split("/")[1] in adeno_iiia
                       for s in r["series"] if s["modality"]["code"] == "CT")
    return {"system": system, "resources": res, "adeno_iiia": adeno_iiia, "ct_series": ct_series}


def test_flow_with_patient_search_and_chained_has_search(fhir: FhirClient, lung_cohort: dict[str, Any],
                                                         tmp_path: Path) -> None:
    system = lung_cohort["system"]
    s = run_cohort(fhir, tmp_path / "a", patient_search=f"Patient?identifier={system}|",
                   filters=["Histology=adenocarcinoma", "Overall.Stage=IIIa"], count=50)
    assert s.patients == 12 and s.selected_patients == 3
    assert s.dataset["data_form"]["identifiers"] == lung_cohort["ct_series"]
    # explicit searches: _has (reverse chain) selects patients, _revinclude brings their data
    searches = [(f"Patient?identifier={system}|&_has:Observation:subject:code="
                 "urn:kaapana-fhir:CodeSystem:pyradiomics-feature|shape_MeshVolume&_revinclude=ImagingStudy:subject"),
                f"Observation?subject.identifier={system}|&_count=200",
                f"Condition?subject:Patient.identifier={system}|&_include=Condition:subject"]
    s2 = run_cohort(fhir, tmp_path / "b", searches=searches, filters=["Histology=adenocarcinoma"], count=5)
    adeno = {r["subject"]["reference"] for r in lung_cohort["resources"] if r["resourceType"] == "Condition"
             and r["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "35917007"}
    assert s2.resources["Patient"] == 12 and s2.resources["ImagingStudy"] == 12 and len(adeno) >= 3
    assert s2.requests > 3, "paging with _count=5 needs several pages"
    t = C.read_table(tmp_path / "b" / "cohort.parquet")
    assert set(t["Histology"].dropna()) == {"adenocarcinoma"} and t["patient_key"].nunique() == len(adeno)


@pytest.mark.airflow
def test_fhir_cohort_dag_writes_table_dataset_report_and_triggers(
        airflow_home: Path, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, s3: ObjectStore,
        lung_cohort: dict[str, Any], tmp_path: Path) -> None:
    from airflow.models import DagBag, DagRun

    for k, v in stack_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("KAAPANA_FHIR_RUNTIME", "airflow")
    monkeypatch.setenv("AIRFLOW_WORKFLOW_DIR", str(tmp_path / "workflows"))
    bag = DagBag(dag_folder=str(REPO / "dags" / "dag_fhir_cohort.py"), include_examples=False)
    assert bag.import_errors == {}
    dag = bag.get_dag("fhir-cohort")
    assert dag.default_args["ui_forms"]["workflow_form"]["properties"]["filters"]
    from airflow.models.serialized_dag import SerializedDagModel

    dag.sync_to_db()  # the trigger target must be a known, serialized DAG (the scheduler does this when deployed)
    SerializedDagModel.write_dag(dag)
    bucket = f"project-cohort-{uuid.uuid4().hex[:8]}"
    conf = {"workflow_form": {"patient_search": f"Patient?identifier={lung_cohort['system']}|",
                              "filters": "Histology=adenocarcinoma; Overall.Stage=IIIa", "modality": "CT",
                              "dataset_name": "adeno-iiia", "trigger_dag_id": "fhir-cohort"},
            "project_form": {"s3_bucket": bucket, "name": "test"}}
    dr = dag.test(run_conf=conf)
    assert str(dr.state).endswith("success"), dr.state
    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    assert all(str(tis[t].state).endswith("success") for t in ("fhir-query", "cohort-report", "trigger-downstream"))
    q = tis["fhir-query"].xcom_pull(task_ids="fhir-query")
    json.dumps(q)
    assert q["patients"] == 12 and q["selected_patients"] == 3
    assert q["trigger_conf"]["data_form"] == {"dataset_name": "adeno-iiia", "identifiers": lung_cohort["ct_series"]}
    out = Path(q["out_dir"])
    assert out.is_relative_to(tmp_path / "workflows")
    table = pd.read_parquet(out / "cohort.parquet")
    assert set(table["patient_key"]) == lung_cohort["adeno_iiia"]
    assert len(table) == 6 and table["segment_key"].notna().all(), "one row per patient and segment"
    assert json.loads((out / "dataset.json").read_text())["data_form"]["identifiers"] == lung_cohort["ct_series"]
    keys = {o.key for o in s3.list(bucket)}
    assert {f"{q['prefix']}/cohort.parquet", f"{q['prefix']}/cohort.csv", f"{q['prefix']}/dataset.json",
            f"{q['prefix']}/report.html"} <= keys
    html = s3.get_bytes(bucket, f"{q['prefix']}/report.html").decode()
    assert "DICOM data completeness" in html and "Overall.Stage" in html
    triggered = [r for r in DagRun.find(dag_id="fhir-cohort") if r.run_id != dr.run_id
                 and (r.conf or {}).get("data_form", {}).get("dataset_name") == "adeno-iiia"]
    assert triggered and triggered[-1].conf["data_form"]["identifiers"] == lung_cohort["ct_series"]
    assert triggered[-1].conf["project_form"]["s3_bucket"] == bucket


def test_view_run_over_the_server_and_semicolon_filters(fhir: FhirClient, lung_cohort: dict[str, Any],
                                                         tmp_path: Path) -> None:
    """`kaapana-fhir view run --fhir` pages the view's resource type; the README's ';'-separated --where
    selects the same 3 patients as two separate filters."""
    from kaapana_fhir.cli.main import main

    system = lung_cohort["system"]
    out = tmp_path / "patients.json"
    assert main(["view", "run", "patient", "--fhir", fhir.base_url, "--search", f"identifier={system}|&_count=5",
                 "--format", "json", "--out", str(out)]) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert len(rows) == 12 and {r["identifier_system"] for r in rows} == {system}
    s = run_cohort(fhir, tmp_path / "c", patient_search=f"Patient?identifier={system}|",
                   filters=["Histology=adenocarcinoma; Overall.Stage=IIIa"], count=50)
    assert s.selected_patients == 3 and s.filters == ["Histology=adenocarcinoma", "Overall.Stage=IIIa"]
    assert s.dropped == {}
    assert (tmp_path / "c" / "data_dictionary.csv").is_file()


def _examples(tmp: Path) -> list[dict[str, Any]]:
    """Every non-Bundle resource of the npm package ``hl7.fhir.r4.examples`` (CC0), fetched with ``npm pack``."""
    tgz = Path("/tmp") / EXAMPLES_TGZ
    if not tgz.is_file():
        res = subprocess.run(["npm", "pack", "hl7.fhir.r4.examples@4.0.1", "--silent"], cwd="/tmp",
                             capture_output=True, text=True, timeout=600, check=False)
        if res.returncode != 0 or not tgz.is_file():
            pytest.fail(f"npm pack hl7.fhir.r4.examples failed: {res.stderr[-500:]}")
    out = []
    with tarfile.open(tgz) as tf:
        for m in tf.getmembers():
            if m.isfile() and m.name.endswith(".json") and "/" in m.name and m.name.count("/") == 1:
                try:
                    r = json.loads(tf.extractfile(m).read())  # type: ignore[union-attr]
                except ValueError:
                    continue
                if isinstance(r, dict) and r.get("id") and r.get("resourceType") not in (None, "Bundle"):
                    out.append(r)
    return out


def _references(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        ref = obj.get("reference")
        if isinstance(ref, str) and ref.count("/") == 1 and not ref.startswith(("#", "urn:", "http")):
            yield ref
        for v in obj.values():
            yield from _references(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _references(v)


def _load_with_references(fhir: FhirClient, selected: list[dict[str, Any]], index: dict[str, dict[str, Any]],
                          tag: str) -> set[str]:
    """PUT ``selected`` and the example resources they reference (transitively) in batch rounds, so that
    HAPI's referential integrity holds; returns the ``Type/id`` keys the server accepted."""
    todo: dict[str, dict[str, Any]] = {}
    stack = [f"{r['resourceType']}/{r['id']}" for r in selected]
    while stack:
        key = stack.pop()
        if key in todo or key not in index:
            continue
        todo[key] = index[key]
        stack.extend(_references(index[key]))
    accepted: set[str] = set()
    for _round in range(6):
        entries = []
        for key, r in todo.items():
            if key in accepted:
                continue
            r = json.loads(json.dumps(r))
            r.setdefault("meta", {}).setdefault("tag", []).append({"system": "urn:test", "code": tag})
            r["meta"].pop("versionId", None)
            entries.append({"resource": r, "request": {"method": "PUT", "url": key}})
        if not entries:
            break
        # a batch where some entries may fail (examples referencing what HAPI lacks): read the per-entry answers
        # ourselves; FhirClient.transaction() rightly raises unless every entry was stored
        result = fhir.request("POST", "", json_body={"resourceType": "Bundle", "type": "batch",
                                                     "entry": entries}).json()
        new = {e["request"]["url"] for e, res in zip(entries, result["entry"], strict=False)
               if res["response"]["status"][:1] == "2"}
        if not new:
            break
        accepted |= new
    return accepted


def _assert_lossless(cohort: C.Cohort, resources: list[dict[str, Any]]) -> None:
    """Every diagnosis of every patient is kept; blood pressure components are columns with their unit;
    Observations that cannot join a patient (Group / contained / no subject) are counted as dropped."""
    p = cohort.patients.set_index("patient_key")
    per_patient: dict[str, int] = {}
    for r in resources:
        ref = (r.get("subject") or {}).get("reference", "") if r["resourceType"] == "Condition" else ""
        if ref.startswith("Patient/"):
            per_patient[ref.split("/")[1]] = per_patient.get(ref.split("/")[1], 0) + 1
    assert per_patient and max(per_patient.values()) >= 3
    for pid, n in per_patient.items():
        assert len(p.loc[pid, "conditions"]) == n, f"Patient/{pid}: {n} Conditions, kept {p.loc[pid, 'conditions']}"
    assert "f001" in set(C.filter_patients(cohort.patients, ["Condition~NSCLC"])["patient_key"])
    sys_col = "loinc_8480_6_systolic_blood_pressure_mm_hg"
    dia_col = "loinc_8462_4_diastolic_blood_pressure_mm_hg"
    assert {sys_col, dia_col} <= set(cohort.clinical_variables)
    assert p.loc["example", sys_col] == 107 and p.loc["example", dia_col] == 60  # Observation/blood-pressure
    assert cohort.units[sys_col] == "mm[Hg]"
    assert all(len(c) <= 60 for c in cohort.clinical_variables)
    n_lost = sum(1 for r in resources if r["resourceType"] == "Observation"
                 and not str((r.get("subject") or {}).get("reference", "")).startswith("Patient/")
                 and not any(str(c.get("system", "")).startswith("urn:kaapana") for c in r["code"].get("coding", [])))
    assert sum(v for k, v in cohort.dropped.items() if k.startswith("Observation")) == n_lost


def test_hl7_r4_examples_flatten_without_error(fhir: FhirClient, tmp_path: Path) -> None:
    everything = _examples(tmp_path)
    index = {f"{r['resourceType']}/{r['id']}": r for r in everything}
    resources = [r for r in everything if r["resourceType"] in EXAMPLE_TYPES]
    by_type = pd.Series([r["resourceType"] for r in resources]).value_counts().to_dict()
    assert by_type.get("Patient", 0) >= 10 and by_type.get("Observation", 0) >= 40 and by_type.get("ImagingStudy")
    views = load_views()
    # 1) the example files themselves (all of them, also those a server may reject)
    rows = {n: list(v.run(resources)) for n, v in views.items()}
    assert len(rows["patient"]) == by_type["Patient"]
    assert len(rows["imaging_series"]) >= 2 and rows["clinical_observation"]
    cohort = C.build_cohort(rows)
    assert len(cohort.patients) >= by_type["Patient"]
    _assert_lossless(cohort, resources)
    R.render_cohort(cohort)
    # 2) loaded into HAPI (with what they reference), fetched back with paging and flattened
    tag = f"hl7-examples-{uuid.uuid4().hex[:8]}"
    accepted = _load_with_references(fhir, resources, index, tag)
    ours = {k for k in accepted if k.split("/")[0] in EXAMPLE_TYPES}
    assert len(ours) >= len(resources) * 0.5, f"only {len(ours)} of {len(resources)} examples were accepted by HAPI"
    searches = [f"{t}?_tag=urn:test|{tag}" for t in EXAMPLE_TYPES]
    fetched, flat = fetch_and_flatten(fhir, views, searches=searches, count=20)
    assert sum(fetched.count().values()) == len(ours)
    assert len(flat["patient"]) == fetched.count().get("Patient", 0) > 0
    c2 = C.build_cohort(flat)
    assert len(c2.patients) >= len(flat["patient"])
    _assert_lossless(c2, [index[k] for k in ours])
    assert "ImagingStudy/example" in ours
    study = next(r for r in flat["imaging_study"] if r["study_key"] == "example")
    assert study["study_uid"] and study["patient_key"]


def test_notebook_runs_against_the_stack(stack: Any, lung_cohort: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                         artifacts_dir: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("FHIR_BASE_URL", stack.fhir_url)
    monkeypatch.setenv("COHORT_PATIENT_SEARCH", f"Patient?identifier={lung_cohort['system']}|")
    monkeypatch.delenv("COHORT_TABLE", raising=False)
    nb = nbformat.read(REPO / "operators" / "kaapana_fhir" / "dev" / "notebooks" / "cohort_analysis.ipynb",
                       as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    text = io.StringIO()
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            assert o.get("output_type") != "error", o
            text.write(json.dumps(o.get("data", {}).get("text/plain", "")) + str(o.get("text", "")))
    out = text.getvalue()
    assert "24 rows, 12 patients" in out and "log-rank" in json.dumps([c.get("outputs") for c in nb.cells])
    nbformat.write(nb, artifacts_dir / "cohort_analysis.executed.ipynb")

