"""The processing-container entry point (`kaapana-fhir kaapana-run <task>`) in a workflow dir laid out like
Kaapana's (`<run>/batch/<series>/<in_dir>`, `<run>/conf/conf.json`) against the local stack: outputs,
FHIR contents and exit codes (0 ok, 126 nothing to do, 1 failure)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from kaapana_fhir.core.ids import patient_id
from kaapana_fhir.dev.synthetic_tables import synthetic_lung1_csv

pytestmark = pytest.mark.integration

IN_DIR, OUT_DIR = "get-input-data", "kaapana-fhir-task"


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
    ds.StudyDate, ds.StudyTime, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = (
        "20240102",
        "101500",
        "CT",
        3,
        1,
    )
    ds.StudyDescription, ds.SeriesDescription, ds.AccessionNumber = "Thorax", "axial", "ACC" + pid[-6:]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def workflow_dir(tmp: Path, conf: dict[str, Any]) -> Path:
    run = tmp / f"dicom-to-fhir-{uuid.uuid4().hex[:10]}"
    (run / "conf").mkdir(parents=True)
    (run / "conf" / "conf.json").write_text(json.dumps(conf), encoding="utf-8")
    (run / "batch").mkdir()
    return run


def kaapana_run(task: str, run: Path, stack_env: dict[str, str], **extra: str) -> tuple[int, dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_",))}
    env.update({k: v for k, v in stack_env.items() if not k.startswith("AIRFLOW_")})
    env.update(
        {
            "WORKFLOW_DIR": str(run),
            "BATCH_NAME": "batch",
            "OPERATOR_IN_DIR": IN_DIR,
            "OPERATOR_OUT_DIR": OUT_DIR,
            "RUN_ID": run.name,
            "DAG_ID": "test",
            "TASK_ID": task,
            **extra,
        }
    )
    script = Path(sys.executable).parent / "kaapana-fhir"  # the console script, as the image's ENTRYPOINT
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "kaapana_fhir.cli.main"]
    proc = subprocess.run([*cmd, "kaapana-run", task], env=env, capture_output=True, text=True, timeout=600)
    result_file = run / OUT_DIR / "kaapana-fhir-result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    return proc.returncode, result, proc.stderr


def test_dicom_files_in_batch_elements_go_to_fhir(
    tmp_path: Path, stack_env: dict[str, str], fhir: Any
) -> None:
    system = f"urn:test:kaapana-container:{uuid.uuid4().hex[:8]}"
    pid = f"KC-{uuid.uuid4().hex[:8]}"
    study = generate_uid()
    series = [generate_uid(), generate_uid()]
    run = workflow_dir(
        tmp_path,
        {
            "workflow_form": {"patient_system": system, "single_execution": False},
            "project_form": {"name": "admin", "s3_bucket": "project-admin"},
        },
    )
    for i, s in enumerate(series):
        for j in range(2):
            ct_instance(run / "batch" / s / IN_DIR / f"{i}-{j}.dcm", pid=pid, study=study, series=s)
    rc, result, err = kaapana_run("dicom-to-fhir", run, stack_env)
    assert rc == 0, err[-3000:]
    assert result["status"] == "ok" and result["task"] == "dicom-to-fhir"
    assert result["result"]["studies"] == 1 and result["result"]["series"] == 2
    patient = fhir.read("Patient", patient_id(system, pid))
    assert {"system": system, "value": pid}.items() <= patient["identifier"][0].items()
    studies = list(fhir.search("ImagingStudy", {"subject": f"Patient/{patient['id']}"}))
    assert len(studies) == 1 and studies[0]["numberOfSeries"] == 2
    # idempotent: a Kaapana retry of the same task changes nothing
    rc2, result2, err2 = kaapana_run("dicom-to-fhir", run, stack_env)
    assert rc2 == 0, err2[-3000:]
    assert result2["result"]["resources"]["created"] == 0


def test_env_override_of_workflow_form_and_nothing_to_do(tmp_path: Path, stack_env: dict[str, str]) -> None:
    run = workflow_dir(tmp_path, {"workflow_form": {}, "data_form": {}})
    (run / "batch" / "1.2.3" / IN_DIR).mkdir(parents=True)  # a batch element without files
    for task in ("dicom-to-fhir", "import-table", "radiomics"):
        rc, result, err = kaapana_run(task, run, stack_env)
        assert rc == 126, err[-2000:]
        assert result["status"] == "skipped" and result["reason"]


def test_unreachable_fhir_server_fails_the_task(tmp_path: Path, stack_env: dict[str, str]) -> None:
    run = workflow_dir(tmp_path, {"workflow_form": {}})
    ct_instance(
        run / "batch" / "s1" / IN_DIR / "a.dcm",
        pid=f"KC-{uuid.uuid4().hex[:8]}",
        study=generate_uid(),
        series=generate_uid(),
    )
    rc, result, err = kaapana_run(
        "dicom-to-fhir", run, {**stack_env, "FHIR_BASE_URL": "http://127.0.0.1:9/fhir"}
    )
    assert rc == 1
    assert result["status"] == "failed"


def test_fhir_base_url_from_workflow_form_overrides_env(
    tmp_path: Path, stack_env: dict[str, str], fhir_url: str
) -> None:
    """Kaapana puts workflow_form keys into the env upper-cased; conf.json's value wins over a wrong env."""
    run = workflow_dir(tmp_path, {"workflow_form": {"fhir_base_url": fhir_url}})
    ct_instance(
        run / "batch" / "s1" / IN_DIR / "a.dcm",
        pid=f"KC-{uuid.uuid4().hex[:8]}",
        study=generate_uid(),
        series=generate_uid(),
    )
    env = {**stack_env}
    env.pop("FHIR_BASE_URL", None)
    rc, result, err = kaapana_run("dicom-to-fhir", run, env)
    assert rc == 0, err[-2000:]
    assert result["result"]["studies"] == 1


