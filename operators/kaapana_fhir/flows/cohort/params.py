"""Parameters of the cohort flow (``workflow_form`` keys of ``dags/dag_fhir_cohort.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from kaapana_fhir.flows.params import FlowParams, param


class CohortEngine(StrEnum):
    """Who runs the ViewDefinitions of a cohort."""

    #: our SQL-on-FHIR runner in this process (pages of FHIR searches, or NDJSON)
    OURS = "ours"
    #: Pathling on Spark in its own venv (``.ci/install-pathling.sh``), over a Bulk Data ``$export``
    PATHLING = "pathling"


@dataclass(frozen=True)
class CohortParams(FlowParams):
    """Options of one cohort run.

    :param fhir_search: FHIR searches, one per line (empty: all patients with their data).
    :param patient_search: a ``Patient?...`` search selecting the patients.
    :param filters: conditions on the cohort table (``Histology=adenocarcinoma; Overall.Stage=IIIa``).
    :param views: shipped view names or ViewDefinition JSON paths.
    :param modality: ``ImagingStudy.series.modality`` of the dataset series.
    :param dataset_name: name of the Kaapana dataset of the cohort's series.
    :param group_by: clinical variable the dashboard groups radiomics by (empty: chosen automatically).
    :param trigger_dag_id: workflow to start with the cohort's series (``data_form.identifiers``).
    :param bucket: bucket for the tables (empty: the project's bucket).
    :param prefix: object prefix (empty: ``fhir-cohort/<run_id>``).
    :param upload: upload the tables to the bucket.
    :param page_size: FHIR search page size (``_count``).
    :param engine: who runs the views (:class:`CohortEngine`): ``ours`` (default) or ``pathling`` (Spark, for
        cohorts that outgrow one process: reads all patients with a Bulk Data ``$export``, so it takes
        ``filters`` but no ``fhir_search``/``patient_search``; Pathling must be installed).
    """

    FLOW: ClassVar[str] = "cohort"

    fhir_search: tuple[str, ...] = param((), cli="search")
    patient_search: str = param("", cli="patients")
    filters: tuple[str, ...] = param((), cli="where")
    views: tuple[str, ...] = param((), cli="view")
    modality: str = param("CT", cli="modality")
    dataset_name: str = param("fhir-cohort")
    group_by: str = param("")
    trigger_dag_id: str = param("")
    bucket: str = param("")
    prefix: str = param("")
    upload: bool = param(True)
    page_size: int = param(1000)
    engine: CohortEngine = param(CohortEngine.OURS, cli="engine")
