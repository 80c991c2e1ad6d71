"""Operator extra links (buttons on a task instance in Airflow's UI), registered by ``plugins/``.

* :class:`FhirResourcesLink` ("FHIR resources"): the FHIR server's history (newest writes first) of the run's
  project since the run started — the resources this run wrote, with anything written concurrently;
* :class:`CohortReportLink` ("Cohort report"): the dashboard object the report task put into MinIO;
* :class:`ImportReportLink` ("Import report"): the table import's object (and its report) in MinIO.

Links read only the task's XCom ``return_value`` and settings (no FHIR or S3 call), so they work on the
Airflow 2 webserver and in the Airflow 3 worker, which evaluates links after the task ran. A task with no
such XCom gets a link to the explorer page instead of an error. The MinIO console URL template is
``KAAPANA_FHIR_MINIO_CONSOLE_URL`` (default ``/minio-console/browser/{bucket}/{key}``, Kaapana's console route).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

from kaapana_fhir.web import settings as S

try:  # Airflow 3 (task SDK) / common-compat
    from airflow.sdk import BaseOperatorLink
except ImportError:  # Airflow 2
    from airflow.models.baseoperatorlink import BaseOperatorLink  # type: ignore[no-redef,unused-ignore]

log = logging.getLogger(__name__)

EXPLORER = "/kaapana-fhir/"
_RUN_TS = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}:\d{2}|Z)?)")


def _xcom(ti_key: Any, key: str = "return_value") -> Any:
    try:
        try:
            from airflow.sdk.execution_time.xcom import XCom  # Airflow 3
        except ImportError:
            from airflow.models.xcom import XCom  # type: ignore[no-redef,unused-ignore]  # Airflow 2
        return XCom.get_value(ti_key=ti_key, key=key)
    except Exception as exc:  # noqa: BLE001 - a missing XCom must not break the task page
        log.debug("no XCom %s for %s: %s", key, ti_key, exc)
        return None


def _run_conf(ti_key: Any) -> Mapping[str, Any]:
    """``dag_run.conf`` on Airflow 2 (webserver, DB); empty elsewhere."""
    try:
        from airflow.models.dagrun import DagRun

        runs = DagRun.find(dag_id=ti_key.dag_id, run_id=ti_key.run_id)
        return dict(runs[0].conf or {}) if runs else {}
    except Exception as exc:  # noqa: BLE001 - Airflow 3 workers have no DB access; links fall back
        log.debug("no dag_run.conf for %s: %s", ti_key, exc)
        return {}


def run_started(ti_key: Any, value: Any = None) -> str | None:
    """ISO time the run started: XCom ``started_at``, else the run's start date (Airflow 2), else the
    timestamp in the run id (``manual__2026-01-01T10:00:00+00:00``)."""
    if isinstance(value, Mapping) and value.get("started_at"):
        return str(value["started_at"])
    try:
        from airflow.models.dagrun import DagRun

        runs = DagRun.find(dag_id=ti_key.dag_id, run_id=ti_key.run_id)
        if runs and runs[0].start_date:
            return runs[0].start_date.isoformat()
    except Exception as exc:  # noqa: BLE001 - see _run_conf
        log.debug("no run start for %s: %s", ti_key, exc)
    m = _RUN_TS.search(str(getattr(ti_key, "run_id", "")))
    if m:
        try:
            return datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).isoformat()
        except ValueError:
            return None
    return None


def fhir_resources_url(st: S.WebSettings, project: str, since: str | None) -> str:
    params = {"_count": "50"}
    if since:
        params["_since"] = since
    return f"{st.public_fhir_base(project)}/_history?{urlencode(params)}"


def minio_url(bucket: str | None, key: str | None) -> str:
    tpl = os.environ.get("KAAPANA_FHIR_MINIO_CONSOLE_URL", "/minio-console/browser/{bucket}/{key}")
    if not bucket:
        return EXPLORER
    return tpl.format(bucket=quote(str(bucket), safe=""), key=quote(str(key or ""), safe="/"))


class FhirResourcesLink(BaseOperatorLink):
    name = "FHIR resources"
    operators: ClassVar[list[type[Any]]] = []

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        st = S.load()
        value = _xcom(ti_key)
        project = S.run_project(conf=_run_conf(ti_key))
        return fhir_resources_url(st, project, run_started(ti_key, value))


class CohortReportLink(BaseOperatorLink):
    name = "Cohort report"
    operators: ClassVar[list[type[Any]]] = []

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        value = _xcom(ti_key)
        if isinstance(value, Mapping) and value.get("bucket") and value.get("object_key"):
            return minio_url(value["bucket"], value["object_key"])
        if isinstance(value, Mapping) and value.get("bucket") and value.get("object_keys"):
            keys = [k for k in value["object_keys"] if str(k).endswith(".html")] or list(value["object_keys"])
            return minio_url(value["bucket"], keys[0])
        return EXPLORER


class ImportReportLink(BaseOperatorLink):
    name = "Import report"
    operators: ClassVar[list[type[Any]]] = []

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        value = _xcom(ti_key)
        conf = _run_conf(ti_key)
        if not isinstance(value, Mapping):
            return EXPLORER
        bucket = value.get("bucket") or conf.get("bucket") or (conf.get("project_form") or {}).get("s3_bucket")
        key = value.get("report_key") or value.get("object_key")
        return minio_url(bucket, key) if key else EXPLORER
