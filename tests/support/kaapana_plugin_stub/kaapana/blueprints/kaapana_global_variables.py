"""Test stand-in for ``kaapana.blueprints.kaapana_global_variables`` (values as on a default platform)."""

import os

DEFAULT_REGISTRY = os.environ.get("DEFAULT_REGISTRY", "registry.kaapana.test/kaapana")
KAAPANA_BUILD_VERSION = os.environ.get("KAAPANA_BUILD_VERSION", "0.6.0")
BATCH_NAME = "batch"
AIRFLOW_WORKFLOW_DIR = "/kaapana/mounted/workflows/data"
PROCESSING_WORKFLOW_DIR = "/kaapana/mounted/data"
SERVICES_NAMESPACE = os.environ.get("SERVICES_NAMESPACE", "services")
ADMIN_NAMESPACE = os.environ.get("ADMIN_NAMESPACE", "admin")
GPU_SUPPORT = False
PULL_POLICY_IMAGES = "IfNotPresent"
