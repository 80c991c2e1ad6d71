"""``fhir-table-import``: import one clinical table object (CSV / xlsx / REDCap) from MinIO into FHIR.

Started by ``fhir-import-watcher`` (one run per new or changed object) or from the Kaapana workflow UI
(``ui_forms``: object key, mapping key or preset, skip-invalid-rows). Conf keys: ``object_key``,
``bucket`` (default ``project_form.s3_bucket``), ``mapping_key``, ``preset``, ``skip_invalid_rows``.
"""

from __future__ import annotations

from kaapana_fhir.airflow_compat import Param
from kaapana_fhir.flows.tables.params import PRESETS
from kaapana_fhir.kaapana.runtime import flow_operator, workflow_dag

ui_forms = {
    "documentation_form": {"path": "/user_guide/extensions.html#kaapana-fhir"},
    "data_form": {},
    "workflow_form": {
        "type": "object",
        "properties": {
            "object_key": {"type": "string", "title": "Object key",
                           "description": "Key of the CSV/xlsx/REDCap export in the project bucket, "
                                          "e.g. fhir-import/lung1.csv", "required": True},
            "mapping": {"type": "string", "title": "Mapping YAML key (optional)",
                        "description": "Default: <name>.mapping.yaml beside the file", "default": ""},
            "preset": {"type": "string", "title": "Preset", "enum": list(PRESETS), "default": "",
                       "description": "Used when there is no mapping; redcap needs <name>.dictionary.csv"},
            "skip_invalid_rows": {"type": "boolean", "title": "Skip invalid rows", "default": False,
                                  "description": "Import the valid rows and report the rest"},
        },
    },
}

with workflow_dag(
    "fhir-table-import",
    description="Clinical table (CSV, Excel, REDCap) in MinIO -> FHIR Patient/Observation/Condition",
    ui_forms=ui_forms,
    max_active_runs=4,
    tags=["import", "fhir"],
    params={"object_key": Param("", type="string"), "bucket": Param("", type="string"),
            "mapping": Param("", type="string"), "preset": Param("", type="string"),
            "skip_invalid_rows": Param(False, type="boolean")},
) as dag:
    flow_operator("import-table", dag=dag, task_id="import-table")  # CsvImportOperator, or its Kaapana container
