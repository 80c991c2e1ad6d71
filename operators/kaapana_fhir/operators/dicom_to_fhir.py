"""Airflow operators of the ``dicom-to-fhir`` flow (thin: conf → :mod:`kaapana_fhir.flows.dicom_to_fhir.flow`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kaapana_fhir.airflow_compat import BaseOperator
from kaapana_fhir.flows.dicom_to_fhir.params import DicomToFhirParams
from kaapana_fhir.operators._conf_values import as_uid_list as _as_list

#: workflow_form keys a run may set (Kaapana UI / REST trigger); they override the constructor values.
FORM_KEYS = DicomToFhirParams.form_keys()


def uids_from_conf(conf: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """(study UIDs, series UIDs) from a ``dag_run.conf`` of any Kaapana trigger path.

    * Kaapana auto-trigger / workflow UI dataset: ``data_form.identifiers`` = SeriesInstanceUIDs;
    * incoming-DICOM service (CTP): ``studyInstanceUID`` / ``seriesInstanceUID``;
    * REST/CLI callers: ``study_uids`` / ``series_uids`` lists.
    """
    conf = conf or {}
    studies = _as_list(conf.get("studyInstanceUID")) + _as_list(conf.get("study_uids"))
    series = (_as_list((conf.get("data_form") or {}).get("identifiers")) + _as_list(conf.get("seriesInstanceUID"))
              + _as_list(conf.get("series_uids")))
    if series and conf.get("studyInstanceUID") and conf.get("seriesInstanceUID"):
        series = [s for s in series if s not in _as_list(conf.get("seriesInstanceUID"))]  # study covers it
    return list(dict.fromkeys(studies)), list(dict.fromkeys(series))


def _conf(context: Any) -> dict[str, Any]:
    dr = context.get("dag_run") if hasattr(context, "get") else None
    return dict(getattr(dr, "conf", None) or {})


class ResolveDicomStudiesOperator(BaseOperator):
    """Resolve the series/studies of a run to the list of StudyInstanceUIDs (0020,000D) to sync.

    Reads ``dag_run.conf`` (see :func:`uids_from_conf`) plus the given UIDs, looks series up with QIDO-RS
    and returns the study UID list (the input of the per-study task mapping).

    :param study_instance_uids: extra StudyInstanceUIDs (templated).
    :param series_instance_uids: extra SeriesInstanceUIDs (templated).
    :param dicomweb_conn_id: DICOMweb connection (``dicomweb_default``; env ``DICOMWEB_URL`` fallback).
    :param missing_series: ``fail`` (retry: the series may still be arriving) or ``skip`` (templated).
    """

    template_fields: Sequence[str] = ("study_instance_uids", "series_instance_uids", "missing_series")

    def __init__(self, *, study_instance_uids: Any = None, series_instance_uids: Any = None,
                 dicomweb_conn_id: str = "dicomweb_default", missing_series: str = "fail",
                 max_mapped_tasks: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_mapped_tasks = max_mapped_tasks
        self.study_instance_uids = study_instance_uids
        self.series_instance_uids = series_instance_uids
        self.dicomweb_conn_id = dicomweb_conn_id
        self.missing_series = missing_series

    def execute(self, context: Any) -> list[str]:
        from kaapana_fhir.flows.dicom_to_fhir.flow import resolve_study_uids
        from kaapana_fhir.hooks.fhir import DicomWebHook

        conf = _conf(context)
        studies, series = uids_from_conf(conf)
        studies += _as_list(self.study_instance_uids)
        series += _as_list(self.series_instance_uids)
        missing = DicomToFhirParams.from_conf(conf, DicomToFhirParams.from_values(
            {"missing_series": self.missing_series}, "operator arguments")).missing_series
        if not studies and not series:
            self.log.info("no study or series UIDs in the run conf; nothing to do")
            return []
        dicomweb = DicomWebHook(self.dicomweb_conn_id).get_conn()
        uids = resolve_study_uids(dicomweb, studies, series, missing=missing)
        self.log.info("%d series / %d studies in conf → %d studies to sync", len(series), len(studies), len(uids))
        return batch_for_mapping(uids, self.max_mapped_tasks)


def batch_for_mapping(uids: list[str], max_tasks: int) -> list[Any]:
    """One mapped task per study while that stays ≤ ``max_tasks``; beyond, equal batches of UIDs per task.

    Keeps a backfill of thousands of studies below Airflow's ``max_map_length`` (1,024) with a bounded
    amount of work per task.
    """
    if max_tasks < 1:
        raise ValueError(f"max_mapped_tasks must be >= 1 (got {max_tasks})")
    if len(uids) <= max_tasks:
        return list(uids)
    size = -(-len(uids) // max_tasks)
    return [uids[i:i + size] for i in range(0, len(uids), size)]


class DicomToFhirOperator(BaseOperator):
    """Sync DICOM studies from the PACS to FHIR: Patient, ImagingStudy, Endpoint, Device.

    Without explicit UIDs it takes them from ``dag_run.conf`` (:func:`uids_from_conf`); ``workflow_form``
    keys in :data:`FORM_KEYS` override the constructor values. Returns a small XCom: studies, series,
    study UIDs, ImagingStudy/Patient ids, resources created/updated/unchanged, failed studies, issues
    (``{tag, value, rule, study, series}``, at most ``max_issues``).

    :param study_instance_uids: StudyInstanceUIDs (0020,000D) (templated; a list or one UID, e.g. from
        ``.expand()`` over :class:`ResolveDicomStudiesOperator`).
    :param series_instance_uids: SeriesInstanceUIDs (0020,000E) whose studies are synced (templated).
    :param fhir_conn_id: FHIR connection (``fhir_default``; env ``FHIR_BASE_URL`` fallback).
    :param dicomweb_conn_id: DICOMweb connection (``dicomweb_default``; env ``DICOMWEB_URL`` fallback).
    :param patient_system: identifier system of PatientID (0010,0020) (templated).
    :param issuer_systems: IssuerOfPatientID (0010,0021) → system URI.
    :param timezone: IANA zone for times without TimezoneOffsetFromUTC (0008,0201) (templated).
    :param endpoint_address: ``Endpoint.address`` (default: the DICOMweb URL) (templated).
    :param include_instances: write ``ImagingStudy.series.instance`` (default False).
    :param include_device: write Device resources (default True).
    :param wado: WADO-RS metadata per series: ``auto`` (when QIDO lacks attributes), ``always``, ``never``.
    :param fail_on_study_error: raise after the other studies are written if a study could not be mapped.
    """

    template_fields: Sequence[str] = ("study_instance_uids", "series_instance_uids", "patient_system", "timezone",
                                      "endpoint_address")

    def __init__(self, *, study_instance_uids: Any = None, series_instance_uids: Any = None,
                 fhir_conn_id: str = "fhir_default", dicomweb_conn_id: str = "dicomweb_default",
                 patient_system: str | None = None, issuer_systems: dict[str, str] | None = None,
                 timezone: str | None = None, endpoint_address: str | None = None, include_instances: bool = False,
                 include_device: bool = True, wado: str = "auto", missing_series: str = "fail",
                 fail_on_study_error: bool = True, max_issues: int = 50, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.study_instance_uids = study_instance_uids
        self.series_instance_uids = series_instance_uids
        self.fhir_conn_id = fhir_conn_id
        self.dicomweb_conn_id = dicomweb_conn_id
        self.patient_system = patient_system
        self.issuer_systems = issuer_systems
        self.timezone = timezone
        self.endpoint_address = endpoint_address
        self.include_instances = include_instances
        self.include_device = include_device
        self.wado = wado
        self.missing_series = missing_series
        self.fail_on_study_error = fail_on_study_error
        self.max_issues = max_issues

    def params_from_arguments(self) -> DicomToFhirParams:
        """The flow's Params from this operator's (rendered) arguments."""
        return DicomToFhirParams.from_values({
            "patient_system": self.patient_system, "timezone": self.timezone,
            "endpoint_address": self.endpoint_address, "include_instances": self.include_instances,
            "include_device": self.include_device, "wado": self.wado, "missing_series": self.missing_series,
        }, "operator arguments")

    def execute(self, context: Any) -> dict[str, Any]:
        from kaapana_fhir.exceptions import MappingError
        from kaapana_fhir.flows.dicom_to_fhir.flow import sync_studies
        from kaapana_fhir.hooks.fhir import DicomWebHook, FhirHook, run_project

        conf = _conf(context)
        params = DicomToFhirParams.from_conf(conf, self.params_from_arguments())
        studies, series = _as_list(self.study_instance_uids), _as_list(self.series_instance_uids)
        if not studies and not series:
            studies, series = uids_from_conf(conf)
        if not studies and not series:
            self.log.info("no study or series UIDs given; nothing to do")
            return {"studies": 0, "series": 0, "failed": [], "issues": []}
        options = params.mapping_options(self.issuer_systems)
        fhir = FhirHook(self.fhir_conn_id, project=run_project(conf)).get_conn()  # the run's project partition, if any
        result = sync_studies(DicomWebHook(self.dicomweb_conn_id).get_conn(), fhir,
                              study_uids=studies, series_uids=series, options=options,
                              wado=params.wado, missing=params.missing_series)
        out = result.as_dict(max_issues=self.max_issues)
        self.log.info("synced %d studies (%d series): %s; %d issues, %d failed", result.studies, result.series,
                      out["resources"], result.issue_count, len(result.failed))
        if result.failed and self.fail_on_study_error:
            raise MappingError("; ".join(f["error"] for f in result.failed))
        return out
