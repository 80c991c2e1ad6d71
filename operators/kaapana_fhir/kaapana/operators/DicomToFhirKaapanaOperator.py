"""Kaapana container operator of the ``dicom-to-fhir`` flow."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

from kaapana.blueprints.kaapana_global_variables import DEFAULT_REGISTRY, KAAPANA_BUILD_VERSION

from kaapana_fhir.kaapana.operators.KaapanaFhirBaseOperator import KaapanaFhirBaseOperator


class DicomToFhirKaapanaOperator(KaapanaFhirBaseOperator):
    """DICOM series of the batch (files in ``operator_in_dir``, else ``data_form.identifiers`` via
    DICOMweb) → Patient / ImagingStudy / Endpoint / Device in FHIR.
    """

    TASK: ClassVar[str] = "dicom-to-fhir"
    RAM_MB: ClassVar[tuple[int, int]] = (1000, 4000)
    TIMEOUT: ClassVar[timedelta] = timedelta(minutes=60)

    def __init__(self, dag: Any, name: str = "dicom-to-fhir", **kwargs: Any) -> None:
        super().__init__(
            dag=dag,
            name=name,
            image=f"{DEFAULT_REGISTRY}/kaapana-fhir:{KAAPANA_BUILD_VERSION}",
            **kwargs,
        )
