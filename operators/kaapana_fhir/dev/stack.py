"""The local stack of real servers for tests, the demo and researchers without Kaapana.

* HAPI FHIR JPA (R4), our own Spring Boot app (sources in ``dev/servers/hapi``, built by Maven into
  ``~/.cache/kaapana-fhir``, see :func:`hapi_jar`) run with ``java -jar``;
* Orthanc + DICOMweb plugin (Debian packages), kept on loopback by ``dev/servers/orthanc/bind_loopback.c``
  (an ``LD_PRELOAD`` shim, since Orthanc 1.10 has no bind-address option and needs no root this way);
* an S3 server: MinIO (built by ``.ci/install-minio.sh``; ``KAAPANA_FHIR_S3_SERVER=moto`` for moto) on 127.0.0.1,
  and optionally Keycloak as its OpenID provider (service ``keycloak``, see :mod:`kaapana_fhir.dev.sso`).

Every server binds to 127.0.0.1 on a free port, logs to ``<state_dir>/<name>.log``, is polled for
readiness with a deadline and is stopped by PID. The running stack is described in
``<state_dir>/stack.json`` so ``kaapana-fhir stack down`` and other processes can find it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from kaapana_fhir.exceptions import ConfigError, KaapanaFhirError

log = logging.getLogger(__name__)

S3_ACCESS_KEY = "kaapana-test"
S3_SECRET_KEY = "kaapana-test-secret"  # noqa: S105 - test-only credentials of the local object store


class StackError(KaapanaFhirError):
    """A local server could not be built, started or reached."""


@dataclass
class Service:
    name: str
    pid: int
    port: int
    url: str
    log: str
    extra: dict[str, Any] = field(default_factory=dict)


def repo_root() -> Path:
    env = os.environ.get("KAAPANA_FHIR_REPO")
    if env:
        return Path(env).resolve()
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for p in [start, *start.parents]:
            if (p / "dags").is_dir() and (p / "pyproject.toml").is_file():
                return p
    raise ConfigError("cannot find the repository checkout (dags/ and pyproject.toml); set KAAPANA_FHIR_REPO")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def _wait_http(url: str, deadline_s: float, proc: subprocess.Popen[bytes] | None, logfile: str) -> None:
    end = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{url}: server exited with code {proc.returncode} during start-up; see {logfile}")
        try:
            r = requests.get(url, timeout=3)
            if r.status_code < 500:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise StackError(f"{url} not ready within {deadline_s:.0f}s (last: {last}); see {logfile}")


def _spawn(cmd: list[str], logfile: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
           ) -> subprocess.Popen[bytes]:
    logfile.parent.mkdir(parents=True, exist_ok=True)
    fh = open(logfile, "ab")  # noqa: SIM115 - handed to the child process
    return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                            start_new_session=True)


def start_server(cmd: list[str], logfile: Path, ready_url: str, deadline_s: float, *,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start one server process and wait until ``ready_url`` answers; on failure stop it by PID and raise."""
    proc = _spawn(cmd, logfile, env=env, cwd=cwd)
    try:
        _wait_http(ready_url, deadline_s, proc, str(logfile))
    except StackError:
        stop_pid(proc.pid)
        raise
    return proc


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM the process group, then SIGKILL after ``timeout``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap if it is our child
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


# ---------------------------------------------------------------------------- HAPI
#: Sources of the servers we build ourselves, shipped as package data so the stack works from an installed package.
SERVERS = Path(__file__).resolve().parent / "servers"
HAPI_SOURCES = SERVERS / "hapi"
ORTHANC_SHIM = SERVERS / "orthanc" / "bind_loopback.c"


def cache_dir() -> Path:
    """Where built servers are kept: ``$KAAPANA_FHIR_CACHE``, else ``~/.cache/kaapana-fhir``."""
    return Path(os.environ.get("KAAPANA_FHIR_CACHE") or Path.home() / ".cache" / "kaapana-fhir")


