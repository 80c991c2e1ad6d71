"""Shared fixtures: the real local stack (HAPI FHIR, Orthanc DICOMweb, S3), started once per session.

* ``FHIR_BASE_URL`` / ``DICOMWEB_URL`` (+ ``ORTHANC_URL``) / ``S3_ENDPOINT_URL`` point the tests at
  servers that already run instead (then nothing is started or stopped here).
* ``KAAPANA_FHIR_REQUIRE_STACK=1`` (set by CI) turns a stack that cannot start into a failure; without
  it, integration tests are skipped with the reason on machines that lack Java/Orthanc.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from kaapana_fhir.clients.dicomweb import DicomWeb
from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.clients.s3 import ObjectStore
from kaapana_fhir.dev import sso
from kaapana_fhir.dev import stack as devstack
from tests.support.stack_env import external_stack

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"

# Airflow reads its config when first imported: point it at a private home before any test imports it.
_AIRFLOW_HOME = Path(os.environ.get("KAAPANA_FHIR_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME}/airflow.db"
os.environ.setdefault("AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT", "120")


def _require() -> bool:
    return os.environ.get("KAAPANA_FHIR_REQUIRE_STACK", "") == "1" or os.environ.get("CI", "") == "true"


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_S = TypeVar("_S", bound=_Stoppable)


def _servers(what: str, start: Callable[[], _S]) -> Iterator[_S]:
    """Servers started for the session and stopped after it; a start that fails fails the run in CI
    (``_require``) and skips the tests elsewhere, with the reason."""
    try:
        st = start()
    except devstack.StackError as exc:
        if _require():
            pytest.fail(f"{what} could not start: {exc}")
        pytest.skip(f"{what} not available: {exc}")
    try:
        yield st
    finally:
        st.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devstack.Stack]:
    """The running stack; started here unless all three URLs come from the environment."""
    external = external_stack(tmp_path_factory.mktemp("stack-ext"))
    if external is not None:
        yield external
        return
    state = tmp_path_factory.mktemp("stack")
    yield from _servers("local stack", lambda: devstack.up(state))


@pytest.fixture(scope="session")
def fhir_url(stack: devstack.Stack) -> str:
    return stack.fhir_url


@pytest.fixture()
def fhir(fhir_url: str) -> FhirClient:
    return FhirClient(fhir_url)


@pytest.fixture(scope="session")
def dicomweb_url(stack: devstack.Stack) -> str:
    return stack.dicomweb_url


@pytest.fixture()
def dicomweb(dicomweb_url: str) -> DicomWeb:
    return DicomWeb(dicomweb_url)


@pytest.fixture()
def s3(stack: devstack.Stack) -> ObjectStore:
    svc = stack.services["s3"]
    return ObjectStore(svc.url, svc.extra["access_key"], svc.extra["secret_key"])


@pytest.fixture(scope="session")
def sso_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sso.SsoStack]:
    """Keycloak (realm ``kaapana``) + a MinIO using it as OpenID provider: Kaapana's STS credentials for real.
    Started only for the tests that ask for it (Keycloak takes tens of seconds)."""
    state = tmp_path_factory.mktemp("sso")
    yield from _servers("Keycloak/MinIO", lambda: sso.up(state))


@pytest.fixture(scope="session")
def stack_env(stack: devstack.Stack) -> dict[str, str]:
    """Env vars (FHIR_BASE_URL, DICOMWEB_URL, S3_*) and Airflow connections for this stack."""
    env = stack.env()
    env.update(airflow_connection_env(stack))
    return env


def airflow_connection_env(stack: devstack.Stack) -> dict[str, str]:
    """``AIRFLOW_CONN_*`` JSON connections for fhir_default, dicomweb_default and s3_default."""
    import json

    out = {}
    if "hapi" in stack.services:
        out["AIRFLOW_CONN_FHIR_DEFAULT"] = json.dumps({"conn_type": "http", "host": stack.fhir_url})
    if "orthanc" in stack.services:
        out["AIRFLOW_CONN_DICOMWEB_DEFAULT"] = json.dumps({"conn_type": "http", "host": stack.dicomweb_url})
    if "s3" in stack.services:
        svc = stack.services["s3"]
        out["AIRFLOW_CONN_S3_DEFAULT"] = json.dumps({
            "conn_type": "aws", "login": svc.extra["access_key"], "password": svc.extra["secret_key"],
            "extra": {"endpoint_url": svc.url, "region_name": "us-east-1"}})
    return out


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    """The test session's AIRFLOW_HOME (SQLite, our dags/ folder), migrated once.

    The environment is set when this conftest is imported (see ``_AIRFLOW_HOME``), before anything
    imports airflow, since airflow reads its configuration at import time.
    """
    import subprocess
    import sys

    marker = _AIRFLOW_HOME / ".migrated"
    if not marker.exists():
        res = subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
                             capture_output=True, text=True, env=os.environ.copy())
        if res.returncode != 0:
            pytest.fail(f"airflow db migrate failed: {res.stderr[-2000:]}")
        marker.write_text("ok")
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
