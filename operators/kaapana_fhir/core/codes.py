"""Code systems and conventions shared by every flow, so the cohort views can find what others wrote.

Conventions (all flows follow them; the cohort views in ``data/views`` rely on them):

* Patient: ``Patient.id = identifiers.patient_id(system, value)``; ``Patient.identifier[0]`` =
  ``{system, value}`` of the patient key (DICOM PatientID (0010,0020) or the table key column).
* Clinical Observation / Condition (tables): ``code.text`` = the variable name of the source table
  (e.g. ``Overall.Stage``), ``code.coding`` = LOINC/SNOMED codes from the mapping; ``meta.tag`` holds
  ``{system: TAG_SOURCE, code: "clinical-table"}``; ``category`` per mapping.
* ImagingStudy: ``identifier`` ``{system: "urn:dicom:uid", value: "urn:oid:<StudyInstanceUID>"}``,
  ``series[].uid`` = SeriesInstanceUID; ``meta.tag`` ``{system: TAG_SOURCE, code: "dicom"}``.
* Radiomics: group Observation ``code.coding`` = ``{system: CS_KAAPANA, code: "radiomics-feature-set"}``,
  ``hasMember`` → feature Observations. Feature Observation: ``category`` = imaging,
  ``code.coding[0]`` = ``{system: CS_PYRADIOMICS, code: "<featureClass>_<featureName>"}`` (e.g.
  ``firstorder_Mean``; IBSI codings may follow), ``method.coding[0]`` = ``{system: CS_IMAGE_TYPE,
  code: "<image type>"}`` (e.g. ``original``, ``wavelet-LLH``), ``focus`` → BodyStructure of the segment,
  ``derivedFrom`` → ImagingStudy, ``subject`` → Patient, ``meta.tag`` ``{system: TAG_SOURCE, code: "radiomics"}``.
* BodyStructure (segment): ``identifier`` = ``{system: CS_SEGMENT, value: "<SEG SOPInstanceUID>/<SegmentNumber>"}``,
  ``description`` = SegmentLabel (0062,0005).
"""

from __future__ import annotations

#: DICOM UIDs in FHIR identifiers.
SYSTEM_DICOM_UID = "urn:dicom:uid"
#: DICOM controlled terminology (modalities, DCM codes).
CS_DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VER_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ENDPOINT_CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"

#: Package code systems (URNs: stable, no web page needed).
CS_KAAPANA = "urn:kaapana-fhir:CodeSystem:kaapana-fhir"
CS_PYRADIOMICS = "urn:kaapana-fhir:CodeSystem:pyradiomics-feature"
CS_IMAGE_TYPE = "urn:kaapana-fhir:CodeSystem:pyradiomics-image-type"
CS_SEGMENT = "urn:kaapana-fhir:segment"
#: ``meta.tag`` system telling which flow wrote a resource (values: dicom, clinical-table, radiomics).
TAG_SOURCE = "urn:kaapana-fhir:source"
