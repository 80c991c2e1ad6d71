"""``radiomics-to-fhir``: DICOM SEG series → pyradiomics features per segment → FHIR Observations.

Triggered by ``kaapana_fhir_radiomics_trigger_rule.json`` (Modality (0008,0060) SEG) or from the Kaapana
workflow UI with a SEG dataset: ``data_form.identifiers`` = SEG SeriesInstanceUIDs (also accepted:
``seriesInstanceUID``, ``seg_series_uids``). The referenced image series is fetched through DICOMweb.
On plain Airflow: ``dag.test(run_conf={"data_form": {"identifiers": ["<SEG series UID>"]}})``.
"""

from __future__ import annotations

from datetime import timedelta

from kaapana_fhir.flows.radiomics.params import Layout
from kaapana_fhir.kaapana.runtime import flow_operator, kaapana_cleaner, kaapana_input_operator, workflow_dag

ui_forms = {
    "documentation_form": {"path": "/user_guide/extensions.html#radiomics-to-fhir"},
    "workflow_form": {
        "type": "object",
        "properties": {
            "single_execution": {"title": "single execution", "type": "boolean", "default": True,
                                 "description": "one run per SEG series"},
            "input": {"title": "Input modality", "type": "string", "default": "SEG", "readOnly": True},
            "settings_preset": {"title": "pyradiomics settings", "type": "string", "default": "default",
                                "enum": ["default", "all_image_types"],
                                "description": "default: original image, 107 features; all_image_types: + LoG "
                                               "(sigma 1,2), wavelet, square, ... (~1,300 features)"},
            "settings": {"title": "Settings override (YAML)", "type": "string", "default": "",
                         "description": "pyradiomics parameter YAML merged over the preset, e.g. "
                                        "'setting: {binWidth: 10}'"},
            "layout": {"title": "FHIR layout", "type": "string", "default": "members",
                       "enum": [m.value for m in Layout],
                       "description": "members: one Observation per feature; components: one per group"},
        },
    },
}

with workflow_dag(
    "radiomics-to-fhir",
    description="pyradiomics features of DICOM SEG segments as FHIR Observations",
    ui_forms=ui_forms,
    max_active_runs=5,
    tags=["kaapana-fhir", "radiomics"],
    doc_md=__doc__,
) as dag:
    get_input = kaapana_input_operator(dag)
    radiomics = flow_operator("radiomics", dag=dag, task_id="radiomics-to-fhir", fhir_conn_id="fhir_default",
                              dicomweb_conn_id="dicomweb_default", execution_timeout=timedelta(minutes=120))
    clean = kaapana_cleaner(dag)
    if get_input is not None:
        get_input >> radiomics
    if clean is not None:
        radiomics >> clean