def test_table_file_in_batch_input_is_imported(tmp_path: Path, stack_env: dict[str, str], fhir: Any) -> None:
    ids = [f"KCT-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    run = workflow_dir(tmp_path, {"workflow_form": {"preset": "lung1"}})
    table = run / IN_DIR / "clinical.csv"  # batch-level input ($WORKFLOW_DIR/$OPERATOR_IN_DIR)
    table.parent.mkdir(parents=True)
    table.write_text(synthetic_lung1_csv(ids, seed=3), encoding="utf-8")
    rc, result, err = kaapana_run("import-table", run, stack_env)
    assert rc == 0, err[-3000:]
    rep = result["result"]["tables"][0]
    assert rep["file"] == "clinical.csv" and rep["rows_read"] == 3 and rep["rows_rejected"] == 0
    assert rep["resources_written"]


def test_cohort_writes_tables_to_the_out_dir(tmp_path: Path, stack_env: dict[str, str]) -> None:
    system = f"urn:test:kaapana-cohort:{uuid.uuid4().hex[:8]}"
    pid = f"KCC-{uuid.uuid4().hex[:8]}"
    seed_run = workflow_dir(tmp_path, {"workflow_form": {"patient_system": system}})
    ct_instance(
        seed_run / "batch" / "s1" / IN_DIR / "a.dcm", pid=pid, study=generate_uid(), series=generate_uid()
    )
    assert kaapana_run("dicom-to-fhir", seed_run, stack_env)[0] == 0
    run = workflow_dir(
        tmp_path, {"workflow_form": {"patient_search": f"Patient?identifier={system}|{pid}", "upload": False}}
    )
    rc, result, err = kaapana_run("cohort", run, stack_env)
    assert rc == 0, err[-3000:]
    assert result["status"] == "ok"
    assert result["result"]["patients"] == 1
    written = sorted(p.name for p in (run / OUT_DIR).iterdir())
    assert "kaapana-fhir-result.json" in written and len(written) > 1
    assert "report.html" in written and result["result"]["report"]["path"].endswith("report.html")


def test_table_object_in_the_project_bucket(tmp_path: Path, stack_env: dict[str, str], s3: Any) -> None:
    """Watcher-style conf (flat ``object_key``) + ``project_form.s3_bucket``: the S3 mode of import-table."""
    bucket = f"project-kc-{uuid.uuid4().hex[:8]}"
    s3.ensure_bucket(bucket)
    ids = [f"KCS-{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
    s3.put_bytes(bucket, "fhir-import/t.csv", synthetic_lung1_csv(ids, seed=5).encode())
    run = workflow_dir(
        tmp_path,
        {"object_key": "fhir-import/t.csv", "preset": "lung1", "project_form": {"s3_bucket": bucket}},
    )
    rc, result, err = kaapana_run("import-table", run, {**stack_env, "MINIO_URL": "unused:9000"})
    assert rc == 0, err[-3000:]
    assert result["result"]["bucket"] == bucket and result["result"]["rows_read"] == 2
    assert s3.head(bucket, "fhir-import/t.import-report.json") is not None


def test_radiomics_for_a_copied_seg_series(
    tmp_path: Path, stack_env: dict[str, str], dicomweb: Any, fhir: Any
) -> None:
    """Batch element = SEG series (as a `fetch_method: copy` trigger rule lays it out); SEG + referenced CT
    are read from DICOMweb, features land in FHIR."""
    import shutil

    from kaapana_fhir.dev.demo_data import make_demo_dataset
    from kaapana_fhir.flows.radiomics.compute import read_dicom_dir

    prefix = "KCR" + uuid.uuid4().hex[:6].upper()
    manifest = make_demo_dataset(
        tmp_path / "demo", n_patients=1, seed=uuid.uuid4().int % 100000, patient_prefix=prefix
    )
    p = manifest["patients"][0]
    dicomweb.store(read_dicom_dir(p["ct_dir"]) + read_dicom_dir(p["seg_file"]))
    run = workflow_dir(tmp_path, {"workflow_form": {"settings_preset": "default"}})
    element = run / "batch" / p["seg_series_uid"] / IN_DIR
    element.mkdir(parents=True)
    shutil.copy2(p["seg_file"], element / "seg.dcm")
    rc, result, err = kaapana_run("radiomics", run, stack_env)
    assert rc == 0, err[-3000:]
    out = result["result"]
    assert out["segs"] == 1 and out["groups"] == len(p["segments"])
    assert out["features"] == 107 * len(p["segments"]) and out["absent"] == 0
    pid = patient_id(None, p["patient_id"])
    assert fhir.count("Observation", {"subject": f"Patient/{pid}"}) == out["groups"] + out["features"]
