"""Real MinIO and Keycloak on 127.0.0.1, configured the way Kaapana 0.6 runs them.

* **Keycloak** (``keycloak-quarkus-dist`` from Maven Central, unpacked by ``.ci/install-keycloak.sh``) in
  ``start-dev`` mode with the in-memory dev database, served under ``/auth`` like Kaapana's
  ``KEYCLOAK_URL``, importing our realm ``dev/servers/keycloak/realm-kaapana.json`` (realm and client
  ``kaapana``, a confidential client with a secret and direct-access grants, project users whose groups
  carry the MinIO ``policy`` claim).
* **MinIO** (built by ``.ci/install-minio.sh`` with ``go install``) with Keycloak as its OpenID provider
  (``MINIO_IDENTITY_OPENID_*``: config URL of realm ``kaapana``, client ``kaapana`` and its secret, claim
  ``policy``), so a project user's access token can be exchanged with STS ``AssumeRoleWithWebIdentity``.
  Per Kaapana project ``<p>``: bucket ``project-<p>`` and policy ``admin_project_<p>`` (the read/write
  actions Kaapana grants a project admin, on that bucket only).

Secrets (MinIO root password, client secret, user passwords, Keycloak admin password) are generated per
start and handed to the servers through their environment only; they are never logged. Each server binds
to 127.0.0.1 on a free port, logs to ``<state_dir>/<name>.log``, is polled with a deadline and is stopped
by PID (:func:`kaapana_fhir.dev.stack.stop_pid`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from kaapana_fhir.dev.stack import SERVERS, Service, StackError, free_port, start_server, stop_pid

log = logging.getLogger(__name__)

KEYCLOAK_VERSION = "26.4.7"  # Kaapana 0.6.0 runs Keycloak 26.4.6, which Maven Central's mirror here lacks
REALM = "kaapana"
CLIENT_ID = "kaapana"
PROJECT_USER = "kaapana-project-user"  # group /project_admin → policy admin_project_admin
OTHER_USER = "kaapana-project-user-other"  # group /project_nobucket → policy admin_project_nobucket
NO_POLICY_USER = "kaapana-user-without-policy"  # no group: MinIO STS refuses its tokens
PROJECT_ACTIONS = ["s3:ListBucket", "s3:PutObject", "s3:DeleteObject", "s3:GetBucketLocation", "s3:GetObject"]


def cache_dir() -> Path:
    return Path(os.environ.get("KAAPANA_FHIR_CACHE") or Path.home() / ".cache" / "kaapana-fhir")


def minio_binary() -> Path:
    """The ``minio`` server binary: ``$MINIO_BIN``, ``$GOBIN``/``~/go/bin`` or PATH."""
    cands = [os.environ.get("MINIO_BIN"), os.environ.get("GOBIN") and str(Path(os.environ["GOBIN"]) / "minio"),
             str(Path.home() / "go" / "bin" / "minio"), shutil.which("minio")]
    for cand in cands:
        if cand and os.access(cand, os.X_OK):
            return Path(cand)
    raise StackError("the MinIO server binary is missing; run `bash .ci/install-minio.sh` (go install, a few "
                     "minutes once) or `make install`")


def keycloak_dist() -> Path:
    """The unpacked Keycloak distribution (``$KEYCLOAK_HOME`` or the cache of ``.ci/install-keycloak.sh``)."""
    home = Path(os.environ.get("KEYCLOAK_HOME") or cache_dir() / f"keycloak-{KEYCLOAK_VERSION}")
    if not (home / "bin" / "kc.sh").is_file():
        raise StackError(f"Keycloak {KEYCLOAK_VERSION} is not unpacked at {home}; run `bash .ci/install-keycloak.sh` "
                         "or `make install`")
    return home


def _secret() -> str:
    return secrets.token_urlsafe(24)


# ---------------------------------------------------------------------------------------------- Keycloak
@dataclass
class KeycloakServer:
    """A running Keycloak. ``url`` is the base as in Kaapana's ``KEYCLOAK_URL`` (no ``/auth``)."""

    pid: int
    port: int
    url: str
    log: str
    client_secret: str = field(repr=False)
    user_password: str = field(repr=False)
    admin_password: str = field(repr=False)
    realm: str = REALM
    client_id: str = CLIENT_ID
    user: str = PROJECT_USER
    admin_user: str = "admin"

    @property
    def realm_url(self) -> str:
        return f"{self.url}/auth/realms/{self.realm}"

    @property
    def openid_config_url(self) -> str:
        return f"{self.realm_url}/.well-known/openid-configuration"

    @property
    def token_url(self) -> str:
        return f"{self.realm_url}/protocol/openid-connect/token"

    def admin_token(self) -> str:
        r = requests.post(f"{self.url}/auth/realms/master/protocol/openid-connect/token", timeout=30,
                          data={"grant_type": "password", "client_id": "admin-cli", "username": self.admin_user,
                                "password": self.admin_password})
        if r.status_code != 200:
            raise StackError(f"Keycloak admin login at {self.url} failed: HTTP {r.status_code}")
        return str(r.json()["access_token"])

    def set_access_token_lifespan(self, seconds: int) -> None:
        """Change the access-token lifespan of client ``kaapana`` (admin REST API), e.g. for expiry tests."""
        hdr = {"Authorization": f"Bearer {self.admin_token()}"}
        base = f"{self.url}/auth/admin/realms/{self.realm}/clients"
        found = requests.get(base, params={"clientId": self.client_id}, headers=hdr, timeout=30).json()
        if not found:
            raise StackError(f"client {self.client_id!r} not found in realm {self.realm!r} at {self.url}")
        rep = found[0]
        rep.setdefault("attributes", {})["access.token.lifespan"] = str(seconds)
        r = requests.put(f"{base}/{rep['id']}", json=rep, headers=hdr, timeout=30)
        if r.status_code >= 300:
            raise StackError(f"updating client {self.client_id!r} at {self.url} failed: HTTP {r.status_code}")


