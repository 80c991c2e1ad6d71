"""Airflow provider metadata: registers the FHIR and DICOMweb connection types when pip-installed."""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "kaapana-fhir",
        "name": "Kaapana FHIR",
        "description": "DICOM, clinical tables and radiomics into FHIR R4, and back out as cohorts.",
        "versions": ["0.1.0"],
        "connection-types": [
            {"hook-class-name": "kaapana_fhir.hooks.fhir.FhirHook", "connection-type": "fhir"},
            {"hook-class-name": "kaapana_fhir.hooks.fhir.DicomWebHook", "connection-type": "dicomweb"},
        ],
    }
