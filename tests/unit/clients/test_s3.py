"""clients/s3: credential choice, the Keycloak → MinIO STS provider (fake HTTP), key rules, error mapping.

The STS exchange against a real Keycloak and a real MinIO is in tests/integration/test_object_store_sts.py;
here the HTTP side is a recording fake (unit tests only) and the S3 side is moto's in-process server.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
import requests
from minio.error import S3Error

from kaapana_fhir.clients.s3 import (
    KeycloakProjectUser,
    KeycloakStsProvider,
    ObjectStore,
    ObjectStoreAuthError,
    StaticKeys,
    credentials_from_env,
    object_store_from_env,
)
from kaapana_fhir.exceptions import ConfigError, ObjectStoreError

SECRET, PASSWORD = "client-secret-XYZ", "user-password-XYZ"
USER = KeycloakProjectUser("http://kc.test", "proj-user", PASSWORD, SECRET)
KAAPANA_ENV = {"KAAPANA_PROJECT_USER_NAME": "proj-user", "KAAPANA_PROJECT_USER_PASSWORD": PASSWORD,
               "KAAPANA_CLIENT_SECRET": SECRET, "KEYCLOAK_URL": "http://kc.test", "MINIO_URL": "http://minio.test:9000"}


# ---------------------------------------------------------------------------------------------- credentials
def test_kaapana_pod_env_gives_the_project_user() -> None:
    c = credentials_from_env(KAAPANA_ENV)
    assert c == KeycloakProjectUser("http://kc.test", "proj-user", PASSWORD, SECRET)
    assert c.token_url == "http://kc.test/auth/realms/kaapana/protocol/openid-connect/token"


def test_kaapana_airflow_names_are_accepted() -> None:
    env = {**KAAPANA_ENV, "KEYCLOAK_URL": "keycloak-external-service.admin.svc:80"}
    del env["KAAPANA_CLIENT_SECRET"]
    env["OIDC_CLIENT_SECRET"] = SECRET
    c = credentials_from_env(env)
    assert isinstance(c, KeycloakProjectUser)
    assert c.keycloak_url == "http://keycloak-external-service.admin.svc:80" and c.client_secret == SECRET


def test_static_keys_for_plain_airflow() -> None:
    assert credentials_from_env({"S3_ACCESS_KEY": "a", "S3_SECRET_KEY": "b"}) == StaticKeys("a", "b")
    assert credentials_from_env({"MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "b"}) == StaticKeys("a", "b")


def test_both_kinds_without_a_choice_is_refused_and_the_choice_wins() -> None:
    env = {**KAAPANA_ENV, "S3_ACCESS_KEY": "a", "S3_SECRET_KEY": "b"}
    with pytest.raises(ConfigError, match="KAAPANA_FHIR_S3_AUTH"):
        credentials_from_env(env)
    assert credentials_from_env({**env, "KAAPANA_FHIR_S3_AUTH": "static"}) == StaticKeys("a", "b")
    assert isinstance(credentials_from_env({**env, "KAAPANA_FHIR_S3_AUTH": "keycloak-sts"}), KeycloakProjectUser)


def test_no_credentials_or_incomplete_ones_name_what_is_missing() -> None:
    with pytest.raises(ConfigError, match="S3_ACCESS_KEY.*KAAPANA_PROJECT_USER_NAME"):
        credentials_from_env({})
    with pytest.raises(ConfigError, match="KAAPANA_CLIENT_SECRET, KEYCLOAK_URL"):
        credentials_from_env({"KAAPANA_PROJECT_USER_NAME": "u", "KAAPANA_PROJECT_USER_PASSWORD": "p"})
    with pytest.raises(ConfigError, match="S3_SECRET_KEY"):
        credentials_from_env({"S3_ACCESS_KEY": "a"})
    with pytest.raises(ConfigError, match="not one of"):
        credentials_from_env({**KAAPANA_ENV, "KAAPANA_FHIR_S3_AUTH": "anonymous"})


def test_reprs_hide_secrets() -> None:
    text = repr(USER) + repr(StaticKeys("AKIA", "shh", "tok")) + repr(KeycloakStsProvider(USER, "http://m"))
    assert SECRET not in text and PASSWORD not in text and "shh" not in text and "tok" not in text


# ---------------------------------------------------------------------------------------------- STS provider
class FakeHttp:
    """Records POSTs; answers Keycloak token and MinIO STS calls from a script."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.token_lifetime = 300
        self.sts_lifetime = 300
        self.now = 1_000_000.0
        self.keycloak: Any = None  # None = OK, or (status, json) or an exception
        self.refresh: Any = None
        self.sts: Any = None
        self.n = 0

    def post(self, url: str, data: dict[str, str], timeout: float, verify: Any) -> Any:
        self.calls.append((url, dict(data)))
        self.n += 1
        if "openid-connect/token" in url:
            answer = self.refresh if data.get("grant_type") == "refresh_token" and self.refresh else self.keycloak
            if isinstance(answer, Exception):
                raise answer
            if answer:
                return _resp(answer[0], json_body=answer[1])
            return _resp(200, json_body={"access_token": f"ACCESS-{self.n}", "refresh_token": f"REFRESH-{self.n}",
                                         "expires_in": self.token_lifetime})
        if isinstance(self.sts, Exception):
            raise self.sts
        if self.sts:
            return _resp(self.sts[0], text=self.sts[1])
        exp = dt.datetime.fromtimestamp(self.now + self.sts_lifetime, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return _resp(200, text=(
            '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            "<AssumeRoleWithWebIdentityResult><Credentials>"
            f"<AccessKeyId>AK{self.n}</AccessKeyId><SecretAccessKey>SK{self.n}</SecretAccessKey>"
            f"<SessionToken>ST{self.n}</SessionToken><Expiration>{exp}</Expiration>"
            "</Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"))

    def grants(self) -> list[str]:
        return [d.get("grant_type", "sts") for _, d in self.calls]


def _resp(status: int, *, json_body: Any = None, text: str = "") -> requests.Response:
    import json

    r = requests.Response()
    r.status_code = status
    r._content = (json.dumps(json_body) if json_body is not None else text).encode()
    return r


@pytest.fixture()
def http() -> FakeHttp:
    return FakeHttp()


def _provider(http: FakeHttp, **kw: Any) -> KeycloakStsProvider:
    return KeycloakStsProvider(USER, "http://minio.test:9000", session=http, clock=lambda: http.now,  # type: ignore[arg-type]
                               **kw)


def test_password_grant_then_sts_with_the_access_token(http: FakeHttp) -> None:
    p = _provider(http)
    creds = p.retrieve()
    assert (creds.access_key, creds.secret_key, creds.session_token) == ("AK2", "SK2", "ST2")
    (kc_url, kc_form), (sts_url, sts_form) = http.calls
    assert kc_url == USER.token_url
    assert kc_form == {"client_id": "kaapana", "client_secret": SECRET, "grant_type": "password",
                       "username": "proj-user", "password": PASSWORD}
    assert sts_url == "http://minio.test:9000/" and "WebIdentityToken" not in sts_url  # token in the body only
    assert sts_form == {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "WebIdentityToken": "ACCESS-1"}


def test_keys_are_cached_and_renewed_before_expiry_with_the_refresh_token(http: FakeHttp) -> None:
    p = _provider(http, margin_s=60)
    first = p.retrieve()
    http.now += 200  # 100 s left: still good (renew at 300 - 60)
    assert p.retrieve() is first and len(http.calls) == 2
    http.now += 45  # 55 s left: inside the margin → renew; token too (same lifetime)
    second = p.retrieve()
    assert second.access_key != first.access_key
    assert http.grants() == ["password", "sts", "refresh_token", "sts"]
    assert p.stats == {"password_grants": 1, "refresh_grants": 1, "sts_calls": 2}


def test_short_lifetimes_renew_at_three_quarters(http: FakeHttp) -> None:
    http.token_lifetime = http.sts_lifetime = 8
    p = _provider(http, margin_s=60)
    p.retrieve()
    http.now += 5.9
    p.retrieve()
    assert p.stats["sts_calls"] == 1
    http.now += 0.2  # past 6 s of 8
    p.retrieve()
    assert p.stats["sts_calls"] == 2


def test_failed_refresh_falls_back_to_a_new_password_grant(http: FakeHttp) -> None:
    p = _provider(http)
    p.retrieve()
    http.now += 400
    http.refresh = (400, {"error": "invalid_grant", "error_description": "Session not active"})
    p.retrieve()
    assert http.grants() == ["password", "sts", "refresh_token", "password", "sts"]


def test_invalidate_forces_new_keys(http: FakeHttp) -> None:
    p = _provider(http)
    a = p.retrieve()
    p.invalidate()
    assert p.retrieve().access_key != a.access_key


def test_wrong_client_secret_is_named_without_the_secret(http: FakeHttp) -> None:
    http.keycloak = (401, {"error": "unauthorized_client",
                           "error_description": "Invalid client or Invalid client credentials"})
    with pytest.raises(ObjectStoreAuthError) as ei:
        _provider(http).retrieve()
    msg = str(ei.value)
    assert "http://kc.test/auth/realms/kaapana" in msg and "KAAPANA_CLIENT_SECRET" in msg and "401" in msg
    assert SECRET not in msg and PASSWORD not in msg
    assert http.grants() == ["password"]  # no STS call after a failed login


def test_keycloak_down_names_the_url(http: FakeHttp) -> None:
    http.keycloak = requests.ConnectionError(f"connection refused; secret={SECRET}")
    with pytest.raises(ObjectStoreAuthError, match=r"Keycloak at http://kc\.test/auth/realms/kaapana/.* unreachable",
                       ) as ei:
        _provider(http).retrieve()
    assert SECRET not in str(ei.value)


def test_sts_refusal_is_reported_without_the_token(http: FakeHttp) -> None:
    http.sts = (400, '<ErrorResponse><Error><Type>Sender</Type><Code>InvalidParameterValue</Code>'
                     '<Message>Policy claim missing from the JWT token ACCESS-1</Message></Error></ErrorResponse>')
    with pytest.raises(ObjectStoreAuthError) as ei:
        _provider(http).retrieve()
    msg = str(ei.value)
    assert "AssumeRoleWithWebIdentity" in msg and "InvalidParameterValue" in msg and "Policy claim missing" in msg
    assert "ACCESS-1" not in msg


@pytest.mark.parametrize("body", ["not xml", "<AssumeRoleWithWebIdentityResponse/>",
                                  "<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>"])
def test_unusable_sts_answers(http: FakeHttp, body: str) -> None:
    http.sts = (200, body)
    with pytest.raises(ObjectStoreAuthError, match="without usable credentials"):
        _provider(http).retrieve()


def test_nothing_secret_is_logged_at_debug(http: FakeHttp, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    p = _provider(http)
    p.retrieve()
    http.now += 400
    http.refresh = (400, {"error": "invalid_grant", "error_description": "expired"})
    p.retrieve()
    logging.getLogger("urllib3.connectionpool").debug(
        "http://m:9000 \"POST /?Action=AssumeRoleWithWebIdentity&WebIdentityToken=ACCESS-9&Version=1 HTTP/1.1\" 200")
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    for secret in (SECRET, PASSWORD, "ACCESS-", "REFRESH-", "SK", "ST2"):
        assert secret not in text, secret


# ---------------------------------------------------------------------------------------------- the store
def test_store_needs_exactly_one_kind_of_credentials() -> None:
    with pytest.raises(ConfigError, match="no credentials"):
        ObjectStore("http://m:9000")
    with pytest.raises(ConfigError, match="not both"):
        ObjectStore("http://m:9000", "a", "b", credentials=USER)
    with pytest.raises(ConfigError, match="no object-store endpoint"):
        ObjectStore(None, "a", "b")
    with pytest.raises(ConfigError, match="credentials in the URL") as ei:
        ObjectStore("http://ak:sk@m:9000", "a", "b")
    assert "sk@" not in str(ei.value)
    assert isinstance(ObjectStore("m:9000", credentials=USER).provider, KeycloakStsProvider)
    assert isinstance(object_store_from_env(KAAPANA_ENV).provider, KeycloakStsProvider)


@pytest.mark.parametrize("key", ["", "/etc/passwd", "fhir-import/../other/x.csv", "a/./b", "x\x00y", "other/x.csv"])
def test_keys_outside_the_prefix_are_refused_before_any_request(key: str) -> None:
    store = ObjectStore("http://127.0.0.1:9", "a", "b", prefix="fhir-import/")  # nothing listens there
    for call in (lambda: store.get_bytes("project-a", key), lambda: store.put_bytes("project-a", key, b"x"),
                 lambda: store.delete("project-a", key), lambda: store.head("project-a", key)):
        with pytest.raises(ConfigError, match="prefix|absolute|empty"):
            call()
    with pytest.raises(ConfigError, match="outside the configured prefix"):
        list(store.list("project-a", "other/"))


class FlakyClient:
    """A minio client whose first call fails with the given S3 error code."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.calls = 0

    def get_object(self, bucket: str, key: str) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise S3Error(self.code, "x", f"/{bucket}/{key}", "r", "h", None, bucket, key)  # type: ignore[arg-type]
        return _Body(b"ok")


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data

    def close(self) -> None: ...

    def release_conn(self) -> None: ...


def test_expired_temporary_keys_are_renewed_once_and_the_call_retried(http: FakeHttp) -> None:
    p = _provider(http)
    p.retrieve()
    fake = FlakyClient("ExpiredToken")
    store = ObjectStore("http://minio.test:9000", credentials=p, client=fake)  # type: ignore[arg-type]
    assert store.get_bytes("b", "k") == b"ok" and fake.calls == 2
    assert p.stats["sts_calls"] == 1  # invalidated; the next retrieve() renews (the fake client never calls it)
    assert p._creds is None


def test_expired_static_keys_are_not_retried() -> None:
    fake = FlakyClient("ExpiredToken")
    store = ObjectStore("http://minio.test:9000", "a", "b", client=fake)  # type: ignore[arg-type]
    with pytest.raises(ObjectStoreAuthError, match="ExpiredToken"):
        store.get_bytes("b", "k")
    assert fake.calls == 1


# ---- against moto's S3 (in-process, real HTTP)
def test_round_trip_on_s3(moto_url: str) -> None:
    store = ObjectStore(moto_url, "test", "test")
    store.ensure_bucket("unit-s3")
    etag = store.put_bytes("unit-s3", "fhir-import/a.csv", b"id,x\n1,2\n", "text/csv")
    assert etag and store.head("unit-s3", "fhir-import/a.csv").etag == etag  # type: ignore[union-attr]
    assert store.get_bytes("unit-s3", "fhir-import/a.csv") == b"id,x\n1,2\n"
    assert [o.key for o in store.list("unit-s3", "fhir-import/")] == ["fhir-import/a.csv"]
    assert store.head("unit-s3", "fhir-import/missing.csv") is None
    with pytest.raises(ObjectStoreError, match="not found in bucket 'unit-s3'"):
        store.get_bytes("unit-s3", "fhir-import/missing.csv")
    store.delete("unit-s3", "fhir-import/a.csv")
    assert list(store.list("unit-s3")) == []


def test_missing_bucket_and_dead_server_are_named(moto_url: str) -> None:
    store = ObjectStore(moto_url, "test", "test")
    with pytest.raises(ObjectStoreError, match="bucket 'project-nobody' does not exist"):
        list(store.list("project-nobody"))
    with pytest.raises(ObjectStoreError, match="bucket 'project-nobody' does not exist"):
        store.require_bucket("project-nobody")
    dead = ObjectStore("http://127.0.0.1:9", "test", "test")
    with pytest.raises(ObjectStoreError, match=r"http://127\.0\.0\.1:9 is unreachable"):
        dead.get_bytes("bkt", "k")
    with pytest.raises(ConfigError, match="invalid bucket name"):
        dead.get_bytes("b", "k")


def test_missing_bucket_is_a_typed_error(moto_url: str) -> None:
    from kaapana_fhir.exceptions import BucketNotFound

    store = ObjectStore(moto_url, "test", "test")
    with pytest.raises(BucketNotFound, match="project-none"):
        list(store.list("project-none", "fhir-import/"))
