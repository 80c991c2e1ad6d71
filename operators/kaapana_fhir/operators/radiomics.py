"""Airflow operator of the radiomics flow (thin: conf → :mod:`kaapana_fhir.flows.radiomics.flow`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kaapana_fhir.airflow_compat import BaseOperator
from kaapana_fhir.flows.radiomics.params import RadiomicsParams
from kaapana_fhir.operators._conf_values import as_uid_list as _as_list

#: workflow_form keys a run may set (Kaapana UI / REST trigger); they override the constructor values.
FORM_KEYS = RadiomicsParams.form_keys()


def seg_series_from_conf(conf: dict[str, Any] | None) -> list[str]:
    """SEG SeriesInstanceUIDs (0020,000E) of a run: ``data_form.identifiers`` (Kaapana UI / auto-trigger),
    ``seriesInstanceUID`` (incoming-DICOM service) or ``seg_series_uids`` (REST/CLI)."""
    conf = conf or {}
    uids = (_as_list((conf.get("data_form") or {}).get("identifiers")) + _as_list(conf.get("seriesInstanceUID"))
            + _as_list(conf.get("seg_series_uids")))
    return list(dict.fromkeys(uids))


class RadiomicsToFhirOperator(BaseOperator):
    """Compute pyradiomics features for DICOM SEG series and write them to FHIR.

    Per SEG (fetched with its referenced image series through DICOMweb): one group Observation per
    segment × image type × settings with feature Observations, a BodyStructure per segment and a Device.
    SEG series come from ``seg_series_uids`` or ``dag_run.conf`` (:func:`seg_series_from_conf`);
    ``workflow_form`` keys :data:`FORM_KEYS` override the constructor values (``settings`` = YAML text
    merged over the preset). Returns a small XCom: SEGs, groups, features, absent values, computed and
    skipped image types, issues (at most ``max_issues``), timings.

    :param seg_series_uids: SEG SeriesInstanceUIDs (templated).
    :param settings_path: pyradiomics parameter YAML (templated; default: the shipped default settings).
    :param settings_override: YAML text or dict merged over the settings (templated).
    :param layout: ``members`` (feature Observations, default) or ``components`` (templated).
    :param patient_system: identifier system of PatientID (0010,0020) (templated; default as the DICOM flow).
    :param fhir_conn_id: FHIR connection (``fhir_default``; env ``FHIR_BASE_URL`` fallback).
    :param dicomweb_conn_id: DICOMweb connection (``dicomweb_default``; env ``DICOMWEB_URL`` fallback).
    """

    template_fields: Sequence[str] = ("seg_series_uids", "settings_path", "settings_override", "layout",
                                      "patient_system")

    def __init__(self, *, seg_series_uids: Any = None, settings_path: str | None = None,
                 settings_override: Any = None, layout: str = "members", patient_system: str | None = None,
                 fhir_conn_id: str = "fhir_default", dicomweb_conn_id: str = "dicomweb_default",
                 max_issues: int = 50, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seg_series_uids = seg_series_uids
        self.settings_path = settings_path
        self.settings_override = settings_override
        self.layout = layout
        self.patient_system = patient_system
        self.fhir_conn_id = fhir_conn_id
        self.dicomweb_conn_id = dicomweb_conn_id
        self.max_issues = max_issues

    def execute(self, context: Any) -> dict[str, Any]:
        from kaapana_fhir.flows.radiomics.flow import RadiomicsSummary, run_for_series
        from kaapana_fhir.hooks.fhir import DicomWebHook, FhirHook, run_project

        dr = context.get("dag_run") if hasattr(context, "get") else None
        conf = dict(getattr(dr, "conf", None) or {})
        override = self.settings_override if isinstance(self.settings_override, str) else None
        params = RadiomicsParams.from_conf(conf, RadiomicsParams.from_values(
            {"settings": override, "layout": self.layout, "patient_system": self.patient_system},
            "operator arguments"))
        from_form = "settings_preset" in (conf.get("workflow_form") or {}) or "settings_preset" in conf
        uids = _as_list(self.seg_series_uids) or seg_series_from_conf(conf)
        if not uids:
            self.log.info("no SEG series UIDs given; nothing to do")
            return RadiomicsSummary().as_dict()
        fhir = FhirHook(self.fhir_conn_id, project=run_project(conf)).get_conn()  # the run's project partition, if any
        summary = run_for_series(
            DicomWebHook(self.dicomweb_conn_id).get_conn(), fhir, uids,
            settings_path=self.settings_path, preset=params.settings_preset if from_form else None,
            settings_override=params.settings or (None if override is not None else self.settings_override),
            layout=params.layout, patient_system=params.patient_system)
        self.log.info("radiomics: %d SEG(s), %d groups, %d features (%d absent), image types %s, skipped %s",
                      summary.segs, summary.groups, summary.features, summary.absent,
                      summary.computed_image_types, summary.skipped_image_types)
        return summary.as_dict(max_issues=self.max_issues)
