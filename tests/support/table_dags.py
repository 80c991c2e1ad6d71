"""The table-import DAG pair (``fhir-import-watcher`` → ``fhir-table-import``) from ``dags/``, loaded and run in the
test process with ``dag.test`` (there is no scheduler in tests). The caller sets the environment first (the stack's
Airflow connections, or Kaapana's pod env)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DAGS = Path(__file__).resolve().parents[2] / "dags"


def load_table_dags() -> dict[str, Any]:
    """``{"watcher": ..., "import": ...}`` from ``dags/``, synced to the metadata DB (the watcher's
    TriggerDagRunOperator needs its target DAG there); fails on an import error of either DAG file."""
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(DAGS), include_examples=False)
    errors = {k: v for k, v in bag.import_errors.items() if "table" in k or "watcher" in k}
    watcher, imp = bag.get_dag("fhir-import-watcher"), bag.get_dag("fhir-table-import")
    assert not errors and watcher is not None and imp is not None, errors or bag.import_errors
    bag.sync_to_db()
    return {"watcher": watcher, "import": imp}


def run_watcher(dag: Any, bucket: str, prefix: str = "fhir-import/") -> tuple[str, list[dict[str, Any]]]:
    """One successful watcher run over ``bucket``/``prefix``: (run id, the confs it triggered imports with)."""
    from airflow.models import XCom
    from airflow.utils.state import DagRunState

    dr = dag.test(run_conf={"bucket": bucket, "prefix": prefix})
    assert dr.state == DagRunState.SUCCESS, f"watcher run {dr.run_id}: {dr.state}"
    confs = XCom.get_one(run_id=dr.run_id, dag_id=dag.dag_id, task_id="find-new-objects", key="return_value")
    return dr.run_id, list(confs or [])


def run_import(dag: Any, conf: dict[str, Any]) -> None:
    """One successful import run with a conf the watcher produced."""
    from airflow.utils.state import DagRunState

    dr = dag.test(run_conf=conf)
    assert dr.state == DagRunState.SUCCESS, f"import run {dr.run_id} of {conf.get('object_key')}: {dr.state}"
