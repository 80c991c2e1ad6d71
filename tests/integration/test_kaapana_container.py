"""The four Kaapana container tasks through the contract harness (tests/support/kaapana_contract).

Each test builds OUR Kaapana operator (with the harness standing in for Kaapana 0.6.0's plugin), turns it
into the pod Kaapana 0.6.0 would start (no command/args; env from ``KaapanaBaseOperator.__init__`` +
``execute``; ``workflow_form`` keys upper-cased as ``str()``; conf.json; secret env), runs the processing
image's real ENTRYPOINT/CMD with exactly that env against the local stack, and checks that the task did
ITS OWN flow's work (issue 21 failure 1: every task ran ``dicom-to-fhir``).
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from kaapana_fhir.core.ids import patient_id
from kaapana_fhir.dev.synthetic_tables import synthetic_lung1_csv
from tests.support.kaapana_contract import PLUGIN_DIR
from tests.support.kaapana_contract import pod as contract

pytestmark = pytest.mark.integration

IN_DIR = "get-input-data"
#: what Kaapana's Airflow pod has in its env (values never contacted unless a test says so)
PLATFORM = {
    "KEYCLOAK_URL": "http://127.0.0.1:9/keycloak-unused",
    "KUBE_HELM_URL": "http://kube-helm-service.admin.svc:5000",
    "OPENSEARCH_URL": "opensearch-service.services.svc:9200",
    "DICOM_WEB_FILTER_URL": "http://dicom-web-filter-service.services.svc:8080",
    "NOTIFICATION_URL": "http://notification-service.services.svc:80",
    "AII_URL": "http://aii-service.services.svc:8080",
    "KAAPANA_BACKEND_URL": "http://kaapana-backend-service.services.svc:5000",
    "MINIO_URL": "minio-service.services.svc:9000",
    "SERVICES_NAMESPACE": "services",
    "ADMIN_NAMESPACE": "admin",
    "DEFAULT_REGISTRY": "registry.example.org/kaapana",
    "KAAPANA_BUILD_VERSION": "0.6.0",
}
SECRETS = {
    "KAAPANA_PROJECT_USER_NAME": "kaapana-project-user",
    "KAAPANA_PROJECT_USER_PASSWORD": "not-a-real-password",
    "KAAPANA_CLIENT_SECRET": "not-a-real-secret",
}
OPERATORS = {
    "dicom-to-fhir": "DicomToFhirKaapanaOperator",
    "import-table": "CsvImportKaapanaOperator",
    "radiomics": "RadiomicsToFhirKaapanaOperator",
    "cohort": "FhirQueryKaapanaOperator",
}


@dataclass
class Platform:
    """Builds our operators with the harness plugin and runs their pods."""

    root: Path
    platform: dict[str, str]
    secrets: dict[str, str]

    def operator(self, task: str, **kwargs: Any) -> Any:
        import importlib

        from airflow import DAG

        from kaapana_fhir.kaapana.runtime import FLOWS

        module_name, _, cls_name = FLOWS[task][1].partition(":")
        cls = getattr(importlib.import_module(module_name), cls_name)
        assert cls.__name__ == OPERATORS[task]
        dag = DAG(dag_id=f"contract-{task}", schedule=None, start_date=None)
        return cls(dag=dag, **kwargs)

    def run(self, op: Any, conf: dict[str, Any], run_id: str, dag_id: str = "test-dag") -> contract.PodOutcome:
        pod = op.build_pod(conf, run_id, dag_id, op.task_id, self.secrets)
        assert pod.command is None and pod.args is None
        return contract.run_pod(pod, self.root)

    def run_dir(self, run_id: str) -> Path:
        return self.root / run_id


@pytest.fixture()
def kaapana(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack_env: dict[str, str], airflow_home: Path
) -> Iterator[Platform]:
    """The harness plugin on sys.path (removed again afterwards), the platform env, site settings pointing
    at the local stack (what the workflow chart's settings Job writes), a workflow root."""
    settings = tmp_path / "kaapana_fhir_settings.json"
    settings.write_text(json.dumps({"fhir_base_url": stack_env["FHIR_BASE_URL"],
                                    "dicomweb_url": stack_env["DICOMWEB_URL"]}), encoding="utf-8")
    monkeypatch.setenv("KAAPANA_FHIR_SETTINGS", str(settings))
    for key, value in PLATFORM.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    before = set(sys.modules)
    try:
        yield Platform(tmp_path / "workflows", dict(PLATFORM), dict(SECRETS))
    finally:
        for name in set(sys.modules) - before:
            if name == "kaapana" or name.startswith(("kaapana.", "kaapana_fhir.kaapana.operators")):
                del sys.modules[name]


def ct_instance(path: Path, *, pid: str, study: str, series: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientBirthDate = pid, "Test^Kaapana", "F", "19700101"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyDate, ds.StudyTime, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "20240102", "101500", "CT", 3, 1
    ds.StudyDescription, ds.SeriesDescription, ds.AccessionNumber = "Thorax", "axial", "ACC" + pid[-6:]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _run_id(task: str) -> str:
    return f"{task}-{uuid.uuid4().hex[:12]}"


def test_pod_env_is_kaapanas_and_names_the_task(kaapana: Platform) -> None:
    """No command/args; the task travels in env_vars; form keys override operator env; Kaapana's ids win."""
    op = kaapana.operator("dicom-to-fhir", flow_params={"timezone": "UTC", "wado": "never"})
    assert op.cmds == [] and op.arguments == []
    pod = op.build_pod({"workflow_form": {"timezone": "Europe/Berlin", "single_execution": False,
                                          "task_id": "spoofed"}}, "r1", "dicom-to-fhir", op.task_id, SECRETS)
    env = pod.env_dict()
    assert pod.command is None and pod.args is None
    assert env["KAAPANA_FHIR_TASK"] == "dicom-to-fhir"
    assert env["TIMEZONE"] == "Europe/Berlin" and env["WADO"] == "never"  # form beats operator env_vars
    assert env["SINGLE_EXECUTION"] == "False"  # str(value), not JSON
    assert env["TASK_ID"] == "dicom-to-fhir" and env["RUN_ID"] == "r1"  # set after the form keys
    assert env["WORKFLOW_DIR"] == "/kaapana/mounted/data/r1" and env["BATCHES_INPUT_DIR"].endswith("/r1/batch")
    assert "OPERATOR_IN_DIR" not in env  # no input operator → not set at all
    assert [k for k, _ in pod.env[:3]] == list(contract.SECRET_ENV)
    assert env["FHIR_BASE_URL"]  # site settings of the workflow chart


def test_dicom_to_fhir_task_writes_imaging_studies(kaapana: Platform, fhir: Any) -> None:
    system = f"urn:test:kaapana-contract:{uuid.uuid4().hex[:8]}"
    pid, study, series = f"KC-{uuid.uuid4().hex[:8]}", generate_uid(), [generate_uid(), generate_uid()]
    op = kaapana.operator("dicom-to-fhir", operator_in_dir=IN_DIR)
    run_id = _run_id("dicom")
    for i, s in enumerate(series):
        for j in range(2):
            ct_instance(kaapana.run_dir(run_id) / "batch" / s / IN_DIR / f"{i}-{j}.dcm", pid=pid, study=study, series=s)
    conf = {"workflow_form": {"patient_system": system, "include_device": False, "single_execution": False},
            "project_form": {"name": "admin", "s3_bucket": "project-admin"}}
    out = kaapana.run(op, conf, run_id)
    assert out.state == "success", out.stderr[-3000:]
    assert out.result["task"] == "dicom-to-fhir"
    assert out.result["result"]["studies"] == 1 and out.result["result"]["series"] == 2
    assert out.result["result"]["params"] == {"patient_system": system, "include_device": False}
    patient = fhir.read("Patient", patient_id(system, pid))
    studies = list(fhir.search("ImagingStudy", {"subject": f"Patient/{patient['id']}"}))
    assert len(studies) == 1 and studies[0]["numberOfSeries"] == 2
    # idempotent Kaapana retry
    again = kaapana.run(op, conf, run_id)
    assert again.state == "success" and again.result["result"]["resources"]["created"] == 0


def test_import_table_task_imports_the_table(kaapana: Platform, fhir: Any) -> None:
    ids = [f"KCT-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    op = kaapana.operator("import-table", operator_in_dir=IN_DIR)
    run_id = _run_id("table")
    table = kaapana.run_dir(run_id) / IN_DIR / "clinical.csv"  # batch-level input
    table.parent.mkdir(parents=True)
    table.write_text(synthetic_lung1_csv(ids, seed=3), encoding="utf-8")
    out = kaapana.run(op, {"workflow_form": {"preset": "lung1", "skip_invalid_rows": False}}, run_id)
    assert out.state == "success", out.stderr[-3000:]
    assert out.result["task"] == "import-table"
    rep = out.result["result"]["tables"][0]
    assert rep["file"] == "clinical.csv" and rep["rows_read"] == 3 and rep["rows_rejected"] == 0
    assert fhir.count("Patient", {"identifier": ",".join(ids)}) == 3


def test_cohort_task_writes_tables_and_the_downstream_file(kaapana: Platform, fhir: Any) -> None:
    """Cohort → downstream without XCom: ``downstream.json`` in the run's OPERATOR_OUT_DIR."""
    system = f"urn:test:kaapana-cohort:{uuid.uuid4().hex[:8]}"
    pid = f"KCC-{uuid.uuid4().hex[:8]}"
    seed_op = kaapana.operator("dicom-to-fhir", operator_in_dir=IN_DIR)
    seed_run = _run_id("seed")
    series = generate_uid()
    ct_instance(kaapana.run_dir(seed_run) / "batch" / series / IN_DIR / "a.dcm", pid=pid, study=generate_uid(),
                series=series)
    assert kaapana.run(seed_op, {"workflow_form": {"patient_system": system}}, seed_run).state == "success"
    op = kaapana.operator("cohort", name="fhir-query")
    run_id = _run_id("cohort")
    conf = {"workflow_form": {"patient_search": f"Patient?identifier={system}|{pid}", "modality": "CT",
                              "trigger_dag_id": "radiomics-to-fhir", "upload": False},
            "project_form": {"name": "admin", "s3_bucket": "project-admin"}}
    out = kaapana.run(op, conf, run_id)
    assert out.state == "success", out.stderr[-3000:]
    assert out.result["task"] == "cohort" and out.result["result"]["patients"] == 1
    out_dir = kaapana.run_dir(run_id) / "fhir-query"
    assert (out_dir / "report.html").is_file()
    downstream = json.loads((out_dir / "downstream.json").read_text())
    assert downstream["trigger_dag_id"] == "radiomics-to-fhir"
    assert downstream["conf"]["data_form"]["identifiers"] == [series]
    assert downstream["conf"]["project_form"]["s3_bucket"] == "project-admin"


def test_tasks_without_input_are_skipped_with_126(kaapana: Platform) -> None:
    for task in ("dicom-to-fhir", "import-table", "radiomics"):
        op = kaapana.operator(task, operator_in_dir=IN_DIR)
        run_id = _run_id("empty")
        (kaapana.run_dir(run_id) / "batch" / "1.2.3" / IN_DIR).mkdir(parents=True)
        out = kaapana.run(op, {"workflow_form": {}, "data_form": {}}, run_id)
        assert out.exit_code == contract.SKIP_EXIT_CODE and out.state == "skipped", (task, out.stderr[-2000:])
        assert out.result["task"] == task and out.result["status"] == "skipped"


def test_unreachable_fhir_server_fails_the_task(kaapana: Platform) -> None:
    op = kaapana.operator("dicom-to-fhir", operator_in_dir=IN_DIR)
    run_id = _run_id("down")
    ct_instance(kaapana.run_dir(run_id) / "batch" / "s1" / IN_DIR / "a.dcm", pid="KC-down", study=generate_uid(),
                series=generate_uid())
    out = kaapana.run(op, {"workflow_form": {"fhir_base_url": "http://127.0.0.1:9/fhir"}}, run_id)
    assert out.state == "failed" and out.exit_code == 1
    assert out.result["status"] == "failed"


def test_radiomics_task_writes_features(
    kaapana: Platform, dicomweb: Any, fhir: Any, sso_stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SEG batch element (``fetch_method: copy`` layout); SEG + CT via DICOMweb with the project user's
    Keycloak token (Kaapana's secret env → password grant); features land in FHIR."""
    import shutil

    from kaapana_fhir.dev.demo_data import make_demo_dataset
    from kaapana_fhir.flows.radiomics.compute import read_dicom_dir

    kc = sso_stack.keycloak
    kaapana.secrets = {"KAAPANA_PROJECT_USER_NAME": kc.user, "KAAPANA_PROJECT_USER_PASSWORD": kc.user_password,
                       "KAAPANA_CLIENT_SECRET": kc.client_secret}
    monkeypatch.setenv("KEYCLOAK_URL", kc.url)  # the Airflow pod's platform env, copied by the operator
    prefix = "KCR" + uuid.uuid4().hex[:6].upper()
    manifest = make_demo_dataset(tmp_path / "demo", n_patients=1, seed=uuid.uuid4().int % 100000,
                                 patient_prefix=prefix)
    p = manifest["patients"][0]
    dicomweb.store(read_dicom_dir(p["ct_dir"]) + read_dicom_dir(p["seg_file"]))
    op = kaapana.operator("radiomics", operator_in_dir=IN_DIR)
    run_id = _run_id("radiomics")
    element = kaapana.run_dir(run_id) / "batch" / p["seg_series_uid"] / IN_DIR
    element.mkdir(parents=True)
    shutil.copy2(p["seg_file"], element / "seg.dcm")
    out = kaapana.run(op, {"workflow_form": {"settings_preset": "default", "layout": "members"}}, run_id)
    assert out.state == "success", out.stderr[-3000:]
    res = out.result["result"]
    assert out.result["task"] == "radiomics"
    assert res["segs"] == 1 and res["groups"] == len(p["segments"])
    assert res["features"] == 107 * len(p["segments"]) and res["absent"] == 0
    pid = patient_id(None, p["patient_id"])
    assert fhir.count("Observation", {"subject": f"Patient/{pid}"}) == res["groups"] + res["features"]
