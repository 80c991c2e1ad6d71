"""Parameters of the ``dicom-to-fhir`` flow (``workflow_form`` keys of ``dags/dag_dicom_to_fhir.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM
from kaapana_fhir.flows.params import FlowParams, param

if TYPE_CHECKING:
    from kaapana_fhir.core.dicom.mapping import MappingOptions


@dataclass(frozen=True)
class DicomToFhirParams(FlowParams):
    """Options of one DICOM → FHIR run.

    :param patient_system: identifier system of PatientID (0010,0020).
    :param timezone: IANA zone for times without TimezoneOffsetFromUTC (0008,0201); None: date only.
    :param endpoint_address: ``Endpoint.address`` (None: the DICOMweb URL).
    :param include_instances: write ``ImagingStudy.series.instance[]``.
    :param include_device: write Device resources.
    :param wado: WADO-RS metadata per series: ``auto`` (when QIDO lacks attributes), ``always``, ``never``.
    :param missing_series: a requested series not in the PACS: ``fail`` (retry later) or ``skip``.
    """

    FLOW: ClassVar[str] = "dicom-to-fhir"

    patient_system: str = param(DEFAULT_PATIENT_SYSTEM, cli="patient_system")
    timezone: str | None = param(None, cli="timezone")
    endpoint_address: str | None = param(None, cli="endpoint_address")
    include_instances: bool = param(False, cli="include_instances")
    include_device: bool = param(True, cli="no_device", invert_cli=True)
    wado: str = param("auto", cli="wado", choices=("auto", "always", "never"))
    missing_series: str = param("fail", cli="missing_series", choices=("fail", "skip"))

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
        )