def keycloak_service(kc: KeycloakServer) -> Service:
    """The stack's record of a running Keycloak (``stack.json`` keeps the per-run test secrets, mode 0600)."""
    return Service("keycloak", kc.pid, kc.port, kc.url, kc.log, {
        "realm": kc.realm, "client_id": kc.client_id, "client_secret": kc.client_secret, "user": kc.user,
        "user_password": kc.user_password, "admin_user": kc.admin_user, "admin_password": kc.admin_password})


def keycloak_from_service(svc: Service) -> KeycloakServer:
    x = svc.extra
    return KeycloakServer(pid=svc.pid, port=svc.port, url=svc.url, log=svc.log, client_secret=x["client_secret"],
                          user_password=x["user_password"], admin_password=x["admin_password"],
                          realm=x.get("realm", REALM), client_id=x.get("client_id", CLIENT_ID),
                          user=x.get("user", PROJECT_USER), admin_user=x.get("admin_user", "admin"))


def keycloak_env(svc: Service, user: str | None = None) -> dict[str, str]:
    """What a Kaapana pod gets for MinIO, plus ``KAAPANA_FHIR_S3_AUTH=keycloak-sts`` (the stack also
    exports the static root keys, so the choice must be explicit)."""
    x = svc.extra
    return {"KEYCLOAK_URL": svc.url, "KAAPANA_CLIENT_SECRET": x["client_secret"],
            "KAAPANA_PROJECT_USER_NAME": user or x.get("user", PROJECT_USER),
            "KAAPANA_PROJECT_USER_PASSWORD": x["user_password"], "KAAPANA_FHIR_S3_AUTH": "keycloak-sts"}


def _keycloak_home(state_dir: Path, dist: Path, realm_file: Path) -> Path:
    """A private Keycloak home: ``bin``/``conf`` copied (kc.sh derives the home from its own real path),
    ``lib``/``providers``/``themes`` linked to the cached dist, ``data/import`` holding our realm."""
    home = state_dir / "keycloak-home"
    if home.exists():
        shutil.rmtree(home)
    (home / "data" / "import").mkdir(parents=True)
    for name in ("bin", "conf"):
        shutil.copytree(dist / name, home / name, symlinks=True)
    for name in ("lib", "providers", "themes", "version.txt"):
        if (dist / name).exists():
            (home / name).symlink_to(dist / name)
    shutil.copyfile(realm_file, home / "data" / "import" / realm_file.name)
    return home


