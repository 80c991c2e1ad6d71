"""kaapana_fhir: DICOM, clinical tables and radiomics into FHIR R4, and back out as cohorts.

Layers (imports only point down): ``core`` (pure mapping, no Airflow, no network) →
``clients`` (FHIR, DICOMweb, S3; no Airflow) → ``hooks`` (Airflow) → ``operators`` → ``dags/``.
"""

__version__ = "0.1.0"
