"""FHIR → cohort: :class:`FhirQueryOperator` (cohort tables + Kaapana dataset of series UIDs)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaapana_fhir.airflow_compat import BaseOperator


def _conf(context: Any) -> dict[str, Any]:
    """DAG params, overridden by ``dag_run.conf`` and its Kaapana ``workflow_form`` (UI runs)."""
    dag_run = context.get("dag_run")
    conf = dict(getattr(dag_run, "conf", None) or {})
    merged = dict(context.get("params") or {})
    merged.update({k: v for k, v in conf.items() if k != "workflow_form"})
    merged.update({k: v for k, v in (conf.get("workflow_form") or {}).items() if v not in (None, "")})
    return merged


def _list(value: Any) -> list[str]:
    """A list from a list, or from text with one item per line or separated by ';'."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [p.strip() for p in str(value).replace(";", "\n").splitlines() if p.strip()]


def workflow_dir(context: Any, task_id: str) -> Path:
    """``<AIRFLOW_WORKFLOW_DIR>/<run_id>/<task_id>`` (Kaapana's layout), under the temp dir outside Kaapana."""
    root = os.environ.get("AIRFLOW_WORKFLOW_DIR") or os.path.join(tempfile.gettempdir(), "kaapana-fhir-workflows")
    run_id = str(getattr(context.get("dag_run"), "run_id", None) or context.get("run_id") or "manual")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    return Path(root) / safe / task_id


class FhirQueryOperator(BaseOperator):
    """Run FHIR searches + SQL-on-FHIR ViewDefinitions, join a cohort table, write it (CSV + Parquet) to the
    workflow dir and the project bucket, and build the Kaapana dataset of the cohort's series UIDs.

    Conf keys (``dag_run.conf`` or ``workflow_form``) override the constructor: ``fhir_search`` (one search per
    line, e.g. ``Patient?_has:Condition:subject:code=http://snomed.info/sct|35917007``), ``patient_search``,
    ``views`` (shipped view names or JSON paths), ``filters`` (``Histology=adenocarcinoma; Overall.Stage=IIIa``),
    ``modality`` (``ImagingStudy.series.modality`` of the dataset series, default CT), ``dataset_name``,
    ``trigger_dag_id``, ``bucket`` (default ``project_form.s3_bucket``), ``prefix``.

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
                 page_size: int = 1000, **kwargs: Any) -> None:
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

    def execute(self, context: Any) -> dict[str, Any]:
        from kaapana_fhir.flows.cohort.flow import run_cohort
        from kaapana_fhir.hooks.fhir import FhirHook, ObjectStoreHook, run_project

        conf = _conf(context)
        project = conf.get("project_form") or {}
        searches = _list(conf.get("fhir_search")) or self.searches
        patient_search = conf.get("patient_search") or self.patient_search or None
        filters = _list(conf.get("filters")) or self.filters
        views = _list(conf.get("views")) or self.views
        modality = conf.get("modality", self.modality)
        bucket = conf.get("bucket") or project.get("s3_bucket") or self.bucket
        run_id = str(getattr(context.get("dag_run"), "run_id", "") or "manual")
        prefix = conf.get("prefix") or self.prefix or f"fhir-cohort/{run_id}"
        out_dir = Path(self.out_dir) if self.out_dir else workflow_dir(context, self.task_id)
        store = ObjectStoreHook(self.s3_conn_id).get_conn() if (self.upload and bucket) else None
        dataset_name = conf.get("dataset_name") or self.dataset_name
        fhir = FhirHook(self.fhir_conn_id, project=run_project(conf)).get_conn()  # the run's project partition, if any
        summary = run_cohort(fhir, out_dir, searches=searches,
                             patient_search=patient_search, view_files=views, filters=filters,
                             modality=modality or None, dataset_name=dataset_name, store=store, bucket=bucket or None,
                             prefix=prefix, count=self.page_size)
        trigger = conf.get("trigger_dag_id") or self.trigger_dag_id or ""
        trigger_conf = dict(summary["dataset"])
        if project:
            trigger_conf["project_form"] = project
        self.log.info("cohort: %s patients, %s selected, %s series UIDs, files in %s", summary["patients"],
                      summary["selected_patients"], summary["series_uids"], out_dir)
        return {"patients": summary["patients"], "selected_patients": summary["selected_patients"],
                "series_uids": summary["series_uids"], "resources": summary["resources"],
                "out_dir": str(out_dir), "bucket": summary["bucket"], "prefix": prefix,
                "object_keys": summary["object_keys"], "filters": filters,
                "trigger_dag_id": trigger, "trigger_conf": trigger_conf}
