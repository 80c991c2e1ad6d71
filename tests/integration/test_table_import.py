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

from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM, patient_id
from kaapana_fhir.dev.synthetic_tables import synthetic_lung1_csv

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

DAGS = Path(__file__).resolve().parents[2] / "dags"
DICTIONARY = '''"Variable / Field Name","Form Name","Section Header","Field Type","Field Label","Choices, Calculations, OR Slider Labels","Field Note","Text Validation Type OR Show Slider Number"
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
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(DAGS), include_examples=False)
    assert not {k: v for k, v in bag.import_errors.items() if "table" in k or "watcher" in k}
    watcher, imp = bag.get_dag("fhir-import-watcher"), bag.get_dag("fhir-table-import")
    bag.sync_to_db()  # TriggerDagRunOperator needs the target DAG in the metadata DB
    return {"watcher": watcher, "import": imp}


def _run_watcher(dag: Any, bucket: str) -> tuple[str, list[dict[str, Any]]]:
    from airflow.models import XCom
    from airflow.utils.state import DagRunState

    dr = dag.test(run_conf={"bucket": bucket, "prefix": "fhir-import/"})
    assert dr.state == DagRunState.SUCCESS
    confs = XCom.get_one(run_id=dr.run_id, dag_id=dag.dag_id, task_id="find-new-objects", key="return_value")
    return dr.run_id, list(confs or [])


def _triggered_runs(since_count: int) -> list[Any]:
    from airflow.models import DagRun

    return DagRun.find(dag_id="fhir-table-import")[since_count:]


def _run_import(dag: Any, conf: dict[str, Any]) -> None:
    from airflow.utils.state import DagRunState

    dr = dag.test(run_conf=conf)
    assert dr.state == DagRunState.SUCCESS


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
    _, confs = _run_watcher(dags["watcher"], bucket)
    assert sorted(c["object_key"] for c in confs) == ["fhir-import/lung1.csv", "fhir-import/redcap/export.csv"]
    triggered = _triggered_runs(before)
    assert sorted(r.conf["object_key"] for r in triggered) == sorted(c["object_key"] for c in confs)
    for conf in confs:
        _run_import(dags["import"], conf)

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

    # REDCap: repeating instrument instances are separate Observations on one Patient
    rc1 = patient_id(DEFAULT_PATIENT_SYSTEM, f"RC{tag}-1")
    assert fhir.read("Patient", rc1)["gender"] == "male"
    weights = sorted(o["valueQuantity"]["value"] for o in fhir.search(
        "Observation", {"subject": f"Patient/{rc1}", "code:text": "weight"}) if o["code"]["text"] == "weight")
    assert weights == [70, 71.5]
    rc_report = json.loads(s3.get_bytes(bucket, "fhir-import/redcap/export.import-report.json"))
    assert rc_report["rows_read"] == 4 and rc_report["status"] == "imported"

    # second watcher run: nothing to import, nothing triggered
    before = len(DagRun.find(dag_id="fhir-table-import"))
    _, confs2 = _run_watcher(dags["watcher"], bucket)
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
    _, confs3 = _run_watcher(dags["watcher"], bucket)
    assert [c["object_key"] for c in confs3] == ["fhir-import/lung1.csv"]
    _run_import(dags["import"], confs3[0])
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

        def write_entries(self, entries: list[dict], **kw: Any) -> dict[str, int]:
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
    assert sum(partial) == 40  # exactly two complete chunks of 20 entries
    rep = import_table(open_table(text, name="l.csv"), load_preset("lung1"), client=fhir, chunk_size=20)
    expected = rep["resources_written"]
    assert counts() == (expected["Patient"], expected["Observation"], expected["Condition"])
    import_table(open_table(text, name="l.csv"), load_preset("lung1"), client=fhir, chunk_size=20)
    assert counts() == (expected["Patient"], expected["Observation"], expected["Condition"])  # no duplicates
