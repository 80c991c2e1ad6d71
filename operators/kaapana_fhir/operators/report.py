"""The cohort dashboard operator (end of the ``fhir-cohort`` DAG)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kaapana_fhir.airflow_compat import BaseOperator
from kaapana_fhir.operators.fhir_query import _conf


class CohortReportOperator(BaseOperator):
    """Render the self-contained HTML dashboard of a cohort written by :class:`FhirQueryOperator`.

    Reads the query task's XCom (``out_dir``, ``bucket``, ``prefix``), writes ``report.html`` next to the
    cohort table and uploads it to the same bucket/prefix. Conf key ``group_by`` (or the constructor) picks
    the clinical variable the radiomics plots are grouped by.

    ``template_fields``: ``query_task_id``, ``group_by``, ``title``.
    """

    template_fields: Sequence[str] = ("query_task_id", "group_by", "title")

    def __init__(self, *, query_task_id: str = "fhir-query", group_by: str = "", title: str = "Cohort overview",
                 s3_conn_id: str = "s3_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.query_task_id = query_task_id
        self.group_by = group_by
        self.title = title
        self.s3_conn_id = s3_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from kaapana_fhir.exceptions import ConfigError
        from kaapana_fhir.flows.cohort.report import report_job
        from kaapana_fhir.hooks.fhir import ObjectStoreHook

        q = context["ti"].xcom_pull(task_ids=self.query_task_id) or {}
        if not q.get("out_dir"):
            raise ConfigError(f"no cohort output from task {self.query_task_id!r} (XCom out_dir missing)")
        conf = _conf(context)
        store = ObjectStoreHook(self.s3_conn_id).get_conn() if q.get("bucket") else None
        info = report_job(q["out_dir"], store=store, bucket=q.get("bucket"), prefix=q.get("prefix") or "fhir-cohort",
                          group_by=conf.get("group_by") or self.group_by or None, title=self.title)
        return {"report": info.path, "bytes": info.bytes, "patients": info.patients,
                "bucket": info.bucket, "object_key": info.object_key}
