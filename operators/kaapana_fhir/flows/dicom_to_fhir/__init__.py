"""flows.dicom_to_fhir."""
