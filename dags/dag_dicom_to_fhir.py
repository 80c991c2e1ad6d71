"""``dicom-to-fhir``: studies of incoming (or selected) DICOM series → Patient / ImagingStudy / Endpoint / Device.

Triggered by ``kaapana_fhir_dicom_to_fhir_trigger_rule.json`` on every incoming series (conf
``data_form.identifiers`` = SeriesInstanceUIDs), by the incoming-DICOM service conf (``studyInstanceUID`` /
``seriesInstanceUID``) or from the workflow UI with a dataset. On plain Airflow the studies are resolved
first and synced with one mapped task per study (``.expand``); in Kaapana the container operator handles
the batch (``kaapana_fhir.kaapana.runtime``).
"""

from __future__ import annotations

from typing import Any

from kaapana_fhir.airflow_compat import task
from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM
from kaapana_fhir.kaapana.runtime import (
    flow_operator,
    in_kaapana,
    kaapana_cleaner,
    kaapana_input_operator,
    workflow_dag,
)

ui_forms: dict[str, Any] = {
    "documentation_form": {"path": "/user_guide/extensions.html#dicom-to-fhir"},
    "workflow_form": {
        "type": "object",
        "properties": {
            "patient_system": {
                "title": "Patient identifier system",
                "description": "FHIR identifier system of DICOM PatientID (0010,0020); must equal the clinical "
                               "table import's system so images and clinical data share one Patient.",
                "type": "string", "default": DEFAULT_PATIENT_SYSTEM,
            },
            "timezone": {
                "title": "Time zone of the PACS",
                "description": "IANA zone (e.g. Europe/Berlin) for study times without TimezoneOffsetFromUTC "
                               "(0008,0201); empty: such studies get a date only.",
                "type": "string", "default": "",
            },
            "include_instances": {
                "title": "Include instances", "description": "Write ImagingStudy.series.instance[] (large).",
                "type": "boolean", "default": False,
            },
            "single_execution": {
                "title": "Single execution", "description": "One run per series.", "type": "boolean",
                "default": False, "readOnly": True,
            },
        },
    },
}

with workflow_dag(
    "dicom-to-fhir",
    description="DICOM studies from the PACS → FHIR Patient / ImagingStudy / Endpoint / Device",
    ui_forms=ui_forms,
    retries=2,
    max_active_runs=10,
    tags=["fhir", "dicom"],
    doc_md=__doc__,
) as dag:
    if in_kaapana():
        get_input = kaapana_input_operator(dag)
        to_fhir = flow_operator("dicom-to-fhir", dag=dag, task_id="dicom-to-fhir")
        get_input >> to_fhir >> kaapana_cleaner(dag)
    else:
        from kaapana_fhir.operators.dicom_to_fhir import DicomToFhirOperator, ResolveDicomStudiesOperator

        resolve = ResolveDicomStudiesOperator(task_id="resolve-studies")
        per_study = DicomToFhirOperator.partial(task_id="dicom-to-fhir", max_active_tis_per_dag=4).expand(
            study_instance_uids=resolve.output)

        @task(task_id="summary", trigger_rule="all_done")
        def summary(results: Any) -> dict[str, Any]:
            """Totals over the per-study results (studies, series, resources, failed, issue count)."""
            out: dict[str, Any] = {"studies": 0, "series": 0, "issue_count": 0, "failed": [],
                                   "resources": {"created": 0, "updated": 0, "unchanged": 0}}
            for r in results or []:
                if not r:
                    continue
                out["studies"] += r.get("studies", 0)
                out["series"] += r.get("series", 0)
                out["issue_count"] += r.get("issue_count", 0)
                out["failed"] += r.get("failed", [])
                for k in out["resources"]:
                    out["resources"][k] += (r.get("resources") or {}).get(k, 0)
            return out

        summary(per_study.output)
