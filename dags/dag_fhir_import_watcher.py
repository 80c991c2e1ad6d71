"""``fhir-import-watcher``: the missing MinIO trigger. Every 2 minutes, list new or changed table objects
under ``fhir-import/`` (by ETag, state in ``.kaapana-fhir-state/``) and trigger ``fhir-table-import``
once per object (dynamic task mapping over ``TriggerDagRunOperator``).

Params / conf: ``bucket`` (comma list allowed), ``prefix``, ``default_preset``, ``skip_invalid_rows``. Defaults, in
this order: env ``KAAPANA_FHIR_IMPORT_BUCKET`` / ``KAAPANA_FHIR_IMPORT_PREFIX`` / ``KAAPANA_FHIR_IMPORT_SCHEDULE``
(plain Airflow), then the Kaapana site settings that the workflow chart writes next to the DAGs
(``kaapanaFhir.importWatcher.{bucket,minioPrefix,schedule}``), then ``project-admin``, ``fhir-import/`` and
every 2 minutes.
"""

from __future__ import annotations

import datetime as dt
import os

from kaapana_fhir.airflow_compat import Param, TriggerDagRunOperator
from kaapana_fhir.flows.tables.params import PRESETS
from kaapana_fhir.kaapana.env import site_settings
from kaapana_fhir.kaapana.runtime import workflow_dag
from kaapana_fhir.operators.csv_import import FhirImportRecordTriggeredOperator, FhirImportWatcherOperator

IMPORT_DAG_ID = "fhir-table-import"
_SITE = site_settings()  # a local JSON file written by the workflow chart; {} outside Kaapana
BUCKET = os.environ.get("KAAPANA_FHIR_IMPORT_BUCKET") or _SITE.get("import_watcher_bucket") or "project-admin"
PREFIX = os.environ.get("KAAPANA_FHIR_IMPORT_PREFIX") or _SITE.get("import_watcher_prefix") or "fhir-import/"
SCHEDULE = (os.environ.get("KAAPANA_FHIR_IMPORT_SCHEDULE") or _SITE.get("import_watcher_schedule")
            or dt.timedelta(minutes=2))

ui_forms = {"workflow_form": {"type": "object", "properties": {
    "prefix": {"type": "string", "title": "Prefix to watch", "default": PREFIX},
    "default_preset": {"type": "string", "title": "Default preset", "enum": list(PRESETS),
                       "default": ""},
}}}

with workflow_dag(
    "fhir-import-watcher",
    description="Trigger fhir-table-import for new/changed objects under a MinIO prefix",
    schedule=SCHEDULE,
    max_active_runs=1,
    tags=["service", "fhir"],
    owner="system",
    retries=0,
    params={"bucket": Param(BUCKET, type="string"),
            "prefix": Param(PREFIX, type="string"), "default_preset": Param("", type="string"),
            "skip_invalid_rows": Param(False, type="boolean")},
) as dag:
    watch = FhirImportWatcherOperator(task_id="find-new-objects", bucket=BUCKET, prefix=PREFIX)
    trigger = TriggerDagRunOperator.partial(task_id="trigger-import", trigger_dag_id=IMPORT_DAG_ID,
                                            wait_for_completion=False).expand(conf=watch.output)
    # state is written only for triggers that succeeded; failed ones are retried by the next run
    trigger >> FhirImportRecordTriggeredOperator(task_id="record-triggered")
