"""Parameters of the ``dicom-to-fhir`` flow (``workflow_form`` keys of ``dags/dag_dicom_to_fhir.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar

from kaapana_fhir.core.dicom.mapping import Profile
from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM
from kaapana_fhir.flows.params import FlowParams, param

if TYPE_CHECKING:
    from kaapana_fhir.core.dicom.mapping import MappingOptions


class WadoMode(StrEnum):
    """When WADO-RS instance metadata is read for a series."""

    #: only when QIDO lacks an attribute the output needs (and the PACS cannot give it by ``includefield``)
    AUTO = "auto"
    #: for every series (slow; for a PACS whose QIDO answers are incomplete)
    ALWAYS = "always"
    #: never (QIDO attributes only)
    NEVER = "never"


class MissingSeries(StrEnum):
    """What a requested series that the PACS does not (yet) know does to the run."""

    #: the run fails, so Airflow retries it later (Kaapana triggers before the PACS has indexed the series)
    FAIL = "fail"
    #: it is skipped with an issue
    SKIP = "skip"


@dataclass(frozen=True)
class DicomToFhirParams(FlowParams):
    """Options of one DICOM → FHIR run.

    :param patient_system: identifier system of PatientID (0010,0020).
    :param timezone: IANA zone for times without TimezoneOffsetFromUTC (0008,0201); None: date only.
    :param endpoint_address: ``Endpoint.address`` (None: the DICOMweb URL).
    :param include_instances: write ``ImagingStudy.series.instance[]``.
    :param include_device: write Device resources.
    :param wado: WADO-RS metadata per series (:class:`WadoMode`): ``auto`` (when QIDO lacks attributes),
        ``always``, ``never``.
    :param missing_series: a requested series not in the PACS (:class:`MissingSeries`): ``fail`` (retry later)
        or ``skip``.
    :param profile: :class:`~kaapana_fhir.core.dicom.mapping.Profile` the output claims: ``mii`` (MII KDS
        Bildgebung profiles and extensions) or ``core`` (plain FHIR R4).
    :param dose_reports: map CT radiation dose SRs (TID 10011) to Observations.
    """

    FLOW: ClassVar[str] = "dicom-to-fhir"

    patient_system: str = param(DEFAULT_PATIENT_SYSTEM, cli="patient_system")
    timezone: str | None = param(None, cli="timezone")
    endpoint_address: str | None = param(None, cli="endpoint_address")
    include_instances: bool = param(False, cli="include_instances")
    include_device: bool = param(True, cli="no_device", invert_cli=True)
    wado: WadoMode = param(WadoMode.AUTO, cli="wado")
    missing_series: MissingSeries = param(MissingSeries.FAIL, cli="missing_series")
    profile: Profile = param(Profile.MII, cli="profile")
    dose_reports: bool = param(True, cli="no_dose", invert_cli=True)

    def mapping_options(self, issuer_systems: dict[str, str] | None = None) -> MappingOptions:
        """The DICOM mapping options of these parameters."""
        from kaapana_fhir.core.dicom.mapping import MappingOptions

        return MappingOptions(
            patient_system=self.patient_system,
            issuer_systems=dict(issuer_systems or {}),
            timezone=self.timezone or None,
            endpoint_address=self.endpoint_address or None,
            include_instances=self.include_instances,
            include_device=self.include_device,
            profile=self.profile,
            dose_reports=self.dose_reports,
        )
