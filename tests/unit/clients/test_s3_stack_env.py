"""The local stack's env for the object store: per-run MinIO root keys; with Keycloak, Kaapana's pod env and an
explicit ``KAAPANA_FHIR_S3_AUTH`` so that the credential choice never depends on which variables happen to be set."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from kaapana_fhir.clients.s3 import KeycloakProjectUser, StaticKeys, credentials_from_env
from kaapana_fhir.dev import sso
from kaapana_fhir.dev.stack import SERVERS, Service, Stack


def _stack(tmp_path: Path, keycloak: bool) -> Stack:
    st = Stack(str(tmp_path))
    st.services["s3"] = Service("s3", 0, 9000, "http://127.0.0.1:9000", "", {"access_key": "root-1",
                                                                            "secret_key": "root-secret-1"})
    if keycloak:
        kc = sso.KeycloakServer(pid=0, port=8080, url="http://127.0.0.1:8080", log="", client_secret="cs-1",
                                user_password="pw-1", admin_password="adm-1")
        st.services["keycloak"] = sso.keycloak_service(kc)
    return st


def test_minio_only_stack_exports_its_static_root_keys(tmp_path: Path) -> None:
    env = _stack(tmp_path, keycloak=False).env()
    assert env["S3_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert credentials_from_env(env) == StaticKeys("root-1", "root-secret-1")


def test_keycloak_stack_exports_kaapanas_pod_env_and_chooses_sts(tmp_path: Path) -> None:
    env = _stack(tmp_path, keycloak=True).env()
    assert env["KAAPANA_FHIR_S3_AUTH"] == "keycloak-sts"
    assert credentials_from_env(env) == KeycloakProjectUser("http://127.0.0.1:8080", sso.PROJECT_USER, "pw-1", "cs-1")
    assert credentials_from_env({**env, "KAAPANA_FHIR_S3_AUTH": "static"}) == StaticKeys("root-1", "root-secret-1")


def test_stack_file_with_test_secrets_is_private_and_round_trips(tmp_path: Path) -> None:
    st = _stack(tmp_path, keycloak=True)
    st.save()
    path = tmp_path / "stack.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Stack.load(tmp_path)
    assert again is not None
    back = sso.keycloak_from_service(again.services["keycloak"])
    assert back.token_url == "http://127.0.0.1:8080/auth/realms/kaapana/protocol/openid-connect/token"
    assert json.loads(path.read_text())["services"]["keycloak"]["extra"]["client_secret"] == "cs-1"
    assert "cs-1" not in repr(back) and "pw-1" not in repr(back)


def test_project_policy_is_kaapanas_admin_project_on_one_bucket() -> None:
    pol = sso.project_policy("project-admin")
    (statement,) = pol["Statement"]
    assert statement["Resource"] == ["arn:aws:s3:::project-admin", "arn:aws:s3:::project-admin/*"]
    assert set(statement["Action"]) == {"s3:ListBucket", "s3:PutObject", "s3:DeleteObject", "s3:GetBucketLocation",
                                        "s3:GetObject"}


def test_realm_file_has_what_minio_and_kaapanas_helper_need() -> None:
    realm = json.loads((SERVERS / "keycloak" / "realm-kaapana.json").read_text())
    assert realm["realm"] == "kaapana"
    (client,) = realm["clients"]
    assert client["clientId"] == "kaapana" and not client["publicClient"] and client["directAccessGrantsEnabled"]
    assert client["secret"] == "${KAAPANA_FHIR_KC_CLIENT_SECRET}"  # generated per start, never committed
    mapper = next(m for m in client["protocolMappers"] if m["config"].get("claim.name") == "policy")
    assert mapper["config"]["access.token.claim"] == "true" and mapper["config"]["multivalued"] == "true"
    users = {u["username"]: u for u in realm["users"]}
    assert users[sso.PROJECT_USER]["groups"] == ["/project_admin"]
    assert users[sso.NO_POLICY_USER]["groups"] == []
    assert all(c["value"].startswith("${") for u in users.values() for c in u["credentials"])
