"""Cohort → downstream workflow without XCom (issue 21 failure 4): the cohort task writes ``downstream.json`` into
its output folder, the DAG's local ``read-downstream`` task reads it from the Airflow side of the same volume."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from kaapana_fhir.kaapana import tasks
from kaapana_fhir.operators import fhir_query


def test_container_and_operator_write_the_same_file_name() -> None:
    assert tasks.DOWNSTREAM_FILE == fhir_query.DOWNSTREAM_FILE == "downstream.json"


def test_read_downstream_from_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_WORKFLOW_DIR", str(tmp_path))
    run_id = "fhir-cohort-251130131415123456"
    conf = {"data_form": {"dataset_name": "adeno", "identifiers": ["1.2.3"]}, "project_form": {"name": "admin"}}
    dag_run = SimpleNamespace(run_id=run_id)
    assert fhir_query.read_downstream("fhir-query", dag_run=dag_run) is None  # nothing written: short-circuit
    fhir_query.write_downstream(tmp_path / run_id / "fhir-query", "radiomics-to-fhir", conf)
    got = fhir_query.read_downstream("fhir-query", dag_run=dag_run)
    assert got == {"trigger_dag_id": "radiomics-to-fhir", "conf": conf}


def test_manual_run_ids_are_found_raw_and_sanitised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kaapana's container writes under the raw run id; the in-process operator under a sanitised one."""
    monkeypatch.setenv("AIRFLOW_WORKFLOW_DIR", str(tmp_path))
    run_id = "manual__2026-11-30T13:14:15+00:00"
    raw = tmp_path / run_id / "fhir-query"
    raw.mkdir(parents=True)
    (raw / "downstream.json").write_text(json.dumps({"trigger_dag_id": "x", "conf": {}}))
    assert fhir_query.read_downstream("fhir-query", run_id=run_id)["trigger_dag_id"] == "x"
    raw.joinpath("downstream.json").unlink()
    fhir_query.write_downstream(fhir_query.workflow_dir({"run_id": run_id}, "fhir-query"), "y", {})
    assert fhir_query.read_downstream("fhir-query", run_id=run_id)["trigger_dag_id"] == "y"


def test_an_empty_trigger_short_circuits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_WORKFLOW_DIR", str(tmp_path))
    (tmp_path / "r" / "q").mkdir(parents=True)
    (tmp_path / "r" / "q" / "downstream.json").write_text(json.dumps({"trigger_dag_id": "", "conf": {}}))
    assert fhir_query.read_downstream("q", run_id="r") is None
