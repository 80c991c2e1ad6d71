"""Run our DAGs for real on plain Airflow without a scheduler (demo, tests, researchers' laptops).

``run_dag`` executes a DAG run in-process with Airflow's own ``dag.test()`` (every task's ``execute`` runs,
XComs, retries-as-failures and trigger rules as in production) and returns the run's state and the
return values of its tasks. Runs created by ``TriggerDagRunOperator`` (the import watcher) are left
*queued* when no scheduler is running; ``drain_triggered`` executes them with their conf and marks the
queued placeholder as done, which is what a scheduler would do.

Airflow reads its configuration on import: set ``AIRFLOW_HOME`` (and friends) before calling anything
here — :func:`configure` does it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaapana_fhir.exceptions import KaapanaFhirError

log = logging.getLogger(__name__)


class DagRunFailed(KaapanaFhirError):
    """A DAG run ended in a state other than success."""


@dataclass
class RunResult:
    dag_id: str
    run_id: str
    state: str
    seconds: float
    conf: dict[str, Any]
    task_states: dict[str, str] = field(default_factory=dict)
    xcoms: dict[str, Any] = field(default_factory=dict)


def configure(home: str | Path, dags_folder: str | Path, connections: dict[str, str] | None = None) -> None:
    """Point Airflow at ``home`` (SQLite) and ``dags_folder``; migrate the DB once."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(dags_folder).resolve())
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home}/airflow.db"
    os.environ.setdefault("AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT", "120")
    for k, v in (connections or {}).items():
        os.environ[k] = v
    marker = home / ".migrated"
    if not marker.exists():
        exe = Path(sys.executable).parent / "airflow"
        res = subprocess.run([str(exe), "db", "migrate"], capture_output=True, text=True, env=os.environ.copy())
        if res.returncode != 0:
            raise KaapanaFhirError(f"airflow db migrate failed in {home}: {res.stderr[-1500:]}")
        marker.write_text("ok")


_BAG: Any = None


def dagbag(refresh: bool = False) -> Any:
    global _BAG
    if _BAG is None or refresh:
        from airflow.models import DagBag

        folder = os.environ.get("AIRFLOW__CORE__DAGS_FOLDER")
        try:
            _BAG = DagBag(dag_folder=folder, include_examples=False)
        except TypeError:  # Airflow 3 DagBag has no include_examples
            _BAG = DagBag(dag_folder=folder)
        if _BAG.import_errors:
            raise KaapanaFhirError(f"DAG import errors: {_BAG.import_errors}")
        _sync(_BAG)
    return _BAG


def _sync(bag: Any) -> None:
    """Register the DAGs in the metadata DB (DagModel), as the scheduler's DAG processor would, so that
    ``TriggerDagRunOperator`` can find its target DAG."""
    if hasattr(bag, "sync_to_db"):  # Airflow 2
        bag.sync_to_db()
        return
    from airflow.models.dagbag import sync_bag_to_db  # type: ignore[attr-defined,unused-ignore]  # Airflow 3

    sync_bag_to_db(bag, bundle_name="dags-folder", bundle_version=None)


def run_dag(dag_id: str, conf: dict[str, Any] | None = None, *, check: bool = True) -> RunResult:
    """Run one DAG in-process with ``conf``; raise :class:`DagRunFailed` unless it succeeds (``check``)."""
    dag = dagbag().get_dag(dag_id)
    if dag is None:
        raise KaapanaFhirError(f"DAG {dag_id!r} not found in {os.environ.get('AIRFLOW__CORE__DAGS_FOLDER')}")
    t0 = time.perf_counter()
    dr = dag.test(run_conf=conf or {})
    secs = time.perf_counter() - t0
    tis = dr.get_task_instances()
    result = RunResult(dag_id, dr.run_id, str(dr.state), secs, conf or {},
                       {ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state) for ti in tis})
    for ti in tis:
        if str(ti.state) == "success":
            try:
                val = ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index if ti.map_index >= 0 else None)
            except Exception as exc:  # an XCom that cannot be read must not hide the run result
                log.debug("xcom of %s not readable: %s", ti.task_id, exc)
                val = None
            if val is not None:
                key = ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else "")
                result.xcoms[key] = val
    if check and not str(dr.state).endswith("success"):
        failed = {k: v for k, v in result.task_states.items() if not v.endswith("success") and "skipped" not in v}
        raise DagRunFailed(f"DAG {dag_id} run {dr.run_id} ended {dr.state}; tasks: {failed}")
    return result


def drain_triggered(dag_ids: list[str] | None = None, *, check: bool = True) -> list[RunResult]:
    """Execute runs that ``TriggerDagRunOperator`` queued (no scheduler here), then mark them done."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    results = []
    with create_session() as session:
        q = session.query(DagRun).filter(DagRun.state == DagRunState.QUEUED)
        if dag_ids:
            q = q.filter(DagRun.dag_id.in_(dag_ids))
        pending = [(dr.dag_id, dr.run_id, dict(dr.conf or {})) for dr in q.all()]
    for dag_id, run_id, conf in pending:
        log.info("running triggered %s (%s)", dag_id, run_id)
        res = run_dag(dag_id, conf, check=False)
        with create_session() as session:
            dr = session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.run_id == run_id).one_or_none()
            if dr is not None:
                dr.state = DagRunState.SUCCESS if res.state.endswith("success") else DagRunState.FAILED
        results.append(res)
        if check and not res.state.endswith("success"):
            raise DagRunFailed(f"triggered DAG {dag_id} (from {run_id}) ended {res.state}: {res.task_states}")
    return results