def _sources_digest(src: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in src.rglob("*") if q.is_file() and "target" not in q.relative_to(src).parts):
        h.update(str(p.relative_to(src)).encode())
        h.update(b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def hapi_jar() -> Path:
    """The HAPI jar: ``$KAAPANA_FHIR_HAPI_JAR`` if set, else the cached build of the shipped sources
    (``<cache>/hapi-<digest of the sources>/target/fhir-test-server.jar``; a source change means a new build)."""
    env = os.environ.get("KAAPANA_FHIR_HAPI_JAR")
    if env:
        return Path(env)
    return cache_dir() / f"hapi-{_sources_digest(HAPI_SOURCES)}" / "target" / "fhir-test-server.jar"


def build_hapi(*, force: bool = False) -> Path:
    """``mvn package`` the shipped HAPI app into the cache once (skipped when that build exists)."""
    jar = hapi_jar()
    if jar.is_file() and not force:
        return jar
    if os.environ.get("KAAPANA_FHIR_HAPI_JAR"):
        raise StackError(f"KAAPANA_FHIR_HAPI_JAR={jar} does not exist")
    if not shutil.which("mvn"):
        raise StackError("Maven (mvn) is not installed; run `make install` or apt-get install maven")
    work = jar.parent.parent
    shutil.copytree(HAPI_SOURCES, work, dirs_exist_ok=True, ignore=shutil.ignore_patterns("target"))
    log.info("building the HAPI FHIR test server with Maven in %s (first time: a few minutes)", work)
    res = subprocess.run(["mvn", "-B", "-q", "package", "-DskipTests"], cwd=work, capture_output=True, text=True)
    if res.returncode != 0:
        raise StackError(f"Maven build of {work} failed:\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}")
    return jar


def start_hapi(state_dir: Path, *, db_file: Path | None = None, port: int | None = None,
               deadline_s: float = 240.0, partitioning: bool = True, bulk_export: bool = True) -> Service:
    """HAPI on 127.0.0.1. ``partitioning``: one partition per project at ``<base>/<project>`` (the plain base is
    the default partition; database partition mode, so a file database made without it needs ``False``);
    ``bulk_export``: FHIR Bulk Data ``$export``."""
    jar = build_hapi()
    port = port or free_port()
    logfile = state_dir / "hapi.log"
    cmd = ["java", "-Xmx2g", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-jar", str(jar),
           f"--server.port={port}", "--server.address=127.0.0.1",
           f"--kaapanafhir.partitioning.enabled={str(partitioning).lower()}",
           f"--kaapanafhir.bulk-export.enabled={str(bulk_export).lower()}"]
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
        cmd.append(f"--spring.datasource.url=jdbc:h2:file:{db_file};DB_CLOSE_ON_EXIT=FALSE;WRITE_DELAY=0")
    url = f"http://127.0.0.1:{port}/fhir"
    try:
        proc = start_server(cmd, logfile, f"{url}/metadata", deadline_s)
    except StackError as exc:
        if db_file is not None and partitioning and "HAPI-2564" in logfile.read_text(errors="replace"):
            raise StackError(f"the HAPI database {db_file} was made without partitions (HAPI-2564: schema without "
                             "partition ids); delete its folder to start afresh, or start HAPI with "
                             "partitioning=False") from exc
        raise
    return Service("hapi", proc.pid, port, url, str(logfile))


# ---------------------------------------------------------------------------- Orthanc
def _orthanc_shim(state_dir: Path) -> Path:
    src = ORTHANC_SHIM
    out = state_dir / "bind_loopback.so"
    if not out.is_file() or out.stat().st_mtime < src.stat().st_mtime:
        cc = shutil.which("cc") or shutil.which("gcc")
        if not cc:
            raise StackError("a C compiler (cc) is needed to build the Orthanc loopback shim")
        res = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(src), "-ldl"],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise StackError(f"building {src} failed: {res.stderr[-2000:]}")
    return out


def _dicomweb_plugin() -> str:
    for cand in ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so"):
        if os.path.exists(cand):
            return cand
    raise StackError("the Orthanc DICOMweb plugin is missing; apt-get install orthanc orthanc-dicomweb")


