"""Module-level values of Kaapana 0.6.0's ``kaapana.blueprints.kaapana_global_variables`` (facts: constants
for the two workflow mounts and the batch name; the rest read from the Airflow pod's env at import)."""

import os

BATCH_NAME = "batch"
AIRFLOW_WORKFLOW_DIR = "/kaapana/mounted/workflows/data"
PROCESSING_WORKFLOW_DIR = "/kaapana/mounted/data"
KAAPANA_BUILD_VERSION = os.getenv("KAAPANA_BUILD_VERSION", None)
ADMIN_NAMESPACE = os.getenv("ADMIN_NAMESPACE", None)
SERVICES_NAMESPACE = os.getenv("SERVICES_NAMESPACE", None)
PULL_POLICY_IMAGES = os.getenv("PULL_POLICY_IMAGES", "IfNotPresent")
DEFAULT_REGISTRY = os.getenv("DEFAULT_REGISTRY", None)
PLATFORM_VERSION = os.getenv("PLATFORM_VERSION", None)
GPU_SUPPORT = os.getenv("GPU_SUPPORT", "False").lower() == "true"
WORKFLOW_DIR = AIRFLOW_WORKFLOW_DIR
BUILD_VERSION = KAAPANA_BUILD_VERSION
