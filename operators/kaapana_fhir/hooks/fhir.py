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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kaapana_fhir.airflow_compat import AirflowNotFoundException, BaseHook
from kaapana_fhir.clients.dicomweb import DicomWeb
from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.clients.s3 import ObjectStore, object_store_from_env
from kaapana_fhir.exceptions import ConfigError


def _get_connection(conn_id: str) -> Any | None:
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


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


@dataclass(frozen=True)
class _HttpSettings:
    """Where and how to reach an HTTP service: from the Connection, or from the environment without one."""

    url: str
    token: str | None = None
    basic_auth: tuple[str, str] | None = None
    verify: bool | str = True
    timeout: float | None = None


def _http_settings(conn_id: str, explicit_url: str | None, url_env: str, token_env: str, hint: str) -> _HttpSettings:
    """Resolve one service's settings: an explicit URL wins, then the Connection, then ``url_env``/``token_env``."""
    env_token = os.environ.get(token_env) or None
    if explicit_url:
        return _HttpSettings(explicit_url, token=env_token)
    conn = _get_connection(conn_id)
    if conn is None:
        url = os.environ.get(url_env)
        if not url:
            raise ConfigError(f"no Airflow connection {conn_id!r} and no {url_env} set; {hint}")
        return _HttpSettings(url, token=env_token)
    extra = _extra(conn)
    timeout = extra.get("timeout")
    return _HttpSettings(
        _url_from_conn(conn),
        token=extra.get("token"),
        basic_auth=(conn.login, conn.password or "") if conn.login else None,
        verify=extra.get("verify", True),
        timeout=float(timeout) if timeout is not None else None,
    )


def _test(probe: Callable[[], str]) -> tuple[bool, str]:
    """Run a connection probe for the UI's Test button: (ok, message); never raises."""
    try:
        return True, probe()
    except Exception as exc:  # report any failure to the UI, never raise
        return False, str(exc)


class FhirHook(BaseHook):
    """Connection → :class:`~kaapana_fhir.clients.fhir.FhirClient`."""

    conn_name_attr = "fhir_conn_id"
    default_conn_name = "fhir_default"
    conn_type = "fhir"
    hook_name = "FHIR"

    def __init__(self, fhir_conn_id: str = default_conn_name, base_url: str | None = None,
                 project: str | None = None) -> None:
        super().__init__()
        self.fhir_conn_id = fhir_conn_id
        self.base_url = base_url
        self.project = project

    def get_conn(self) -> FhirClient:
        """The FHIR client; with a ``project`` the client of that project's HAPI partition (``<base>/<project>``)."""
        st = _http_settings(self.fhir_conn_id, self.base_url, "FHIR_BASE_URL", "FHIR_TOKEN",
                            "create the connection (conn_type fhir, host = FHIR base URL)")
        client = FhirClient(st.url, token=st.token, basic_auth=st.basic_auth, verify=st.verify,
                            timeout=st.timeout if st.timeout is not None else 120.0)
        return client.for_project(self.project)

    def test_connection(self) -> tuple[bool, str]:
        def probe() -> str:
            return f"FHIR server answered: fhirVersion {self.get_conn().capabilities().get('fhirVersion', '?')}"

        return _test(probe)


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
        st = _http_settings(self.dicomweb_conn_id, self.url, "DICOMWEB_URL", "DICOMWEB_TOKEN",
                            "create the connection (conn_type dicomweb, host = DICOMweb base URL)")
        return DicomWeb(st.url, token=st.token, verify=st.verify)

    def test_connection(self) -> tuple[bool, str]:
        def probe() -> str:
            self.get_conn().search_studies({"limit": 1})
            return "DICOMweb QIDO-RS answered"

        return _test(probe)


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
            # Kaapana's Airflow: its project/system user via Keycloak + MinIO STS; else static keys from the env
            return object_store_from_env(os.environ)
        extra = _extra(conn)
        return ObjectStore(extra.get("endpoint_url") or None, conn.login, conn.password,
                           region=extra.get("region_name", "us-east-1"), verify=extra.get("verify", True))

    def test_connection(self) -> tuple[bool, str]:
        bucket = _extra(_get_connection(self.s3_conn_id)).get("bucket") or os.environ.get("KAAPANA_FHIR_BUCKET")
        # a project user may not list buckets: test on the project's bucket when one is configured
        return _test(lambda: self.get_conn().check(bucket or None))


def partitioning_mode() -> str:
    """``KAAPANA_FHIR_PARTITIONING``, else the Kaapana site setting ``fhir_partitioning`` (written by the workflow
    chart next to the DAGs), else ``none``."""
    mode = os.environ.get("KAAPANA_FHIR_PARTITIONING")
    if not mode:
        from kaapana_fhir.kaapana.env import site_settings  # a local JSON file; empty dict outside Kaapana

        mode = str(site_settings().get("fhir_partitioning") or "none")
    return mode.strip().lower()


def run_project(conf: Any) -> str | None:
    """The FHIR project (HAPI partition) of a run: ``conf["project"]`` (plain Airflow option); with
    ``KAAPANA_FHIR_PARTITIONING=url`` also Kaapana's ``project_form.name``, else the admin project (triggered runs);
    None: the server's default partition."""
    c = conf if isinstance(conf, dict) else {}
    explicit = str(c.get("project") or "").strip()
    if explicit:
        return explicit
    if partitioning_mode() == "url":
        form = c.get("project_form") if isinstance(c.get("project_form"), dict) else {}
        return str((form or {}).get("name") or "admin")
    return None
