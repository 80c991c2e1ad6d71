"""Airflow plugin of kaapana-fhir (Airflow 2.11 and 3.x).

Registers
* operator extra links on our operators: "FHIR resources" (what the run wrote, from the FHIR server's history
  of the run's project), "Cohort report" (the dashboard in MinIO) and "Import report" (the table import's
  object in MinIO) — :mod:`kaapana_fhir.web.links`;
* the macro ``{{ macros.kaapana_fhir.fhir_base_url(dag_run) }}``: FHIR base URL of the run's project;
* the cohort explorer page and the retrieval API at ``/kaapana-fhir/`` and the mapping editor at
  ``/kaapana-fhir/mapping/`` (:mod:`kaapana_fhir.web.mapping_editor`): a Flask AppBuilder view on Airflow 2
  (:mod:`kaapana_fhir.web.flask_app`), a FastAPI app + a navigation entry (external view) on Airflow 3
  (:mod:`kaapana_fhir.web.fastapi_app`).

Only Airflow, Flask/FastAPI (already loaded by the web server) and light modules of our package are imported
here; pandas, pyarrow, plotly and the cohort code load on the first API request.
"""

from __future__ import annotations

from typing import Any

from airflow import __version__ as _airflow_version
from airflow.plugins_manager import AirflowPlugin

from kaapana_fhir.operators.csv_import import CsvImportOperator
from kaapana_fhir.operators.dicom_to_fhir import DicomToFhirOperator
from kaapana_fhir.operators.fhir_query import FhirQueryOperator
from kaapana_fhir.operators.radiomics import RadiomicsToFhirOperator
from kaapana_fhir.operators.report import CohortReportOperator
from kaapana_fhir.web import links
from kaapana_fhir.web.settings import fhir_base_url_macro

AIRFLOW_3 = int(_airflow_version.split(".")[0]) >= 3


class _FhirResources(links.FhirResourcesLink):
    operators = [DicomToFhirOperator, CsvImportOperator, RadiomicsToFhirOperator, FhirQueryOperator]


class _CohortReport(links.CohortReportLink):
    operators = [CohortReportOperator]


class _ImportReport(links.ImportReportLink):
    operators = [CsvImportOperator]


def fhir_base_url(dag_run: Any = None, project: str | None = None) -> str:
    """FHIR base URL of the run's project (``project_form.name``; the admin project for triggered runs)."""
    return fhir_base_url_macro(dag_run, project)


def _web() -> dict[str, list[Any]]:
    if AIRFLOW_3:
        from kaapana_fhir.web import fastapi_app

        return {"fastapi_apps": fastapi_app.fastapi_apps(), "external_views": fastapi_app.external_views()}
    from kaapana_fhir.web import flask_app

    return {"appbuilder_views": flask_app.appbuilder_views()}


_WEB = _web()


class KaapanaFhirPlugin(AirflowPlugin):
    name = "kaapana_fhir"
    macros = [fhir_base_url]
    operator_extra_links = [_FhirResources(), _CohortReport(), _ImportReport()]
    appbuilder_views = _WEB.get("appbuilder_views", [])
    fastapi_apps = _WEB.get("fastapi_apps", [])
    external_views = _WEB.get("external_views", [])
