"""S3 / MinIO object store access on the ``minio`` client (no Airflow, no boto3).

``minio`` 7.2.10 is what Kaapana 0.6's Airflow image ships, so the same client runs in Kaapana's Airflow
(the import watcher), in our processing containers and in plain Airflow / the CLI.

Credentials are chosen by configuration, never by accident (:func:`credentials_from_env`):

* :class:`StaticKeys`: an access key and secret (plain Airflow Connection, ``S3_ACCESS_KEY`` /
  ``S3_SECRET_KEY``, the CLI);
* :class:`KeycloakProjectUser`: Kaapana's way. A pod (and Kaapana's Airflow) gets no MinIO keys, only the
  project user (``KAAPANA_PROJECT_USER_NAME`` / ``_PASSWORD``), the client secret (``KAAPANA_CLIENT_SECRET``)
  and ``KEYCLOAK_URL``. :class:`KeycloakStsProvider` does the password grant at Keycloak (realm and client
  ``kaapana``), exchanges the access token at MinIO with STS ``AssumeRoleWithWebIdentity`` for temporary
  keys, and renews token and keys before they expire (refresh-token grant first, a new password grant if
  that fails), as Kaapana's own helper does.

Tokens, secrets and temporary keys never appear in logs or error messages; the STS token travels in the
POST body, not the URL. Object keys are passed to the S3 API as parameters; :func:`safe_local_path` keeps
keys from writing outside a work directory and ``ObjectStore(prefix=...)`` refuses keys outside a
project's prefix before any request is made.
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar, Union
from urllib.parse import urlsplit

import requests
import urllib3
from defusedxml import ElementTree as SafeET
from minio import Minio
from minio.credentials.credentials import Credentials
from minio.credentials.providers import Provider, StaticProvider
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from kaapana_fhir.clients.fhir import redact_url
from kaapana_fhir.exceptions import BucketNotFound, ConfigError, ObjectStoreError

log = logging.getLogger(__name__)

T = TypeVar("T")
_STS_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"
# S3 error codes that mean "these temporary keys are no longer good": renew once and retry.
_EXPIRED_CODES = frozenset({"ExpiredToken", "InvalidTokenId", "InvalidAccessKeyId", "TokenRefreshRequired",
                            "InvalidToken"})


class ObjectStoreAuthError(ObjectStoreError):
    """Object-store credentials could not be obtained (Keycloak login or MinIO STS refused / unreachable)."""


class _RedactCredentials(logging.Filter):
    """Third-party DEBUG dumps may carry signed-URL credentials or a web-identity token in a query string."""

    _patterns = (re.compile(r"(Credential=)[^/,&\s'\"]+"),
                 re.compile(r"(X-Amz-Security-Token['\"]?[:=]?\s*['\"]?)[^'\",&\s]+", re.I),
                 re.compile(r"((?:WebIdentityToken|Token|access_token|refresh_token|client_secret|password)=)"
                            r"[^&\s'\"]+", re.I))

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        red = msg
        for pat in self._patterns:
            red = pat.sub(r"\1***", red)
        if red != msg:
            record.msg, record.args = red, None
        return True


for _name in ("urllib3.connectionpool", "urllib3.util.retry", "requests"):
    logging.getLogger(_name).addFilter(_RedactCredentials())


# ---------------------------------------------------------------------------------------------- credentials
@dataclass(frozen=True)
class StaticKeys:
    """A fixed access key / secret (plain Airflow, CLI, the local stack's root user)."""

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class KeycloakProjectUser:
    """A Kaapana project user: password grant at ``<keycloak_url>/auth/realms/<realm>`` with a
    confidential client. ``keycloak_url`` is Kaapana's ``KEYCLOAK_URL`` (without ``/auth``)."""

    keycloak_url: str
    username: str
    password: str = field(repr=False)
    client_secret: str = field(repr=False)
    client_id: str = "kaapana"
    realm: str = "kaapana"

    @property
    def token_url(self) -> str:
        return f"{self.keycloak_url.rstrip('/')}/auth/realms/{self.realm}/protocol/openid-connect/token"


S3Credentials = Union[StaticKeys, KeycloakProjectUser]  # noqa: UP007 - a runtime alias, Python 3.10+

AUTH_ENV = "KAAPANA_FHIR_S3_AUTH"
STATIC, KEYCLOAK_STS = "static", "keycloak-sts"


def credentials_from_env(env: Mapping[str, str]) -> S3Credentials:
    """Pick the object-store credentials from an environment (a Kaapana pod, Kaapana's Airflow, a shell).

    ``KAAPANA_FHIR_S3_AUTH=static|keycloak-sts`` decides. Without it, the one complete kind present
    decides: static keys (``S3_ACCESS_KEY``/``S3_SECRET_KEY`` or ``MINIO_ACCESS_KEY``/``MINIO_SECRET_KEY``)
    or Kaapana's project user (``KAAPANA_PROJECT_USER_NAME``, ``KAAPANA_PROJECT_USER_PASSWORD``,
    ``KAAPANA_CLIENT_SECRET`` (or ``OIDC_CLIENT_SECRET``), ``KEYCLOAK_URL``; optional ``KAAPANA_CLIENT_ID``,
    ``KEYCLOAK_REALM``). Both present, or neither, is a :class:`ConfigError` naming what to set.
    """
    access = env.get("S3_ACCESS_KEY") or env.get("MINIO_ACCESS_KEY") or ""
    secret = env.get("S3_SECRET_KEY") or env.get("MINIO_SECRET_KEY") or ""
    user = env.get("KAAPANA_PROJECT_USER_NAME") or ""
    password = env.get("KAAPANA_PROJECT_USER_PASSWORD") or ""
    client_secret = env.get("KAAPANA_CLIENT_SECRET") or env.get("OIDC_CLIENT_SECRET") or ""
    keycloak = env.get("KEYCLOAK_URL") or ""
    mode = (env.get(AUTH_ENV) or "").strip().lower()
    has_static = bool(access or secret)
    has_sts = bool(user or password)
    if mode not in ("", STATIC, KEYCLOAK_STS):
        raise ConfigError(f"{AUTH_ENV}={mode!r} is not one of {STATIC!r}, {KEYCLOAK_STS!r}")
    if not mode:
        if has_static and has_sts:
            raise ConfigError("both static S3 keys (S3_ACCESS_KEY) and a Kaapana project user "
                              f"(KAAPANA_PROJECT_USER_NAME) are set; choose one with {AUTH_ENV}={STATIC} or "
                              f"{AUTH_ENV}={KEYCLOAK_STS}")
        if not has_static and not has_sts:
            raise ConfigError("no object-store credentials: set S3_ACCESS_KEY/S3_SECRET_KEY (static keys) or "
                              "KAAPANA_PROJECT_USER_NAME/KAAPANA_PROJECT_USER_PASSWORD with KAAPANA_CLIENT_SECRET "
                              "and KEYCLOAK_URL (Keycloak + MinIO STS, as in Kaapana)")
        mode = STATIC if has_static else KEYCLOAK_STS
    if mode == STATIC:
        if not (access and secret):
            raise ConfigError("static object-store credentials need both S3_ACCESS_KEY and S3_SECRET_KEY")
        return StaticKeys(access, secret, env.get("S3_SESSION_TOKEN") or None)
    missing = [n for n, v in (("KAAPANA_PROJECT_USER_NAME", user), ("KAAPANA_PROJECT_USER_PASSWORD", password),
                              ("KAAPANA_CLIENT_SECRET", client_secret), ("KEYCLOAK_URL", keycloak)) if not v]
    if missing:
        raise ConfigError(f"Keycloak STS credentials need {', '.join(missing)} (rule: Kaapana pods get the project "
                          "user, the client secret and KEYCLOAK_URL from the platform)")
    if not keycloak.startswith(("http://", "https://")):
        keycloak = "http://" + keycloak
    return KeycloakProjectUser(keycloak, user, password, client_secret,
                               client_id=env.get("KAAPANA_CLIENT_ID") or "kaapana",
                               realm=env.get("KEYCLOAK_REALM") or "kaapana")


class KeycloakStsProvider(Provider):
    """Temporary MinIO keys for a Kaapana project user, renewed before they expire.

    ``retrieve()`` (called by the minio client before every request) returns the cached keys while they
    are good for more than ``margin`` (``min(margin_s, a quarter of their lifetime)``); else it gets an access
    token (cached the same way; refresh-token grant, else a new password grant) and calls STS
    ``AssumeRoleWithWebIdentity`` at ``sts_endpoint`` (the MinIO URL). ``stats`` counts the calls.
    """

    def __init__(self, user: KeycloakProjectUser, sts_endpoint: str, *, verify: bool | str = True,
                 timeout: float = 15.0, margin_s: float = 60.0, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.user = user
        self.sts_endpoint = sts_endpoint.rstrip("/") + "/"
        self.verify = verify
        self.timeout = timeout
        self.margin_s = margin_s
        self._session = session or requests.Session()
        self._clock = clock
        self._lock = threading.Lock()
        self._creds: Credentials | None = None
        self._creds_until = 0.0  # renew at this time (epoch seconds)
        self._token: str | None = None
        self._token_until = 0.0
        self._refresh_token: str | None = None
        self.stats = {"password_grants": 0, "refresh_grants": 0, "sts_calls": 0}

    def __repr__(self) -> str:
        return f"KeycloakStsProvider(user={self.user.username!r}, keycloak={redact_url(self.user.keycloak_url)!r})"

    def _renew_at(self, expires_at: float, now: float) -> float:
        lifetime = max(expires_at - now, 0.0)
        return expires_at - min(self.margin_s, lifetime / 4)

    def invalidate(self) -> None:
        """Forget the temporary keys (and the access token) so the next ``retrieve`` renews both."""
        with self._lock:
            self._creds, self._creds_until, self._token_until = None, 0.0, 0.0

    def retrieve(self) -> Credentials:
        with self._lock:
            now = self._clock()
            if self._creds is not None and now < self._creds_until:
                return self._creds
            token = self._access_token(now)
            creds, expires_at = self._assume_role(token)
            self._creds, self._creds_until = creds, self._renew_at(expires_at, self._clock())
            return creds

    # ---- Keycloak ----------------------------------------------------------------------------
    def _access_token(self, now: float) -> str:
        if self._token and now < self._token_until:
            return self._token
        if self._refresh_token:
            try:
                return self._grant({"grant_type": "refresh_token", "refresh_token": self._refresh_token},
                                   "refresh_grants")
            except ObjectStoreAuthError as exc:
                log.info("Keycloak refresh-token grant for user %r failed (%s); logging in again",
                         self.user.username, exc)
                self._refresh_token = None
        return self._grant({"grant_type": "password", "username": self.user.username,
                            "password": self.user.password}, "password_grants")

    def _grant(self, data: dict[str, str], counter: str) -> str:
        url = self.user.token_url
        where = redact_url(url)
        payload = {"client_id": self.user.client_id, "client_secret": self.user.client_secret, **data}
        self.stats[counter] += 1
        try:
            r = self._session.post(url, data=payload, timeout=self.timeout, verify=self.verify)
        except requests.RequestException as exc:
            raise ObjectStoreAuthError(f"Keycloak at {where} is unreachable ({type(exc).__name__}); cannot get a "
                                       f"token for project user {self.user.username!r}") from None
        if r.status_code != 200:
            err, desc = _oauth_error(r)
            hint = ""
            if err in ("unauthorized_client", "invalid_client"):
                hint = f" (client {self.user.client_id!r}: wrong client secret? check KAAPANA_CLIENT_SECRET)"
            elif err == "invalid_grant" and data["grant_type"] == "password":
                hint = " (wrong project user name or password? check KAAPANA_PROJECT_USER_*)"
            raise ObjectStoreAuthError(f"Keycloak at {where} refused the {data['grant_type']} grant for project "
                                       f"user {self.user.username!r}: HTTP {r.status_code} {err}: {desc}{hint}")
        try:
            body = r.json()
            token = str(body["access_token"])
            expires_in = float(body.get("expires_in", 60))
        except (ValueError, KeyError, TypeError):
            raise ObjectStoreAuthError(f"Keycloak at {where} answered without an access token") from None
        self._token = token
        self._refresh_token = body.get("refresh_token") or None
        now = self._clock()
        self._token_until = self._renew_at(now + expires_in, now)
        return token

    # ---- MinIO STS ---------------------------------------------------------------------------
    def _assume_role(self, token: str) -> tuple[Credentials, float]:
        where = redact_url(self.sts_endpoint)
        self.stats["sts_calls"] += 1
        try:
            r = self._session.post(self.sts_endpoint, timeout=self.timeout, verify=self.verify,
                                   data={"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
                                         "WebIdentityToken": token})
        except requests.RequestException as exc:
            raise ObjectStoreAuthError(f"MinIO STS at {where} is unreachable ({type(exc).__name__})") from None
        text = r.text.replace(token, "***")
        if r.status_code != 200:
            code, msg = _xml_error(text)
            raise ObjectStoreAuthError(f"MinIO STS AssumeRoleWithWebIdentity at {where} refused the token of project "
                                       f"user {self.user.username!r}: HTTP {r.status_code} {code}: {msg}")
        try:
            root = SafeET.fromstring(r.text)
            cred = root.find(f".//{_STS_NS}Credentials")
            if cred is None:
                raise ValueError("no Credentials element")
            access = cred.findtext(f"{_STS_NS}AccessKeyId") or ""
            secret = cred.findtext(f"{_STS_NS}SecretAccessKey") or ""
            session = cred.findtext(f"{_STS_NS}SessionToken") or ""
            exp_text = cred.findtext(f"{_STS_NS}Expiration") or ""
            expiration = _dt.datetime.fromisoformat(exp_text.replace("Z", "+00:00"))
        except (ValueError, SafeET.ParseError):
            raise ObjectStoreAuthError(f"MinIO STS at {where} answered without usable credentials") from None
        if not (access and secret and session):
            raise ObjectStoreAuthError(f"MinIO STS at {where} answered without usable credentials")
        naive_utc = expiration.astimezone(_dt.timezone.utc).replace(tzinfo=None)  # minio compares with utcnow()
        return Credentials(access, secret, session, naive_utc), expiration.timestamp()


def _oauth_error(r: requests.Response) -> tuple[str, str]:
    try:
        body = r.json()
        return str(body.get("error", "?")), str(body.get("error_description", ""))[:200]
    except ValueError:
        return "?", r.text[:120].replace("\n", " ")


def _xml_error(text: str) -> tuple[str, str]:
    try:
        root = SafeET.fromstring(text)
    except SafeET.ParseError:
        return "?", text[:160].replace("\n", " ")
    code = root.findtext(".//Code") or root.findtext(f".//{_STS_NS}Code") or "?"
    msg = root.findtext(".//Message") or root.findtext(f".//{_STS_NS}Message") or ""
    return code, msg[:300]


def credential_provider(creds: S3Credentials | Provider, endpoint_url: str, *, verify: bool | str = True,
                        ) -> Provider:
    if isinstance(creds, Provider):
        return creds
    if isinstance(creds, StaticKeys):
        return StaticProvider(creds.access_key, creds.secret_key, creds.session_token)
    if isinstance(creds, KeycloakProjectUser):
        return KeycloakStsProvider(creds, endpoint_url, verify=verify)
    raise ConfigError(f"unsupported object-store credentials {type(creds).__name__}")


# ---------------------------------------------------------------------------------------------- the store
@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int
    last_modified: Any = None


def _http_client(verify: bool | str) -> urllib3.PoolManager:
    kw: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED" if verify else "CERT_NONE"}
    if isinstance(verify, str):
        kw["ca_certs"] = verify
    else:
        import certifi

        kw["ca_certs"] = os.environ.get("SSL_CERT_FILE") or certifi.where()
    return urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=60), maxsize=10,
                               retries=urllib3.Retry(total=3, backoff_factor=0.2,
                                                     status_forcelist=[500, 502, 503, 504]), **kw)