def start_keycloak(state_dir: Path, *, port: int | None = None, deadline_s: float = 420.0,
                   realm_file: Path | None = None) -> KeycloakServer:
    """Start Keycloak (``start-dev``, in-memory DB, ``/auth``) with our realm imported; wait until the realm
    answers. The first start of a fresh dist also runs Quarkus' build step (minutes on 2 cores)."""
    dist = keycloak_dist()
    java = _java_for_keycloak()
    state_dir.mkdir(parents=True, exist_ok=True)
    realm_file = realm_file or SERVERS / "keycloak" / "realm-kaapana.json"
    home = _keycloak_home(state_dir, dist, realm_file)
    port = port or free_port()
    srv = KeycloakServer(pid=0, port=port, url=f"http://127.0.0.1:{port}", log=str(state_dir / "keycloak.log"),
                         client_secret=_secret(), user_password=_secret(), admin_password=_secret())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KC_", "KEYCLOAK_", "QUARKUS_"))}
    env.update({
        "JAVA_HOME": java,
        # the realm file refers to these (Keycloak replaces ${VAR} placeholders at import)
        "KAAPANA_FHIR_KC_CLIENT_SECRET": srv.client_secret,
        "KAAPANA_FHIR_KC_USER_PASSWORD": srv.user_password,
        "KC_BOOTSTRAP_ADMIN_USERNAME": srv.admin_user,
        "KC_BOOTSTRAP_ADMIN_PASSWORD": srv.admin_password,
        # a small, quick-starting JVM for a short-lived test server on 2 cores (replaces kc.sh's G1 defaults)
        "JAVA_OPTS": "-XX:MetaspaceSize=96M -XX:MaxMetaspaceSize=256m -Dfile.encoding=UTF-8 "
                     "-XX:+ExitOnOutOfMemoryError -Djava.security.egd=file:/dev/urandom -XX:+UseSerialGC "
                     "-XX:TieredStopAtLevel=1 -Xms64m -Xmx768m",
        "TMPDIR": str(Path(tempfile.mkdtemp(prefix="kc-tmp-", dir=state_dir))),
    })
    cmd = [str(home / "bin" / "kc.sh"), "start-dev", "--http-host=127.0.0.1", f"--http-port={port}",
           "--http-relative-path=/auth", "--db=dev-mem", "--import-realm", "--cache=local",
           "--hostname-strict=false"]
    proc = start_server(cmd, Path(srv.log), srv.openid_config_url, deadline_s, env=env, cwd=home)
    srv.pid = proc.pid
    return srv


def _java_for_keycloak() -> str:
    """A JAVA_HOME for Keycloak 26.4 (Java 17 or 21; 17 is what Debian 12 ships)."""
    env = os.environ.get("KEYCLOAK_JAVA_HOME")
    if env:
        return env
    for cand in ("/usr/lib/jvm/java-21-openjdk-amd64", "/usr/lib/jvm/java-17-openjdk-amd64"):
        if (Path(cand) / "bin" / "java").is_file():
            return cand
    java = shutil.which("java")
    if not java:
        raise StackError("no Java found for Keycloak (apt-get install openjdk-17-jre-headless)")
    return str(Path(java).resolve().parents[1])


# ---------------------------------------------------------------------------------------------- MinIO
@dataclass
class MinioServer:
    pid: int
    port: int
    url: str
    log: str
    root_user: str
    root_password: str = field(repr=False)
    openid: bool = False


