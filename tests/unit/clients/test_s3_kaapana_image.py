"""The object store and the watcher need only what Kaapana 0.6's Airflow image has: ``minio`` 7.2.10 and
requests, no boto3/botocore (checked in a fresh interpreter where importing those fails)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

_SCRIPT = textwrap.dedent("""
    import sys
    for name in ("boto3", "botocore", "moto", "s3transfer"):
        sys.modules[name] = None  # any import of these now raises ImportError
    import minio
    assert minio.__version__ == "7.2.10", minio.__version__
    from kaapana_fhir.clients import s3
    from kaapana_fhir.flows.tables import watch, flow
    from kaapana_fhir.hooks.fhir import ObjectStoreHook
    from kaapana_fhir.kaapana import tasks
    store = s3.object_store_from_env({
        "MINIO_URL": "http://minio-service.services.svc:9000", "KEYCLOAK_URL": "http://keycloak-external-service.admin.svc:80",
        "KAAPANA_PROJECT_USER_NAME": "system", "KAAPANA_PROJECT_USER_PASSWORD": "p", "OIDC_CLIENT_SECRET": "s"})
    assert type(store.provider).__name__ == "KeycloakStsProvider"
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore") and sys.modules[m] is not None)
    assert not loaded, loaded
    print("ok")
""")


def test_object_store_and_watcher_import_without_boto3() -> None:
    res = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("ok")


def test_minio_is_pinned_to_kaapanas_version() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert '"minio==7.2.10"' in text and "boto3" not in text.split("[project.optional-dependencies]")[0]
