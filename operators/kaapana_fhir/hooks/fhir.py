"""Airflow hooks that turn Connections into our clients.

Connections (``AIRFLOW_CONN_FHIR_DEFAULT='{"conn_type": "fhir", "host": "http://fhir:8080/fhir"}'``):

* ``host`` is the full base URL (or host with ``schema``/``port``/path in ``schema``);
* ``login``/``password`` → HTTP basic auth; ``extra.token`` → bearer token;
* ``extra.verify`` (bool or CA path, default true), ``extra.timeout`` (seconds).

If the connection does not exist (Kaapana ships none), the hooks fall back to the environment:
``FHIR_BASE_URL`` (+ ``FHIR_TOKEN``), ``DICOMWEB_URL`` (+ ``DICOMWEB_TOKEN``), ``S3_ENDPOINT_URL`` /
``MINIO_URL`` with ``S3_ACCESS_KEY`` / ``S3_SECRET_KEY``. Secrets are never logged.
"""

from __future__ import annotations

import os
from typing import Any

from kaapana_fhir.airflow_compat import BaseHook
from kaapana_fhir.clients.dicomweb import DicomWeb
from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.clients.s3 import ObjectStore
from kaapana_fhir.exceptions import ConfigError


def _get_connection(conn_id: str) -> Any | None:
    try:
        return BaseHook.get_connection(conn_id)
    except Exception as exc:  # AirflowNotFoundException (class differs between Airflow 2 and 3)
        if "isn't defined" in str(exc) or "not found" in str(exc).lower() or type(exc).__name__.endswith("NotFoundException"):
            return None
        raise


def _url_from_conn(conn: Any) -> str:
    host = (conn.host or "").strip()
    if host.startswith(("http://", "https://")):
        return host
    scheme = conn.schema if conn.schema in ("http", "https") else "http"
    port = f":{conn.port}" if conn.port else ""
    return f"{scheme}://{host}{port}"


def _extra(conn: Any) -> dict[str, Any]:
    try:
        return dict(conn.extra_dejson or {})
    except (AttributeError, ValueError):
        return {}


class FhirHook(BaseHook):
    """Connection → :class:`~kaapana_fhir.clients.fhir.FhirClient`."""

    conn_name_attr = "fhir_conn_id"
    default_conn_name = "fhir_default"
    conn_type = "fhir"
    hook_name = "FHIR"

    def __init__(self, fhir_conn_id: str = default_conn_name, base_url: str | None = None) -> None:
        super().__init__()
        self.fhir_conn_id = fhir_conn_id
        self.base_url = base_url

    def get_conn(self) -> FhirClient:
        if self.base_url:
            return FhirClient(self.base_url, token=os.environ.get("FHIR_TOKEN") or None)
        conn = _get_connection(self.fhir_conn_id)
        if conn is None:
            url = os.environ.get("FHIR_BASE_URL")
            if not url:
                raise ConfigError(f"no Airflow connection {self.fhir_conn_id!r} and no FHIR_BASE_URL set; "
                                  "create the connection (conn_type fhir, host = FHIR base URL)")
            return FhirClient(url, token=os.environ.get("FHIR_TOKEN") or None)
        extra = _extra(conn)
        auth = (conn.login, conn.password or "") if conn.login else None
        return FhirClient(_url_from_conn(conn), token=extra.get("token"), basic_auth=auth,
                          verify=extra.get("verify", True), timeout=float(extra.get("timeout", 120)))

    def test_connection(self) -> tuple[bool, str]:
        try:
            cap = self.get_conn().capabilities()
            return True, f"FHIR server answered: fhirVersion {cap.get('fhirVersion', '?')}"
        except Exception as exc:  # report any failure to the UI, never raise
            return False, str(exc)


class DicomWebHook(BaseHook):
    """Connection → :class:`~kaapana_fhir.clients.dicomweb.DicomWeb`."""

    conn_name_attr = "dicomweb_conn_id"
    default_conn_name = "dicomweb_default"
    conn_type = "dicomweb"
    hook_name = "DICOMweb"

    def __init__(self, dicomweb_conn_id: str = default_conn_name, url: str | None = None) -> None:
        super().__init__()
        self.dicomweb_conn_id = dicomweb_conn_id
        self.url = url

    def get_conn(self) -> DicomWeb:
        if self.url:
            return DicomWeb(self.url, token=os.environ.get("DICOMWEB_TOKEN") or None)
        conn = _get_connection(self.dicomweb_conn_id)
        if conn is None:
            url = os.environ.get("DICOMWEB_URL")
            if not url:
                raise ConfigError(f"no Airflow connection {self.dicomweb_conn_id!r} and no DICOMWEB_URL set")
            return DicomWeb(url, token=os.environ.get("DICOMWEB_TOKEN") or None)
        extra = _extra(conn)
        return DicomWeb(_url_from_conn(conn), token=extra.get("token"), verify=extra.get("verify", True))

    def test_connection(self) -> tuple[bool, str]:
        try:
            self.get_conn().search_studies({"limit": 1})
            return True, "DICOMweb QIDO-RS answered"
        except Exception as exc:  # report any failure to the UI, never raise
            return False, str(exc)


class ObjectStoreHook(BaseHook):
    """Connection (conn_type ``aws``: login = access key, password = secret, extra.endpoint_url) →
    :class:`~kaapana_fhir.clients.s3.ObjectStore` (MinIO in Kaapana)."""

    conn_name_attr = "s3_conn_id"
    default_conn_name = "s3_default"
    conn_type = "aws"
    hook_name = "S3 / MinIO (kaapana_fhir)"

    def __init__(self, s3_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.s3_conn_id = s3_conn_id

    def get_conn(self) -> ObjectStore:
        conn = _get_connection(self.s3_conn_id)
        if conn is None:
            url = os.environ.get("S3_ENDPOINT_URL") or os.environ.get("MINIO_URL")
            if not url:
                raise ConfigError(f"no Airflow connection {self.s3_conn_id!r} and no S3_ENDPOINT_URL/MINIO_URL set")
            if not url.startswith(("http://", "https://")):
                url = "http://" + url
            return ObjectStore(url, os.environ.get("S3_ACCESS_KEY"), os.environ.get("S3_SECRET_KEY"))
        extra = _extra(conn)
        return ObjectStore(extra.get("endpoint_url") or None, conn.login, conn.password,
                           region=extra.get("region_name", "us-east-1"), verify=extra.get("verify", True))

    def test_connection(self) -> tuple[bool, str]:
        try:
            self.get_conn()._client.list_buckets()
            return True, "S3 answered"
        except Exception as exc:  # report any failure to the UI, never raise
            return False, str(exc)