def start_orthanc(state_dir: Path, *, storage: Path | None = None, deadline_s: float = 60.0) -> Service:
    exe = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)
    if not exe:
        raise StackError("Orthanc is not installed; apt-get install orthanc orthanc-dicomweb (or `make install`)")
    http_port, dicom_port = free_port(), free_port()
    storage = storage or (state_dir / "orthanc-db")
    storage.mkdir(parents=True, exist_ok=True)
    cfg = {
        "Name": "KAAPANA-FHIR-TEST", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpTimeout": 60,
        "Plugins": [_dicomweb_plugin()], "StableAge": 2,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
                     "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }
    cfg_path = state_dir / "orthanc.json"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    env = dict(os.environ)
    env["LD_PRELOAD"] = str(_orthanc_shim(state_dir))
    logfile = state_dir / "orthanc.log"
    base = f"http://127.0.0.1:{http_port}"
    proc = start_server([exe, str(cfg_path)], logfile, f"{base}/system", deadline_s, env=env)
    return Service("orthanc", proc.pid, http_port, f"{base}/dicom-web", str(logfile),
                   {"rest": base, "dicom_port": dicom_port, "aet": "ORTHANC"})


# ---------------------------------------------------------------------------- S3
def start_s3(state_dir: Path, *, deadline_s: float = 60.0, keycloak: Service | None = None) -> Service:
    """MinIO (root keys generated per run; with ``keycloak``, that realm is its OpenID provider as in
    Kaapana, with projects ``admin`` and ``nobucket``); ``KAAPANA_FHIR_S3_SERVER=moto`` picks moto instead."""
    if os.environ.get("KAAPANA_FHIR_S3_SERVER", "minio") != "moto":
        from kaapana_fhir.dev import sso

        kc = sso.keycloak_from_service(keycloak) if keycloak else None
        m = sso.start_minio(state_dir, keycloak=kc, deadline_s=deadline_s)
        if kc is not None:
            sso.add_project(m, "admin")
            sso.add_project(m, "nobucket", create_bucket=False)
        return Service("s3", m.pid, m.port, m.url, m.log, {"access_key": m.root_user, "secret_key": m.root_password,
                                                           "server": "minio", "openid": m.openid})
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not os.path.exists(exe):
        raise StackError("moto_server is not installed; pip install 'moto[server]' (or `make install`)")
    port = free_port()
    logfile = state_dir / "s3.log"
    url = f"http://127.0.0.1:{port}"
    proc = start_server([exe, "-H", "127.0.0.1", "-p", str(port)], logfile, f"{url}/moto-api/", deadline_s)
    return Service("s3", proc.pid, port, url, str(logfile),
                   {"access_key": S3_ACCESS_KEY, "secret_key": S3_SECRET_KEY, "server": "moto"})


# ---------------------------------------------------------------------------- whole stack
@dataclass
class Stack:
    state_dir: str
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def fhir_url(self) -> str:
        return self.services["hapi"].url

    @property
    def dicomweb_url(self) -> str:
        return self.services["orthanc"].url

    @property
    def s3_url(self) -> str:
        return self.services["s3"].url

    def save(self) -> None:
        path = Path(self.state_dir) / "stack.json"
        path.touch(mode=0o600)  # holds the per-run test credentials of MinIO/Keycloak
        path.write_text(json.dumps({"state_dir": self.state_dir,
                                    "services": {k: asdict(v) for k, v in self.services.items()}}, indent=2))

    @classmethod
    def load(cls, state_dir: str | Path) -> Stack | None:
        path = Path(state_dir) / "stack.json"
        if not path.is_file():
            return None
        from kaapana_fhir.core.limits import load_json_object

        data = load_json_object(path, what="stack state", hint="stop the stack by its PIDs and start it again")
        try:
            return cls(data["state_dir"], {k: Service(**v) for k, v in data["services"].items()})
        except (KeyError, TypeError, AttributeError) as exc:
            raise StackError(f"{path}: not a stack state written by `kaapana-fhir stack up` ({exc!r}); stop the "
                             "servers by the PIDs in its folder and start the stack again") from None

    def env(self) -> dict[str, str]:
        """Environment variables that point our CLI, tests and Airflow connections at this stack."""
        out: dict[str, str] = {}
        if "hapi" in self.services:
            out["FHIR_BASE_URL"] = self.fhir_url
        if "orthanc" in self.services:
            out["DICOMWEB_URL"] = self.dicomweb_url
            out["ORTHANC_URL"] = self.services["orthanc"].extra["rest"]
        if "s3" in self.services:
            out["S3_ENDPOINT_URL"] = self.s3_url
            out["S3_ACCESS_KEY"] = self.services["s3"].extra.get("access_key", S3_ACCESS_KEY)
            out["S3_SECRET_KEY"] = self.services["s3"].extra.get("secret_key", S3_SECRET_KEY)
        if "keycloak" in self.services:
            from kaapana_fhir.dev import sso

            out.update(sso.keycloak_env(self.services["keycloak"]))
        return out

    def stop(self) -> None:
        for svc in self.services.values():
            stop_pid(svc.pid)
        path = Path(self.state_dir) / "stack.json"
        if path.exists():
            path.unlink()


def up(state_dir: str | Path, *, services: tuple[str, ...] = ("hapi", "orthanc", "s3"), persistent: bool = False,
       progress: Any = None) -> Stack:
    """Start the stack (or return the one already running from ``state_dir``)."""
    sd = Path(state_dir).resolve()
    sd.mkdir(parents=True, exist_ok=True)
    existing = Stack.load(sd)
    if existing and all(port_open(s.port) for s in existing.services.values()) and \
            set(services) <= set(existing.services):
        return existing
    if existing:
        existing.stop()
    stack = Stack(str(sd))
    say = progress or (lambda msg: log.info("%s", msg))
    try:
        if "keycloak" in services:
            from kaapana_fhir.dev import sso

            t = time.perf_counter()
            stack.services["keycloak"] = sso.keycloak_service(sso.start_keycloak(sd))
            say(f"Keycloak up at {stack.services['keycloak'].url} in {time.perf_counter() - t:.1f}s")
        if "s3" in services:
            t = time.perf_counter()
            stack.services["s3"] = start_s3(sd, keycloak=stack.services.get("keycloak"))
            say(f"S3 ({stack.services['s3'].extra['server']}) up at {stack.s3_url} in {time.perf_counter() - t:.1f}s")
        if "orthanc" in services:
            t = time.perf_counter()
            stack.services["orthanc"] = start_orthanc(sd, storage=sd / "orthanc-db")
            say(f"Orthanc up at {stack.services['orthanc'].extra['rest']} in {time.perf_counter() - t:.1f}s")
        if "hapi" in services:
            t = time.perf_counter()
            stack.services["hapi"] = start_hapi(sd, db_file=(sd / "hapi-db" / "fhir") if persistent else None)
            say(f"HAPI FHIR up at {stack.fhir_url} in {time.perf_counter() - t:.1f}s")
    except BaseException:
        stack.stop()
        raise
    stack.save()
    return stack


def down(state_dir: str | Path) -> bool:
    stack = Stack.load(Path(state_dir).resolve())
    if not stack:
        return False
    stack.stop()
    return True