class ObjectStore:
    """One S3 endpoint (MinIO in Kaapana and in the local stack).

    ``ObjectStore(url, access_key, secret_key)`` uses static keys; ``ObjectStore(url,
    credentials=KeycloakProjectUser(...))`` the Kaapana STS exchange; exactly one of the two.
    ``prefix`` (e.g. a project's import folder) confines every key and listing to that prefix.
    """

    def __init__(self, endpoint_url: str | None, access_key: str | None = None, secret_key: str | None = None, *,
                 credentials: S3Credentials | Provider | None = None, region: str = "us-east-1",
                 verify: bool | str = True, prefix: str = "", client: Minio | None = None) -> None:
        if not endpoint_url:
            raise ConfigError("no object-store endpoint: set S3_ENDPOINT_URL / MINIO_URL or the connection's "
                              "extra.endpoint_url")
        if not endpoint_url.startswith(("http://", "https://")):
            endpoint_url = "http://" + endpoint_url
        parts = urlsplit(endpoint_url)
        if parts.username or parts.password:
            raise ConfigError(f"object-store endpoint {redact_url(endpoint_url)} carries credentials in the URL "
                              "(rule: pass keys as credentials, never in URLs)")
        if parts.path not in ("", "/"):
            raise ConfigError(f"object-store endpoint {endpoint_url} has a path; give scheme://host:port only")
        self.endpoint_url = f"{parts.scheme}://{parts.netloc}"
        self.verify = verify
        self.prefix = prefix
        if credentials is not None and (access_key or secret_key):
            raise ConfigError("give either access_key/secret_key or credentials, not both")
        if credentials is None:
            if not (access_key and secret_key):
                raise ConfigError(f"no credentials for the object store at {self.endpoint_url}: static keys need an "
                                  "access key and a secret (S3_ACCESS_KEY/S3_SECRET_KEY or the connection's "
                                  "login/password); in Kaapana the project user is used (KAAPANA_PROJECT_USER_*)")
            credentials = StaticKeys(access_key, secret_key)
        self.provider = credential_provider(credentials, self.endpoint_url, verify=verify)
        self._client = client or Minio(parts.netloc, credentials=self.provider, secure=parts.scheme == "https",
                                       region=region, http_client=_http_client(verify))

    def __repr__(self) -> str:
        return f"ObjectStore({self.endpoint_url!r}, provider={type(self.provider).__name__})"

    # ---- keys ----------------------------------------------------------------------------------------
    def check_key(self, key: str) -> str:
        """Refuse empty/absolute/``..``/NUL keys and keys outside ``prefix`` (before any request)."""
        if not key or "\x00" in key or key.startswith("/") or any(p in ("..", ".") for p in key.split("/")):
            raise ConfigError(f"object key {key!r} is empty, absolute or has '.'/'..' segments "
                              "(rule: keys stay inside the project's prefix)")
        if self.prefix and not key.startswith(self.prefix):
            raise ConfigError(f"object key {key!r} is outside the configured prefix {self.prefix!r} "
                              "(rule: a project's objects stay under its prefix)")
        return key

    def _check_prefix(self, prefix: str) -> str:
        if self.prefix and not prefix.startswith(self.prefix):
            if self.prefix.startswith(prefix):
                return self.prefix  # a wider listing is narrowed to the configured prefix
            raise ConfigError(f"listing prefix {prefix!r} is outside the configured prefix {self.prefix!r}")
        if ".." in prefix.split("/"):
            raise ConfigError(f"listing prefix {prefix!r} has '..' segments")
        return prefix

    # ---- calls ---------------------------------------------------------------------------------------
    def _where(self) -> str:
        return redact_url(self.endpoint_url)

    def _call(self, what: str, fn: Callable[[], T], bucket: str, key: str | None = None) -> T:
        """Run one S3 call; on expired temporary keys renew once and retry; map errors to ObjectStoreError."""
        for attempt in (1, 2):
            try:
                return fn()
            except S3Error as exc:
                if exc.code in _EXPIRED_CODES and attempt == 1 and isinstance(self.provider, KeycloakStsProvider):
                    log.info("object store at %s: temporary keys rejected (%s); renewing", self._where(), exc.code)
                    self.provider.invalidate()
                    continue
                raise self._error(what, exc, bucket, key) from None
            except (ServerError, InvalidResponseError) as exc:
                raise ObjectStoreError(f"S3 {what} at {self._where()} failed: {type(exc).__name__} "
                                       f"(HTTP {getattr(exc, 'status_code', '?')})") from None
            except urllib3.exceptions.HTTPError as exc:
                raise ObjectStoreError(f"S3 server at {self._where()} is unreachable during {what} "
                                       f"({type(exc).__name__})") from None
            except MinioException as exc:
                raise ObjectStoreError(f"S3 {what} at {self._where()} failed: {type(exc).__name__}") from None
            except ValueError as exc:  # the minio client's own argument checks (bucket names, sizes)
                if isinstance(exc, ConfigError):
                    raise
                raise ConfigError(f"S3 {what} at {self._where()}: {exc} (bucket {bucket!r})") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, what: str, exc: S3Error, bucket: str, key: str | None) -> ObjectStoreError:
        where = self._where()
        if exc.code in ("NoSuchKey", "NoSuchObject"):
            return ObjectStoreError(f"object {key!r} not found in bucket {bucket!r} at {where} ({what}); it may "
                                    "have been deleted")
        if exc.code == "NoSuchBucket":
            return BucketNotFound(f"bucket {bucket!r} does not exist at {where} ({what}); a Kaapana project's "
                                  "bucket is project-<name>, created with the project")
        if exc.code == "AccessDenied":
            target = f"s3://{bucket}/{key}" if key else f"bucket {bucket!r}"
            return ObjectStoreError(f"access to {target} denied at {where} ({what}); the credentials' policy "
                                    "does not cover it (another project's bucket?)")
        if exc.code in _EXPIRED_CODES:
            return ObjectStoreAuthError(f"S3 {what} at {where} refused the credentials: {exc.code}")
        return ObjectStoreError(f"S3 {what} at {where} failed: {exc.code}")

    def bucket_exists(self, bucket: str) -> bool:
        return self._call("bucket_exists", lambda: self._client.bucket_exists(bucket), bucket)

    def ensure_bucket(self, bucket: str) -> None:
        if not self.bucket_exists(bucket):
            self._call("make_bucket", lambda: self._client.make_bucket(bucket), bucket)

    def require_bucket(self, bucket: str) -> None:
        """A clear error when a project's bucket is missing (never created here: Kaapana owns buckets)."""
        if not self.bucket_exists(bucket):
            raise ObjectStoreError(f"bucket {bucket!r} does not exist at {self._where()}; a Kaapana project's bucket "
                                   "is project-<name>, created with the project")

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self.check_key(key)
        res = self._call("put_object", lambda: self._client.put_object(
            bucket, key, io.BytesIO(data), len(data), content_type=content_type), bucket, key)
        return str(res.etag or "").strip('"')

    def put_file(self, bucket: str, key: str, path: str | os.PathLike[str]) -> str:
        self.check_key(key)
        res = self._call("fput_object", lambda: self._client.fput_object(bucket, key, os.fspath(path)), bucket, key)
        return str(res.etag or "").strip('"')

    def get_bytes(self, bucket: str, key: str) -> bytes:
        self.check_key(key)

        def _get() -> bytes:
            resp = self._client.get_object(bucket, key)
            try:
                return bytes(resp.read())
            finally:
                resp.close()
                resp.release_conn()

        return self._call("get_object", _get, bucket, key)

    def get_file(self, bucket: str, key: str, path: str | os.PathLike[str]) -> Path:
        """Download an object to ``path`` in streamed parts (constant memory, whatever the object's size)."""
        self.check_key(key)
        self._call("fget_object", lambda: self._client.fget_object(bucket, key, os.fspath(path)), bucket, key)
        return Path(path)

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        self.check_key(key)

        def _stat() -> Any:
            try:
                return self._client.stat_object(bucket, key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                    return None
                raise

        st = self._call("stat_object", _stat, bucket, key)
        if st is None:
            return None
        return ObjectInfo(key, str(st.etag or "").strip('"'), int(st.size or 0), st.last_modified)

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        prefix = self._check_prefix(prefix)
        items = self._call("list_objects", lambda: list(self._client.list_objects(bucket, prefix=prefix or None,
                                                                                  recursive=True)), bucket)
        for obj in items:
            if obj.is_dir or obj.object_name is None:
                continue
            yield ObjectInfo(obj.object_name, str(obj.etag or "").strip('"'), int(obj.size or 0), obj.last_modified)

    def delete(self, bucket: str, key: str) -> None:
        self.check_key(key)
        self._call("remove_object", lambda: self._client.remove_object(bucket, key), bucket, key)

    def check(self, bucket: str | None = None) -> str:
        """A connection test: the bucket exists (project credentials) or the buckets can be listed."""
        if bucket:
            self.require_bucket(bucket)
            return f"bucket {bucket!r} reachable at {self._where()}"
        n = len(self._call("list_buckets", self._client.list_buckets, ""))
        return f"{n} bucket(s) at {self._where()}"


def object_store_from_env(env: Mapping[str, str], *, prefix: str = "") -> ObjectStore:
    """Endpoint (``S3_ENDPOINT_URL`` or ``MINIO_URL``) and credentials (:func:`credentials_from_env`)."""
    url = env.get("S3_ENDPOINT_URL") or env.get("MINIO_URL")
    return ObjectStore(url, credentials=credentials_from_env(env), prefix=prefix,
                       verify=env.get("S3_VERIFY", "true").lower() not in ("0", "false", "no"))


def safe_local_path(base_dir: str | os.PathLike[str], key: str) -> Path:
    """Map an object key to a path inside ``base_dir``; reject ``..``, absolute paths and NUL."""
    if not key or "\x00" in key:
        raise ConfigError(f"object key {key!r} is empty or contains NUL (rule: keys map into the work dir)")
    pure = PurePosixPath(key.replace("\\", "/"))
    if pure.is_absolute() or any(p == ".." for p in pure.parts):
        raise ConfigError(f"object key {key!r} would leave the work directory (rule: no '..' or absolute paths)")
    base = Path(base_dir).resolve()
    target = (base / Path(*pure.parts)).resolve()
    if base != target and base not in target.parents:
        raise ConfigError(f"object key {key!r} would leave the work directory {base}")
    return target
