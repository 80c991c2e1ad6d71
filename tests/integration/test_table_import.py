"""Issue #5 end to end: tables uploaded to S3 → the real watcher DAG decides → the import DAG writes HAPI.

Synthetic values only (never real NSCLC-Radiomics rows). The watcher DAG really runs (``dag.test``) and
its TriggerDagRun task creates the import runs; the test then executes the import DAG with the confs the
watcher produced (there is no scheduler in tests).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from kaapana_fhir.clients.fhir import WriteResult
from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM, patient_id
from kaapana_fhir.dev.synthetic_tables import synthetic_lung1_csv
from tests.support.table_dags import DAGS, load_table_dags, run_import, run_watcher

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

DICTIONARY = '''"Variable / Field Name","Form Name","Section Header","Field Type","Field Label",\
"Choices, Calculations, OR Slider Labels","Field Note","Text Validation Type OR Show Slider Number"
record_id,demographics,,text,Record ID,,,
sex,demographics,,radio,Sex,"1, Male | 2, Female",,
ecog,demographics,,dropdown,ECOG,"0, Fully active | 1, Restricted",,
visit_date,visits,,text,Visit date,,,date_ymd
weight,visits,,text,Weight,,,number
'''


def _redcap_export(tag: str) -> str:
    return (f"record_id,redcap_repeat_instrument,redcap_repeat_instance,sex,ecog,visit_date,weight\n"
            f"RC{tag}-1,,,1,0,,\nRC{tag}-1,visits,1,,,2021-01-05,71.5\nRC{tag}-1,visits,2,,,2021-02-05,70.0\n"
            f"RC{tag}-2,,,2,1,,\n")


@pytest.fixture()
def dags(airflow_home: Path, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for k, v in stack_env.items():
        monkeypatch.setenv(k, v)
    return load_table_dags()


def _triggered_runs(since_count: int) -> list[Any]:
    from airflow.models import DagRun

    return DagRun.find(dag_id="fhir-table-import")[since_count:]


def test_upload_watch_import_reimport(dags: dict[str, Any], s3: Any, fhir: Any) -> None:
    from airflow.models import DagRun

    tag = uuid.uuid4().hex[:8]
    bucket = f"kf-tables-{tag}"
    s3.ensure_bucket(bucket)
    ids = [f"LUNG1-{tag}-{i:03d}" for i in range(1, 7)]
    lung1 = synthetic_lung1_csv(ids, seed=11)
    s3.put_bytes(bucket, "fhir-import/lung1.csv", lung1.encode())
    s3.put_bytes(bucket, "fhir-import/lung1.preset", b"lung1\n")
    s3.put_bytes(bucket, "fhir-import/redcap/export.csv", _redcap_export(tag).encode())
    s3.put_bytes(bucket, "fhir-import/redcap/export.dictionary.csv", DICTIONARY.encode())
    s3.put_bytes(bucket, "fhir-import/redcap/export.preset", b"redcap")

    before = len(DagRun.find(dag_id="fhir-table-import"))
    _, confs = run_watcher(dags["watcher"], bucket)
    assert sorted(c["object_key"] for c in confs) == ["fhir-import/lung1.csv", "fhir-import/redcap/export.csv"]
    triggered = _triggered_runs(before)
    assert sorted(r.conf["object_key"] for r in triggered) == sorted(c["object_key"] for c in confs)
    for conf in confs:
        run_import(dags["import"], conf)

    # Lung1: Patient ids are identifiers.patient_id(system, PatientID), as the DICOM flow computes them
    for pid in ids:
        pat = fhir.read("Patient", patient_id(DEFAULT_PATIENT_SYSTEM, pid))
        assert pat["identifier"][0] == {"system": DEFAULT_PATIENT_SYSTEM, "value": pid}
    p1 = patient_id(DEFAULT_PATIENT_SYSTEM, ids[0])
    obs = list(fhir.search("Observation", {"subject": f"Patient/{p1}", "_count": "50"}))
    texts = {o["code"]["text"] for o in obs}
    assert {"clinical.T.Stage", "Clinical.N.Stage", "Clinical.M.Stage", "Survival.time"} <= texts
    assert fhir.count("Condition", {"subject": f"Patient/{p1}"}) == 1
    report = json.loads(s3.get_bytes(bucket, "fhir-import/lung1.import-report.json"))
    assert report["status"] == "imported" and report["rows_read"] == 6 and report["resources_written"]["Patient"] == 6

    # REDCap: repeating instrument instances are separate Observations on one Patient; one identifier system per
    # project (the project name comes from the export's file name)
    rc1 = patient_id("urn:kaapana-fhir:redcap:export:record-id", f"RC{tag}-1")
    assert fhir.read("Patient", rc1)["gender"] == "male"
    weights = sorted(o["valueQuantity"]["value"] for o in fhir.search(
        "Observation", {"subject": f"Patient/{rc1}", "code:text": "weight"}) if o["code"]["text"] == "weight")
    assert weights == [70, 71.5]
    rc_report = json.loads(s3.get_bytes(bucket, "fhir-import/redcap/export.import-report.json"))
    assert rc_report["rows_read"] == 4 and rc_report["status"] == "imported"

    # second watcher run: nothing to import, nothing triggered
    before = len(DagRun.find(dag_id="fhir-table-import"))
    _, confs2 = run_watcher(dags["watcher"], bucket)
    assert confs2 == [] and _triggered_runs(before) == []

    # a corrected file: one cell changed → only that Observation gets a new version
    lines = lung1.splitlines()
    cells = lines[1].split(",")
    old_surv = int(cells[8])
    cells[8] = str(old_surv + 17)
    lines[1] = ",".join(cells)
    surv = next(o for o in obs if o["code"]["text"] == "Survival.time")
    age_obs = next((o for o in obs if o["code"]["text"] == "age"), None)
    s3.put_bytes(bucket, "fhir-import/lung1.csv", ("\n".join(lines) + "\n").encode())
    _, confs3 = run_watcher(dags["watcher"], bucket)
    assert [c["object_key"] for c in confs3] == ["fhir-import/lung1.csv"]
    run_import(dags["import"], confs3[0])
    new_surv = fhir.read("Observation", surv["id"])
    assert new_surv["valueQuantity"]["value"] == old_surv + 17
    assert int(new_surv["meta"]["versionId"]) == int(surv["meta"]["versionId"]) + 1
    if age_obs:
        assert fhir.read("Observation", age_obs["id"])["meta"]["versionId"] == age_obs["meta"]["versionId"]
    assert fhir.count("Observation", {"subject": f"Patient/{p1}"}) == len(obs)  # no duplicates


def test_server_down_mid_file_leaves_complete_chunks_and_retry_finishes(fhir: Any) -> None:
    from kaapana_fhir.core.tables import load_preset, open_table
    from kaapana_fhir.exceptions import FhirConnectionError
    from kaapana_fhir.flows.tables.flow import import_table

    class DiesAfter:
        """The real client, but the server 'goes down' after ``n`` committed transactions."""

        def __init__(self, real: Any, n: int) -> None:
            self.real, self.left = real, n

        def search(self, *a: Any, **kw: Any) -> Any:
            return self.real.search(*a, **kw)

        def write_entries(self, entries: list[dict], **kw: Any) -> WriteResult:
            if self.left == 0:
                raise FhirConnectionError("FHIR server at http://fhir is unreachable (simulated)")
            self.left -= 1
            return self.real.write_entries(entries, **kw)

    tag = uuid.uuid4().hex[:8]
    ids = [f"LUNG1-{tag}-{i:03d}" for i in range(1, 11)]
    text = synthetic_lung1_csv(ids, seed=4).encode()
    pids = [patient_id(DEFAULT_PATIENT_SYSTEM, p) for p in ids]
    subjects = ",".join(f"Patient/{p}" for p in pids)

    def counts() -> tuple[int, int, int]:
        return (fhir.count("Patient", {"_id": ",".join(pids)}), fhir.count("Observation", {"subject": subjects}),
                fhir.count("Condition", {"subject": subjects}))

    with pytest.raises(FhirConnectionError):
        import_table(open_table(text, name="l.csv"), load_preset("lung1"), client=DiesAfter(fhir, 2), chunk_size=20)
    partial = counts()
    # exactly two complete transactions: all 10 Patients first (their own chunk), then 20 other entries
    assert partial[0] == 10 and sum(partial) == 30
    rep = import_table(open_table(text, name="l.csv"), load_preset("lung1"), client=fhir, chunk_size=20)
    expected = rep.resources_written
    assert counts() == (expected["Patient"], expected["Observation"], expected["Condition"])
    import_table(open_table(text, name="l.csv"), load_preset("lung1"), client=fhir, chunk_size=20)
    assert counts() == (expected["Patient"], expected["Observation"], expected["Condition"])  # no duplicates


# ---------------------------------------------------------------------------------------------------------------
# Issue 17: a new user's path (init → edit → plan → import), real-world REDCap/ODM exports, empty cells, conflicts
DATA = Path(__file__).resolve().parents[1] / "data" / "tables"


def _cli(*args: str) -> int:
    from kaapana_fhir.cli.main import main

    return main(list(args))


def _finish_generated_mapping(path: Path) -> None:
    """What the tutorial tells the user to do: drop the centre column, check suggestions, delete `review:`."""
    from kaapana_fhir.core.limits import loads_yaml

    m = loads_yaml(path.read_text("utf-8"))
    m["observations"] = [o for o in m["observations"] if o["column"] != "Zentrum"]

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k != "review"}
        return [strip(v) for v in x] if isinstance(x, list) else x

    import yaml

    path.write_text(yaml.safe_dump(strip(m), sort_keys=False, allow_unicode=True), encoding="utf-8")


def _plan(fhir_url: str, csv: Path, mapping: Path, tmp: Path, *extra: str) -> dict[str, Any]:
    rep = tmp / f"plan-{uuid.uuid4().hex[:6]}.json"
    assert _cli("import-table", str(csv), "--mapping", str(mapping), "--fhir", fhir_url, "--plan",
                "--report", str(rep), *extra) == 0
    return json.loads(rep.read_text())


def test_tutorial_table_without_id_from_init_to_hapi(fhir: Any, fhir_url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    csv = tmp_path / f"survival_{tag}.csv"
    csv.write_text((DATA / "tutorial" / "survival_no_id.csv").read_text("utf-8"), encoding="utf-8")
    mapping = tmp_path / "survival.mapping.yaml"
    assert _cli("mapping", "init", str(csv), "-o", str(mapping)) == 0
    text = mapping.read_text("utf-8")
    assert "key_generated: row-number" in text and "review:" in text and "30525-0" in text
    # the untouched generated mapping is refused, nothing written
    assert _cli("import-table", str(csv), "--mapping", str(mapping), "--fhir", fhir_url) != 0
    system = f"urn:kaapana-fhir:table:survival-{tag}:row-number"
    assert list(fhir.search("Patient", {"identifier": f"{system}|", "_count": "50"})) == []
    _finish_generated_mapping(mapping)
    plan = _plan(fhir_url, csv, mapping, tmp_path)["plan"]
    assert plan["Patient"]["create"] == 6 and plan["Observation"]["create"] > 30
    assert plan["Observation"]["update"] == plan["Observation"]["unchanged"] == 0
    report = tmp_path / "r.json"
    assert _cli("import-table", str(csv), "--mapping", str(mapping), "--fhir", fhir_url, "--report", str(report)) == 0
    written = json.loads(report.read_text())["resources_written"]
    assert written["Patient"] == 6 and written["Observation"] == plan["Observation"]["create"]
    pats = list(fhir.search("Patient", {"identifier": f"{system}|", "_count": "50"}))
    assert len(pats) == 6
    age = list(fhir.search("Observation", {"code": "http://loinc.org|30525-0",
                                      "subject": f"Patient/{patient_id(system, '2')}"}))
    assert age[0]["valueQuantity"] == {"value": 63, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}
    again = _plan(fhir_url, csv, mapping, tmp_path)["plan"]
    assert again["Observation"]["create"] == again["Observation"]["update"] == 0
    assert again["Observation"]["unchanged"] == written["Observation"]
    # a cell becomes empty in a newer file: keep (default) leaves it, retract marks it entered-in-error
    csv.write_text(csv.read_text("utf-8").replace("C,74,m,80 kg,", "C,74,m,,"), encoding="utf-8")
    assert _plan(fhir_url, csv, mapping, tmp_path)["plan"]["Observation"]["retract"] == 0
    assert _plan(fhir_url, csv, mapping, tmp_path, "--empty-cells", "retract")["plan"]["Observation"]["retract"] == 1
    assert _cli("import-table", str(csv), "--mapping", str(mapping), "--fhir", fhir_url, "--empty-cells", "retract",
                "--report", str(report)) == 0
    assert json.loads(report.read_text())["retracted"] == 1
    weight = list(fhir.search("Observation", {"code": "http://loinc.org|29463-7",
                                         "subject": f"Patient/{patient_id(system, '6')}"}))
    assert [w["status"] for w in weight] == ["entered-in-error"]
    assert _plan(fhir_url, csv, mapping, tmp_path, "--empty-cells", "retract")["plan"]["Observation"]["retract"] == 0


def test_real_world_redcap_export_with_dictionary_to_hapi(fhir: Any, fhir_url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    export = tmp_path / f"Lung{tag}_DATA_2026-05-04_1200.csv"
    export.write_bytes((DATA / "redcap" / "LungImaging_DATA_2026-05-04_1200.csv").read_bytes())
    report = tmp_path / "r.json"
    assert _cli("import-table", str(export), "--preset", "redcap", "--dictionary",
                str(DATA / "redcap" / "LungImaging_DataDictionary_2026-05-04.csv"), "--fhir", fhir_url,
                "--workers", "2", "--report", str(report)) == 0
    system = f"urn:kaapana-fhir:redcap:lung{tag}:record-id"
    pat = fhir.read("Patient", patient_id(system, "LI-002"))
    assert (pat["gender"], pat["birthDate"], pat["deceasedBoolean"]) == ("male", "1948-11-30", True)
    crp = list(fhir.search("Observation", {"code": "http://loinc.org|1988-5", "subject": f"Patient/{pat['id']}"}))
    assert len(crp) == 1 and crp[0]["valueQuantity"]["code"] == "mg/L" and crp[0]["effectiveDateTime"] == "2020-01-14"


def test_odm_file_to_hapi_with_coded_observations(fhir: Any, fhir_url: str, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    assert _cli("import-table", str(DATA / "odm" / "lung_study.odm.xml"), "--preset", "odm", "--fhir", fhir_url,
                "--report", str(report)) == 0
    pat = fhir.read("Patient", patient_id("urn:kaapana-fhir:odm:s-lungsyn:subject", "SYN-01"))
    assert (pat["gender"], pat["birthDate"]) == ("female", "1957-02-11")
    hgb = list(fhir.search("Observation", {"code": "http://loinc.org|718-7", "subject": f"Patient/{pat['id']}"}))
    assert sorted(h["effectiveDateTime"] for h in hgb) == ["2021-03-01", "2021-03-08", "2021-09-01"]


def test_same_patient_in_two_files_with_conflicting_birth_dates_is_reported(fhir: Any, fhir_url: str,
                                                                             tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    mapping = tmp_path / "m.yaml"
    mapping.write_text(f"version: 1\npatient: {{key: id, identifier_system: 'urn:test:{tag}', "
                       "birth_date: {column: dob}}\n"
                       "observations: [{column: w, code: {system: 'http://loinc.org', code: 29463-7}, "
                       "value: {type: Quantity, unit: kg}}]\n", encoding="utf-8")
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("id,dob,w\nP1,1950-01-01,70\n", encoding="utf-8")
    b.write_text("id,dob,w\nP1,1951-01-01,71\n", encoding="utf-8")
    assert _cli("import-table", str(a), "--mapping", str(mapping), "--fhir", fhir_url) == 0
    pid = patient_id(f"urn:test:{tag}", "P1")
    plan = _plan(fhir_url, b, mapping, tmp_path)
    assert plan["patient_conflicts_policy"] == "keep"
    assert plan["conflicts"] == [{"patient": f"Patient/{pid}", "key": "P1", "element": "birthDate",
                                  "existing": "1950-01-01", "existing_source": "table:a.csv",
                                  "incoming": "1951-01-01", "incoming_source": "table:b.csv", "kept": "existing"}]
    # default policy keep: the first file's birth date stays on HAPI, the conflict is in the report
    report = tmp_path / "r.json"
    assert _cli("import-table", str(b), "--mapping", str(mapping), "--fhir", fhir_url, "--report", str(report)) == 0
    rep = json.loads(report.read_text())
    assert rep["status"] == "imported-with-conflicts"
    assert [(c["element"], c["existing_source"], c["incoming_source"]) for c in rep["patient_conflicts"]] == [
        ("birthDate", "table:a.csv", "table:b.csv")]
    assert fhir.read("Patient", pid)["birthDate"] == "1950-01-01"
    # a corrected a.csv is a correction, applied without a conflict
    a.write_text("id,dob,w\nP1,1950-01-02,70\n", encoding="utf-8")
    assert _cli("import-table", str(a), "--mapping", str(mapping), "--fhir", fhir_url, "--report", str(report)) == 0
    rep = json.loads(report.read_text())
    assert rep["status"] == "imported" and rep["patient_corrections"] == 1
    assert fhir.read("Patient", pid)["birthDate"] == "1950-01-02"
    # fail: refused before anything is written; replace: b.csv's value wins
    strict = tmp_path / "strict.yaml"
    strict.write_text(mapping.read_text() + "patient_conflicts: fail\n", encoding="utf-8")
    assert _cli("import-table", str(b), "--mapping", str(strict), "--fhir", fhir_url, "--report", str(report)) == 1
    assert json.loads(report.read_text())["patient_conflicts"][0]["existing"] == "1950-01-02"
    weights = list(fhir.search("Observation", {"subject": f"Patient/{pid}", "code": "http://loinc.org|29463-7"}))
    assert [o["valueQuantity"]["value"] for o in weights] == [70]
    loose = tmp_path / "loose.yaml"
    loose.write_text(mapping.read_text() + "patient_conflicts: replace\n", encoding="utf-8")
    assert _cli("import-table", str(b), "--mapping", str(loose), "--fhir", fhir_url) == 0
    pat = fhir.read("Patient", pid)
    assert pat["birthDate"] == "1951-01-01" and pat["_birthDate"]["extension"][0]["valueString"] == "table:b.csv"


def test_failed_trigger_is_retried_and_rejected_import_fails_its_run_with_a_report(dags: dict[str, Any], s3: Any,
                                                                                  fhir: Any) -> None:
    from airflow.models import DagModel, DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    from kaapana_fhir.flows.tables import watch as W

    tag = uuid.uuid4().hex[:8]
    bucket = f"kf-trig-{tag}"
    s3.ensure_bucket(bucket)
    ids = [f"LUNG1-{tag}-{i:03d}" for i in range(1, 4)]
    bad = synthetic_lung1_csv(ids, seed=5).splitlines()
    header = bad[0].split(",")
    cells = bad[1].split(",")
    cells[header.index("age")] = "-3"  # below the preset's minimum age
    bad[1] = ",".join(cells)
    s3.put_bytes(bucket, "fhir-import/bad.csv", ("\n".join(bad) + "\n").encode())
    s3.put_bytes(bucket, "fhir-import/bad.preset", b"lung1\n")
    # 1. the import DAG is not registered yet (as before the scheduler parsed it): the trigger fails
    with create_session() as session:
        session.query(DagModel).filter(DagModel.dag_id == "fhir-table-import").delete()
    dr = dags["watcher"].test(run_conf={"bucket": bucket, "prefix": "fhir-import/"})
    assert dr.state == DagRunState.FAILED
    assert s3.head(bucket, W.state_key("fhir-import/bad.csv")) is None  # no state: nothing lost
    # 2. once the DAG is registered, the next watcher run triggers it
    from airflow.models import DagBag

    DagBag(dag_folder=str(DAGS), include_examples=False).sync_to_db()
    before = len(DagRun.find(dag_id="fhir-table-import"))
    run_id, confs = run_watcher(dags["watcher"], bucket)
    assert [c["object_key"] for c in confs] == ["fhir-import/bad.csv"] and len(_triggered_runs(before)) == 1
    state = json.loads(s3.get_bytes(bucket, W.state_key("fhir-import/bad.csv")))
    assert state["status"] == "pending" and state["run_id"]
    # 3. the import rejects the file: its DAG run fails, and the report is written all the same
    imp = dags["import"].test(run_conf=confs[0])
    assert imp.state == DagRunState.FAILED
    report = json.loads(s3.get_bytes(bucket, "fhir-import/bad.import-report.json"))
    assert report["status"] == "rejected" and report["rejected"][0]["column"] == "age"
    assert json.loads(s3.get_bytes(bucket, W.state_key("fhir-import/bad.csv")))["status"] == "rejected"
    assert list(fhir.search("Patient", {"identifier": f"{DEFAULT_PATIENT_SYSTEM}|{ids[1]}"})) == []