def start_minio(state_dir: Path, *, keycloak: KeycloakServer | None = None, port: int | None = None,
                data_dir: Path | None = None, deadline_s: float = 60.0) -> MinioServer:
    """Start MinIO on 127.0.0.1 with a per-run root user; with ``keycloak``, that realm is its OpenID
    provider exactly as in Kaapana's minio chart (client ``kaapana``, claim ``policy``)."""
    exe = minio_binary()
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    data = data_dir or state_dir / "minio-data"
    data.mkdir(parents=True, exist_ok=True)
    srv = MinioServer(pid=0, port=port, url=f"http://127.0.0.1:{port}", log=str(state_dir / "minio.log"),
                      root_user="kaapana-root-" + secrets.token_hex(4), root_password=_secret(),
                      openid=keycloak is not None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIO_")}
    env.update({"MINIO_ROOT_USER": srv.root_user, "MINIO_ROOT_PASSWORD": srv.root_password,
                "MINIO_BROWSER": "off", "MINIO_UPDATE": "off", "MINIO_CI_CD": "1",
                "HOME": str(state_dir)})  # MinIO keeps its own config under $HOME/.minio
    if keycloak is not None:
        env.update({
            "MINIO_IDENTITY_OPENID_CONFIG_URL": keycloak.openid_config_url,
            "MINIO_IDENTITY_OPENID_SCOPES": "openid,profile,email,roles",
            "MINIO_IDENTITY_OPENID_CLIENT_ID": keycloak.client_id,
            "MINIO_IDENTITY_OPENID_CLIENT_SECRET": keycloak.client_secret,
            "MINIO_IDENTITY_OPENID_CLAIM_NAME": "policy",
        })
    cmd = [str(exe), "server", "--quiet", "--address", f"127.0.0.1:{port}", str(data)]
    proc = start_server(cmd, Path(srv.log), f"{srv.url}/minio/health/ready", deadline_s, env=env, cwd=state_dir)
    srv.pid = proc.pid
    return srv


def project_policy(bucket: str, actions: list[str] | None = None) -> dict[str, Any]:
    """The policy Kaapana grants a project admin (``admin_project``): read/write on one bucket only."""
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": actions or PROJECT_ACTIONS,
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}


def add_project(minio: MinioServer, project: str, *, create_bucket: bool = True) -> str:
    """Policy ``admin_project_<project>`` for bucket ``project-<project>`` (created unless told not to)."""
    from minio import Minio, MinioAdmin
    from minio.credentials import StaticProvider

    host = minio.url.split("://", 1)[1]
    bucket = f"project-{project}"
    admin = MinioAdmin(host, StaticProvider(minio.root_user, minio.root_password), secure=False)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(project_policy(bucket), fh)
    try:
        admin.policy_add(f"admin_project_{project}", fh.name)
    finally:
        os.unlink(fh.name)
    if create_bucket:
        client = Minio(host, access_key=minio.root_user, secret_key=minio.root_password, secure=False)
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
    return bucket


@dataclass
class SsoStack:
    """Keycloak + MinIO (OpenID) with the test projects ``admin`` (bucket) and ``nobucket`` (no bucket)."""

    keycloak: KeycloakServer
    minio: MinioServer
    timings: dict[str, float] = field(default_factory=dict)

    def stop(self) -> None:
        stop_pid(self.minio.pid)
        stop_pid(self.keycloak.pid)

    def env(self, user: str = PROJECT_USER) -> dict[str, str]:
        """The env a Kaapana pod gets for MinIO (``KAAPANA_PROJECT_USER_*``, ``KAAPANA_CLIENT_SECRET``,
        ``KEYCLOAK_URL``, ``MINIO_URL``)."""
        return {"KEYCLOAK_URL": self.keycloak.url, "MINIO_URL": self.minio.url,
                "KAAPANA_PROJECT_USER_NAME": user, "KAAPANA_PROJECT_USER_PASSWORD": self.keycloak.user_password,
                "KAAPANA_CLIENT_SECRET": self.keycloak.client_secret}

    def static_env(self) -> dict[str, str]:
        """The root user's static keys (plain Airflow / CLI style) for the same MinIO."""
        return {"S3_ENDPOINT_URL": self.minio.url, "S3_ACCESS_KEY": self.minio.root_user,
                "S3_SECRET_KEY": self.minio.root_password}


def up(state_dir: str | Path, *, progress: Any = None) -> SsoStack:
    """Keycloak, then MinIO pointing at it (MinIO reads the OpenID configuration when it starts)."""
    sd = Path(state_dir).resolve()
    say = progress or (lambda msg: log.info("%s", msg))
    t = time.perf_counter()
    kc = start_keycloak(sd)
    t_kc = time.perf_counter() - t
    say(f"Keycloak up at {kc.url} in {t_kc:.1f}s")
    try:
        t = time.perf_counter()
        mn = start_minio(sd, keycloak=kc)
        t_mn = time.perf_counter() - t
        say(f"MinIO (OpenID: Keycloak realm {kc.realm}) up at {mn.url} in {t_mn:.1f}s")
        add_project(mn, "admin")
        add_project(mn, "nobucket", create_bucket=False)
    except BaseException:
        stop_pid(kc.pid)
        raise
    return SsoStack(kc, mn, {"keycloak_start_s": t_kc, "minio_start_s": t_mn})
