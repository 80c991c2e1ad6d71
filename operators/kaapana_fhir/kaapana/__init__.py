"""Kaapana container operators (one per flow), used when the DAGs run inside Kaapana.

Each module here is a thin subclass of Kaapana's ``KaapanaBaseOperator`` that starts the ``kaapana-fhir``
processing container with ``kaapana-fhir kaapana-run <task>``. File names contain "Operator" and the image
line matches Kaapana's build-script ``IMAGE_PATTERN`` so the platform builds and pre-pulls the image.
Import these only through :func:`kaapana_fhir.kaapana.runtime.flow_operator`; they need Kaapana's
Airflow plugin.
"""
