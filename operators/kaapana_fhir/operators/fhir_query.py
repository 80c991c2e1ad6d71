"""FHIR → cohort: :class:`FhirQueryOperator` (cohort tables + Kaapana dataset of series UIDs)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaapana_fhir.airflow_compat import BaseOperator
from kaapana_fhir.core.limits import load_json


def _conf(context: Any) -> dict[str, Any]:
    """DAG params, overridden by ``dag_run.conf`` and its Kaapana ``workflow_form`` (UI runs)."""
    dag_run = context.get("dag_run")
    conf = dict(getattr(dag_run, "conf", None) or {})
    merged = dict(context.get("params") or {})
    merged.update({k: v for k, v in conf.items() if k != "workflow_form"})
    merged.update({k: v for k, v in (conf.get("workflow_form") or {}).items() if v not in (None, "")})
    return merged


def workflow_dir(context: Any, task_id: str) -> Path:
    """``<AIRFLOW_WORKFLOW_DIR>/<run_id>/<task_id>`` (Kaapana's layout), under the temp dir outside Kaapana."""
    root = os.environ.get("AIRFLOW_WORKFLOW_DIR") or os.path.join(tempfile.gettempdir(), "kaapana-fhir-workflows")
    run_id = str(getattr(context.get("dag_run"), "run_id", None) or context.get("run_id") or "manual")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    return Path(root) / safe / task_id


#: ``<out dir>/downstream.json`` = ``{"trigger_dag_id", "conf"}``, written when a downstream workflow is named
DOWNSTREAM_FILE = "downstream.json"


def write_downstream(out_dir: Path, trigger_dag_id: str, conf: dict[str, Any]) -> Path:
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / DOWNSTREAM_FILE
    path.write_text(json.dumps({"trigger_dag_id": trigger_dag_id, "conf": conf}, indent=1), encoding="utf-8")
    return path


def _airflow_workflow_root() -> str:
    """Where Airflow sees the run folders: Kaapana's ``AIRFLOW_WORKFLOW_DIR`` (its plugin's constant) in
    Kaapana, else ``$AIRFLOW_WORKFLOW_DIR`` or the temp dir (as :func:`workflow_dir`)."""
    try:
        from kaapana.blueprints.kaapana_global_variables import AIRFLOW_WORKFLOW_DIR

        return str(AIRFLOW_WORKFLOW_DIR)
    except ImportError:
        return os.environ.get("AIRFLOW_WORKFLOW_DIR") or os.path.join(tempfile.gettempdir(), "kaapana-fhir-workflows")


def read_downstream(query_task_id: str, **context: Any) -> dict[str, Any] | None:
    """Callable of the cohort DAG's ``read-downstream`` task (runs inside Airflow; stdlib only).

    Kaapana container operators push no XCom, so the cohort task (container or in-process) writes
    ``downstream.json`` into its output folder ``<run>/<task_id>``; this returns its content (pushed as this
    task's XCom for the trigger task) or None (short-circuits: no downstream workflow named)."""

    run_id = str(getattr(context.get("dag_run"), "run_id", None) or context.get("run_id") or "manual")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    root = Path(_airflow_workflow_root())
    for folder in dict.fromkeys((run_id, safe)):
        path = root / folder / query_task_id / DOWNSTREAM_FILE
        if path.is_file():
            data = load_json(path)
            if isinstance(data, dict) and data.get("trigger_dag_id"):
                return {"trigger_dag_id": str(data["trigger_dag_id"]), "conf": dict(data.get("conf") or {})}
    return None


class FhirQueryOperator(BaseOperator):
    """Run FHIR searches + SQL-on-FHIR ViewDefinitions, join a cohort table, write it (CSV + Parquet) to the
    workflow dir and the project bucket, and build the Kaapana dataset of the cohort's series UIDs.

    Conf keys (``dag_run.conf`` or ``workflow_form``) override the constructor: ``fhir_search`` (one search per
    line, e.g. ``Patient?_has:Condition:subject:code=http://snomed.info/sct|35917007``), ``patient_search``,
    ``views`` (shipped view names or JSON paths), ``filters`` (``Histology=adenocarcinoma; Overall.Stage=IIIa``),
    ``modality`` (``ImagingStudy.series.modality`` of the dataset series, default CT), ``dataset_name``,
    ``trigger_dag_id``, ``bucket`` (default ``project_form.s3_bucket``), ``prefix``, ``engine`` (``ours``, or
    ``pathling``: Spark over a Bulk Data ``$export`` of all patients into a temporary folder; ``filters`` select,
    searches are refused; Pathling must be installed).

    Returns ``{"patients", "selected_patients", "series_uids", "out_dir", "object_keys", "trigger_dag_id",
    "trigger_conf"}`` where ``trigger_conf`` is ``{"data_form": {"dataset_name", "identifiers"}}`` (+
    ``project_form``), the conf a downstream Kaapana workflow takes.

    ``template_fields``: ``searches``, ``patient_search``, ``filters``, ``modality``, ``bucket``, ``prefix``,
    ``trigger_dag_id``, ``out_dir``.
    """

    template_fields: Sequence[str] = ("searches", "patient_search", "filters", "modality", "bucket", "prefix",
                                      "trigger_dag_id", "out_dir")

    def __init__(self, *, searches: Sequence[str] = (), patient_search: str = "", views: Sequence[str] = (),
                 filters: Sequence[str] = (), modality: str = "CT", dataset_name: str = "fhir-cohort",
                 bucket: str = "", prefix: str = "", trigger_dag_id: str = "", out_dir: str = "",
                 upload: bool = True, fhir_conn_id: str = "fhir_default", s3_conn_id: str = "s3_default",
                 page_size: int = 1000, engine: str = "ours", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.searches = list(searches)
        self.patient_search = patient_search
        self.views = list(views)
        self.filters = list(filters)
        self.modality = modality
        self.dataset_name = dataset_name
        self.bucket = bucket
        self.prefix = prefix
        self.trigger_dag_id = trigger_dag_id
        self.out_dir = out_dir
        self.upload = upload
        self.fhir_conn_id = fhir_conn_id
        self.s3_conn_id = s3_conn_id
        self.page_size = page_size
        self.engine = engine

    def execute(self, context: Any) -> dict[str, Any]:
        from kaapana_fhir.flows.cohort.flow import run_cohort
        from kaapana_fhir.flows.cohort.params import CohortParams
        from kaapana_fhir.hooks.fhir import FhirHook, ObjectStoreHook

        conf = _conf(context)
        project = conf.get("project_form") or {}
        base = CohortParams.from_values({
            "fhir_search": self.searches, "patient_search": self.patient_search, "filters": self.filters,
            "views": self.views, "modality": self.modality, "dataset_name": self.dataset_name,
            "trigger_dag_id": self.trigger_dag_id, "bucket": self.bucket, "prefix": self.prefix,
            "upload": self.upload, "page_size": self.page_size, "engine": self.engine,
        }, "operator arguments")
        params = CohortParams.from_conf(conf, base)
        filters = list(params.filters)
        bucket = params.bucket or project.get("s3_bucket") or ""
        run_id = str(getattr(context.get("dag_run"), "run_id", "") or "manual")
        prefix = params.prefix or f"fhir-cohort/{run_id}"
        out_dir = Path(self.out_dir) if self.out_dir else workflow_dir(context, self.task_id)
        store = ObjectStoreHook(self.s3_conn_id).get_conn() if (params.upload and bucket) else None
        summary = run_cohort(FhirHook(self.fhir_conn_id).get_conn(), out_dir, searches=list(params.fhir_search),
                             patient_search=params.patient_search or None, view_files=list(params.views),
                             filters=filters, modality=params.modality or None, dataset_name=params.dataset_name,
                             store=store, bucket=bucket or None, prefix=prefix, count=params.page_size,
                             engine=params.engine)
        trigger = params.trigger_dag_id
        trigger_conf = dict(summary.dataset)
        if project:
            trigger_conf["project_form"] = project
        if trigger:  # the same file the Kaapana container task writes: read by the DAG's read-downstream task
            write_downstream(out_dir, trigger, trigger_conf)
        self.log.info("cohort: %s patients, %s selected, %s series UIDs, files in %s", summary.patients,
                      summary.selected_patients, summary.series_uids, out_dir)
        return {"patients": summary.patients, "selected_patients": summary.selected_patients,
                "series_uids": summary.series_uids, "resources": summary.resources,
                "out_dir": str(out_dir), "bucket": summary.bucket, "prefix": prefix,
                "object_keys": summary.object_keys, "filters": filters,
                "trigger_dag_id": trigger, "trigger_conf": trigger_conf}
