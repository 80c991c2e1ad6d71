"""Kaapana's MinIO credentials for real: a project user's Keycloak token exchanged at MinIO with STS
``AssumeRoleWithWebIdentity`` (a real Keycloak 26.4 with our realm ``kaapana``, a real MinIO with Keycloak as
its OpenID provider, both from ``tests/conftest.py``'s ``sso_stack``), and the faults around it.

The bucket layout is Kaapana's: project ``admin`` has bucket ``project-admin`` and MinIO policy
``admin_project_admin`` (read/write on that bucket only); project ``nobucket`` has a policy but no bucket.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from kaapana_fhir.clients.s3 import (
    KeycloakStsProvider,
    ObjectStore,
    ObjectStoreAuthError,
    credentials_from_env,
    object_store_from_env,
)
from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM, patient_id
from kaapana_fhir.dev import sso
from kaapana_fhir.dev.stack import free_port
from kaapana_fhir.dev.synthetic_tables import synthetic_lung1_csv
from kaapana_fhir.exceptions import ConfigError, ObjectStoreError
from tests.integration.test_kaapana_container import Platform, kaapana  # noqa: F401 - the pod harness fixture
from tests.support.table_dags import load_table_dags, run_import, run_watcher

pytestmark = pytest.mark.integration
BUCKET = "project-admin"


def _sts_store(st: sso.SsoStack, **env: str) -> ObjectStore:
    store = object_store_from_env({**st.env(), **env})
    assert isinstance(store.provider, KeycloakStsProvider)
    return store


def _root(st: sso.SsoStack) -> ObjectStore:
    return ObjectStore(st.minio.url, st.minio.root_user, st.minio.root_password)


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _put_lung1(store: ObjectStore, id_prefix: str, n: int, seed: int, *, name: str = "lung1.csv",
               preset_sidecar: bool = True) -> tuple[str, str, list[str]]:
    """A synthetic Lung1 table of ``n`` patients (PatientIDs ``<id_prefix>-<tag>-<i>``) stored as
    ``fhir-import/<tag>/<name>`` in the project bucket, with its ``lung1`` preset sidecar unless told
    otherwise: (tag, object key, PatientIDs)."""
    tag = _tag()
    key = f"fhir-import/{tag}/{name}"
    ids = [f"{id_prefix}-{tag}-{i}" for i in range(1, n + 1)]
    store.put_bytes(BUCKET, key, synthetic_lung1_csv(ids, seed=seed).encode())
    if preset_sidecar:
        store.put_bytes(BUCKET, key.removesuffix(".csv") + ".preset", b"lung1\n")
    return tag, key, ids


def test_objects_are_listed_read_and_written_with_temporary_keys(sso_stack: sso.SsoStack) -> None:
    store = _sts_store(sso_stack)
    prefix = f"fhir-import/{_tag()}/"
    etag = store.put_bytes(BUCKET, f"{prefix}t.csv", b"id,x\n1,2\n", "text/csv")
    assert [(o.key, o.etag) for o in store.list(BUCKET, prefix)] == [(f"{prefix}t.csv", etag)]
    assert store.get_bytes(BUCKET, f"{prefix}t.csv") == b"id,x\n1,2\n"
    assert store.head(BUCKET, f"{prefix}t.csv").size == 9  # type: ignore[union-attr]
    # the object really is in MinIO (read back with the root user), written with temporary keys
    assert _root(sso_stack).get_bytes(BUCKET, f"{prefix}t.csv") == b"id,x\n1,2\n"
    creds = store.provider.retrieve()
    assert creds.access_key != sso_stack.minio.root_user and creds.session_token
    assert store.provider.stats == {"password_grants": 1, "refresh_grants": 0, "sts_calls": 1}  # type: ignore[attr-defined]
    store.delete(BUCKET, f"{prefix}t.csv")
    assert list(store.list(BUCKET, prefix)) == []


def test_table_import_and_cohort_upload_with_sts(sso_stack: sso.SsoStack, fhir: Any, tmp_path: Path) -> None:
    """The real table import reads the object and writes report + state with STS keys; the cohort upload
    writes its files into the project bucket the same way."""
    from kaapana_fhir.flows.cohort.flow import run_cohort
    from kaapana_fhir.flows.tables.flow import import_object
    from kaapana_fhir.flows.tables.watch import find_new_objects

    store = _sts_store(sso_stack)
    tag, _, ids = _put_lung1(store, "STS", 4, seed=3)
    prefix = f"fhir-import/{tag}/"
    confs = find_new_objects(store, BUCKET, prefix)
    assert [c["object_key"] for c in confs] == [f"{prefix}lung1.csv"]
    rep = import_object(store, fhir, BUCKET, confs[0]["object_key"], signature=confs[0].get("signature"))
    assert rep.status == "imported" and rep.rows_read == 4
    for pid in ids:
        assert fhir.read("Patient", patient_id(DEFAULT_PATIENT_SYSTEM, pid))["identifier"][0]["value"] == pid
    assert store.head(BUCKET, f"{prefix}lung1.import-report.json") is not None
    assert find_new_objects(store, BUCKET, prefix) == []  # state written back with STS keys

    summary = run_cohort(fhir, tmp_path / "cohort", patient_search=f"Patient?identifier={DEFAULT_PATIENT_SYSTEM}|",
                         store=store, bucket=BUCKET, prefix=f"fhir-cohort/{tag}", formats=("csv",))
    assert summary.object_keys and all(k.startswith(f"fhir-cohort/{tag}/") for k in summary.object_keys)
    assert {o.key for o in _root(sso_stack).list(BUCKET, f"fhir-cohort/{tag}/")} == set(summary.object_keys)


def test_expired_token_mid_import_is_renewed_and_nothing_is_duplicated(sso_stack: sso.SsoStack, fhir: Any) -> None:
    """Token and keys live 6 s; the FHIR write of the import takes longer, so the report/state upload
    needs new keys (renewed before expiry); then keys that MinIO already considers expired are used on
    purpose (ExpiredToken → renew once → retry)."""
    from kaapana_fhir.flows.tables.flow import import_object

    kc = sso_stack.keycloak
    kc.set_access_token_lifespan(6)
    try:
        store = _sts_store(sso_stack)
        provider = store.provider
        assert isinstance(provider, KeycloakStsProvider)
        _, key, ids = _put_lung1(store, "EXP", 3, seed=5, preset_sidecar=False)

        class SlowFhir:
            def __init__(self, inner: Any) -> None:
                self.inner = inner

            def __getattr__(self, name: str) -> Any:
                return getattr(self.inner, name)

            def write_entries(self, *a: Any, **kw: Any) -> Any:
                time.sleep(7)  # past the keys' lifetime
                return self.inner.write_entries(*a, **kw)

        rep = import_object(store, SlowFhir(fhir), BUCKET, key, preset="lung1")
        assert rep.status == "imported"
        assert provider.stats["sts_calls"] >= 2 and provider.stats["password_grants"] == 1
        for pid in ids:
            assert fhir.count("Patient", {"identifier": f"{DEFAULT_PATIENT_SYSTEM}|{pid}"}) == 1

        # keys MinIO already rejects: the provider is told they are still good, so MinIO has to refuse them
        provider.retrieve()
        provider._creds_until = time.time() + 3600
        time.sleep(7)
        calls = provider.stats["sts_calls"]
        assert store.get_bytes(BUCKET, key)
        assert provider.stats["sts_calls"] == calls + 1
    finally:
        kc.set_access_token_lifespan(300)


def test_wrong_client_secret_is_named_and_nothing_is_written(sso_stack: sso.SsoStack) -> None:
    key = f"fhir-import/{_tag()}/never.csv"
    store = _sts_store(sso_stack, KAAPANA_CLIENT_SECRET="not-the-secret")
    with pytest.raises(ObjectStoreAuthError, match="wrong client secret") as ei:
        store.put_bytes(BUCKET, key, b"x")
    assert "not-the-secret" not in str(ei.value) and sso_stack.keycloak.realm_url in str(ei.value)
    assert _root(sso_stack).head(BUCKET, key) is None


def test_keycloak_down_names_the_url_and_nothing_is_written(sso_stack: sso.SsoStack) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    key = f"fhir-import/{_tag()}/never.csv"
    store = _sts_store(sso_stack, KEYCLOAK_URL=dead)
    with pytest.raises(ObjectStoreAuthError, match=f"Keycloak at {dead}/auth/realms/kaapana/.* is unreachable"):
        store.put_bytes(BUCKET, key, b"x")
    assert _root(sso_stack).head(BUCKET, key) is None


def test_sts_refused_for_a_token_without_policy(sso_stack: sso.SsoStack) -> None:
    store = _sts_store(sso_stack, KAAPANA_PROJECT_USER_NAME=sso.NO_POLICY_USER)
    with pytest.raises(ObjectStoreAuthError, match="MinIO STS AssumeRoleWithWebIdentity .* refused") as ei:
        list(store.list(BUCKET))
    assert sso_stack.keycloak.user_password not in str(ei.value)


def test_project_without_bucket(sso_stack: sso.SsoStack) -> None:
    store = _sts_store(sso_stack, KAAPANA_PROJECT_USER_NAME=sso.OTHER_USER)
    with pytest.raises(ObjectStoreError, match="bucket 'project-nobucket' does not exist"):
        store.require_bucket("project-nobucket")
    with pytest.raises(ObjectStoreError, match="bucket 'project-nobucket' does not exist"):
        list(store.list("project-nobucket", "fhir-import/"))


def test_keys_outside_the_project_are_refused(sso_stack: sso.SsoStack) -> None:
    tag = _tag()
    store = object_store_from_env(sso_stack.env(), prefix=f"fhir-import/{tag}/")
    with pytest.raises(ConfigError, match="outside the configured prefix"):
        store.put_bytes(BUCKET, "fhir-cohort/x.csv", b"x")
    with pytest.raises(ConfigError, match="'..'"):
        store.get_bytes(BUCKET, f"fhir-import/{tag}/../../secrets.csv")
    assert store.provider.stats["sts_calls"] == 0  # type: ignore[attr-defined]  # refused before any request
    # MinIO itself: the project's temporary keys do not reach another project's bucket
    _root(sso_stack).ensure_bucket("project-other")
    _root(sso_stack).put_bytes("project-other", "fhir-import/b.csv", b"b")
    plain = _sts_store(sso_stack)
    with pytest.raises(ObjectStoreError, match="denied"):
        plain.get_bytes("project-other", "fhir-import/b.csv")
    with pytest.raises(ObjectStoreError, match="denied"):
        plain.put_bytes("project-other", "fhir-import/evil.csv", b"x")


def test_no_secret_in_logs_at_debug(sso_stack: sso.SsoStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = _sts_store(sso_stack)
    store.put_bytes(BUCKET, f"fhir-import/{_tag()}/log.csv", b"x")
    bad = _sts_store(sso_stack, KAAPANA_CLIENT_SECRET="wrong-secret-123")
    with pytest.raises(ObjectStoreAuthError):
        list(bad.list(BUCKET))
    creds = store.provider.retrieve()
    text = caplog.text
    for secret in (sso_stack.keycloak.client_secret, sso_stack.keycloak.user_password, "wrong-secret-123",
                   creds.secret_key, creds.session_token or "-", store.provider._token or "-"):  # type: ignore[attr-defined]
        assert secret not in text


def test_credential_choice_is_explicit_in_the_stack_env(sso_stack: sso.SsoStack) -> None:
    env = {**sso_stack.static_env(), **sso_stack.env()}
    with pytest.raises(ConfigError, match="KAAPANA_FHIR_S3_AUTH"):
        credentials_from_env(env)
    assert object_store_from_env({**env, "KAAPANA_FHIR_S3_AUTH": "static"}).put_bytes(
        BUCKET, f"fhir-import/{_tag()}/static.csv", b"x")


@pytest.mark.airflow
def test_watcher_and_import_dags_run_in_airflow_with_sts_only(sso_stack: sso.SsoStack, airflow_home: Path,
                                                              fhir_url: str, fhir: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Kaapana's Airflow has no S3 connection and no keys: the hooks fall back to the environment, which
    carries the project user, the client secret and KEYCLOAK_URL (as Kaapana's scheduler pod does)."""
    import json
    import os

    for k in list(os.environ):
        if k.startswith(("AIRFLOW_CONN_S3", "S3_", "MINIO_", "AWS_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AIRFLOW_CONN_FHIR_DEFAULT", json.dumps({"conn_type": "http", "host": fhir_url}))
    for k, v in sso_stack.env().items():
        monkeypatch.setenv(k, v)
    dags = load_table_dags()

    store = _sts_store(sso_stack)
    tag, _, ids = _put_lung1(store, "AF", 3, seed=9)
    prefix = f"fhir-import/{tag}/"

    _, confs = run_watcher(dags["watcher"], BUCKET, prefix)
    assert [c["object_key"] for c in confs] == [f"{prefix}lung1.csv"]
    run_import(dags["import"], confs[0])
    for pid in ids:
        assert fhir.count("Patient", {"identifier": f"{DEFAULT_PATIENT_SYSTEM}|{pid}"}) == 1
    assert store.head(BUCKET, f"{prefix}lung1.import-report.json") is not None


def test_kaapana_pods_import_and_upload_with_sts(
        sso_stack: sso.SsoStack, fhir: Any, kaapana: Platform,  # noqa: F811 - the pod-harness fixture
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Our Kaapana operators' pods with exactly Kaapana's pod env (no S3 keys: project user, client
    secret, KEYCLOAK_URL, MINIO_URL): the table import reads its object and the cohort task uploads its
    files to the project bucket through Keycloak + MinIO STS."""
    import json

    monkeypatch.setenv("KEYCLOAK_URL", sso_stack.keycloak.url)
    monkeypatch.setenv("MINIO_URL", sso_stack.minio.url.removeprefix("http://"))
    kaapana.secrets.update({k: v for k, v in sso_stack.env().items() if k.startswith("KAAPANA_")})
    store = _sts_store(sso_stack)
    tag, key, ids = _put_lung1(store, "POD", 3, seed=4, name="clinical.csv", preset_sidecar=False)

    op = kaapana.operator("import-table")
    run_id = f"sts-table-{tag}"
    out = kaapana.run(op, {"workflow_form": {"object_key": key, "preset": "lung1", "bucket": BUCKET}}, run_id)
    assert out.state == "success", out.stderr[-3000:]
    assert fhir.count("Patient", {"identifier": ",".join(ids)}) == 3
    report = json.loads(store.get_bytes(BUCKET, f"fhir-import/{tag}/clinical.import-report.json"))
    assert report["status"] == "imported"

    op = kaapana.operator("cohort", name="fhir-query")
    run_id = f"sts-cohort-{tag}"
    conf = {"workflow_form": {"patient_search": f"Patient?identifier={ids[0]}", "upload": True,
                              "bucket": BUCKET, "prefix": f"fhir-cohort/{tag}"}}
    out = kaapana.run(op, conf, run_id)
    assert out.state == "success", out.stderr[-3000:]
    uploaded = [o.key for o in _root(sso_stack).list(BUCKET, f"fhir-cohort/{tag}/")]
    assert uploaded and all(k.startswith(f"fhir-cohort/{tag}/") for k in uploaded)
    for secret in (sso_stack.keycloak.client_secret, sso_stack.keycloak.user_password):
        assert secret not in out.stdout + out.stderr
