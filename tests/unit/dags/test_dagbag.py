"""Every file in dags/ imports cleanly in Airflow (no network or Variables at import time)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[3] / "dags"

pytestmark = pytest.mark.airflow


def test_dagbag_imports_without_errors_or_network(airflow_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("DAG files must not open network connections at import time")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(DAGS), include_examples=False)
    assert bag.import_errors == {}
    files = sorted(p.name for p in DAGS.glob("dag_*.py"))
    assert files, "dags/ must hold DAG files"
    assert len(bag.dag_ids) >= len(files)
    for dag_id in bag.dag_ids:
        assert dag_id == dag_id.lower() and "_" not in dag_id, f"{dag_id}: DAG ids are kebab-case"


def test_watcher_reads_the_chart_values(airflow_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """kaapanaFhir.importWatcher.{bucket,minioPrefix,schedule} reach the watcher DAG through the site settings
    the workflow chart writes next to the DAGs (they were dead config before)."""
    import json

    from airflow.models import DagBag

    settings = tmp_path / "kaapana_fhir_settings.json"
    settings.write_text(json.dumps({"import_watcher_bucket": "project-lung", "import_watcher_prefix": "clinical/",
                                    "import_watcher_schedule": "*/5 * * * *"}))
    monkeypatch.setenv("KAAPANA_FHIR_SETTINGS", str(settings))
    for name in ("KAAPANA_FHIR_IMPORT_BUCKET", "KAAPANA_FHIR_IMPORT_PREFIX", "KAAPANA_FHIR_IMPORT_SCHEDULE"):
        monkeypatch.delenv(name, raising=False)
    bag = DagBag(dag_folder=str(DAGS / "dag_fhir_import_watcher.py"), include_examples=False)
    assert bag.import_errors == {}
    dag = bag.get_dag("fhir-import-watcher")
    assert dag.params["bucket"] == "project-lung"
    assert dag.params["prefix"] == "clinical/"
    assert "*/5 * * * *" in str(getattr(dag, "timetable", None) and dag.timetable.summary or dag.schedule_interval)
    watch = dag.get_task("find-new-objects")
    assert (watch.bucket, watch.prefix) == ("project-lung", "clinical/")


def test_dags_share_the_package_conventions(airflow_home: Path) -> None:
    """workflow_dag(): UTC start, no catch-up, triggered-only unless a schedule is given, and the Kaapana workflow
    form in default_args (where Kaapana's backend reads it) for every DAG with a form, except mapped-task DAGs
    on plain Airflow (their .partial() rejects unknown default_args)."""
    import datetime as dt

    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(DAGS), include_examples=False)
    assert bag.import_errors == {}
    visible = {"dicom-to-fhir", "radiomics-to-fhir", "fhir-cohort", "fhir-table-import"}
    for dag_id, dag in bag.dags.items():
        assert dag.start_date == dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), dag_id
        assert dag.catchup is False, dag_id
        args = dag.default_args
        if dag_id in visible:
            assert args["ui_visible"] is True and args["ui_forms"]["workflow_form"]["properties"], dag_id
            assert args["retries"] >= 1 and args["retry_delay"].total_seconds() > 0, dag_id
        else:
            assert "ui_forms" not in args, dag_id
    assert bag.get_dag("fhir-import-watcher").default_args == {"owner": "system", "retries": 0, "ui_visible": False}
    form = bag.get_dag("radiomics-to-fhir").default_args["ui_forms"]["workflow_form"]["properties"]
    assert form["layout"]["enum"] == ["members", "components"]
    assert "odm" in bag.get_dag("fhir-table-import").default_args["ui_forms"]["workflow_form"]["properties"][
        "preset"]["enum"]
