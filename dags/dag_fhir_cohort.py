"""``fhir-cohort``: FHIR search + SQL-on-FHIR views → cohort table → Kaapana dataset → HTML dashboard.

Tasks: ``fhir-query`` (:class:`~kaapana_fhir.operators.fhir_query.FhirQueryOperator`: cohort.parquet/.csv,
patients/radiomics/series tables and ``dataset.json`` into the workflow dir and the project bucket under
``fhir-cohort/<run_id>/``) → ``cohort-report`` (``report.html`` beside them) → ``read-downstream`` (reads
``downstream.json`` from the query task's output folder: Kaapana container operators push no XCom) →
``trigger-downstream`` (triggers ``trigger_dag_id`` with ``{"data_form": {"dataset_name", "identifiers"}}``,
the SeriesInstanceUIDs of the selected cohort; skipped when no DAG is named).

Conf / ``workflow_form`` keys: ``fhir_search`` (FHIR searches, one per line; default: all Patients and their
Observations, Conditions, ImagingStudies, BodyStructures), ``patient_search`` (a ``Patient?...`` search that
selects the patients), ``filters`` (``Histology=adenocarcinoma; Overall.Stage=IIIa``), ``modality``,
``dataset_name``, ``group_by``, ``trigger_dag_id``, ``engine`` (``ours`` or ``pathling``).
"""

from __future__ import annotations

from typing import Any

from kaapana_fhir.airflow_compat import Param, ShortCircuitOperator, TriggerDagRunOperator
from kaapana_fhir.flows.cohort.params import CohortEngine
from kaapana_fhir.kaapana.runtime import flow_operator, in_kaapana, kaapana_cleaner, workflow_dag
from kaapana_fhir.operators.fhir_query import read_downstream

ui_forms: dict[str, Any] = {
    "documentation_form": {"path": "/user_guide/extensions.html#fhir-cohort"},
    "data_form": {},
    "workflow_form": {
        "type": "object",
        "properties": {
            "fhir_search": {
                "title": "FHIR search(es)",
                "description": "One per line, e.g. Patient?_has:Condition:subject:code=http://snomed.info/sct|35917007"
                               "&_revinclude=Observation:subject. Empty: all patients with their data.",
                "type": "string", "default": "",
            },
            "patient_search": {
                "title": "Patient search", "type": "string", "default": "",
                "description": "Instead of full searches: a Patient?... search selecting the patients "
                               "(their Observations, Conditions, ImagingStudies and segments are fetched).",
            },
            "filters": {
                "title": "Filter", "type": "string", "default": "",
                "description": "Conditions on the cohort table, ';'-separated: Histology=adenocarcinoma; "
                               "Overall.Stage=IIIa; age>=60; Overall.Stage in IIIa,IIIb",
            },
            "modality": {"title": "Series modality of the dataset", "type": "string", "default": "CT"},
            "dataset_name": {"title": "Dataset name", "type": "string", "default": "fhir-cohort"},
            "group_by": {"title": "Group radiomics by (dashboard)", "type": "string", "default": "",
                         "description": "A clinical variable, e.g. Overall.Stage; empty: chosen automatically"},
            "trigger_dag_id": {"title": "Then run workflow", "type": "string", "default": "",
                               "description": "DAG id to trigger with the cohort's series (data_form.identifiers)"},
            "engine": {"title": "View engine", "type": "string", "enum": [e.value for e in CohortEngine],
                       "default": "ours",
                       "description": "pathling: Spark (must be installed) over a Bulk Data $export of all "
                                      "patients, for cohorts that outgrow one process; filters only, no searches"},
        },
    },
}

with workflow_dag(
    "fhir-cohort",
    description="FHIR searches + ViewDefinitions → cohort table, series dataset and dashboard",
    ui_forms=ui_forms,
    max_active_runs=4,
    tags=["fhir", "cohort"],
    render_template_as_native_obj=True,
    params={"fhir_search": Param("", type="string"), "patient_search": Param("", type="string"),
            "filters": Param("", type="string"), "modality": Param("CT", type="string"),
            "dataset_name": Param("fhir-cohort", type="string"), "group_by": Param("", type="string"),
            "trigger_dag_id": Param("", type="string"),
            "engine": Param("ours", type="string", enum=[e.value for e in CohortEngine])},
    doc_md=__doc__,
) as dag:
    query = flow_operator("cohort", dag=dag, task_id="fhir-query")
    # Kaapana container operators push no XCom: the cohort task (container or in-process) writes
    # downstream.json into its output folder; this local task reads it (stdlib only) and short-circuits
    # when no downstream workflow is named.
    read_downstream_task = ShortCircuitOperator(
        task_id="read-downstream",
        python_callable=read_downstream,
        op_kwargs={"query_task_id": "fhir-query"},
        ignore_downstream_trigger_rules=False,
    )
    trigger = TriggerDagRunOperator(
        task_id="trigger-downstream",
        trigger_dag_id="{{ ti.xcom_pull(task_ids='read-downstream')['trigger_dag_id'] }}",
        conf="{{ ti.xcom_pull(task_ids='read-downstream')['conf'] }}",
        wait_for_completion=False,
    )
    if in_kaapana():
        query >> read_downstream_task >> trigger
        cleaner = kaapana_cleaner(dag)
        trigger >> cleaner
    else:
        from kaapana_fhir.operators.report import CohortReportOperator

        report = CohortReportOperator(task_id="cohort-report", query_task_id="fhir-query")
        query >> report >> read_downstream_task >> trigger
